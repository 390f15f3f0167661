//! PostgreSQL NOTIFY channels shared by writers and readers of the log.

/// Notified (empty payload) by a trigger after every insert into `events`, at commit.
pub const EVENTS: &str = "ordo_events";

/// Notified with a projection's name when its checkpoint or state changes, at commit.
pub const CHECKPOINTS: &str = "ordo_checkpoints";

/// Notified when a saga is started or signalled, so runners pick it up at once.
pub const SAGAS: &str = "ordo_sagas";
