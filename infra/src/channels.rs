//! PostgreSQL NOTIFY channels shared by writers and readers of the log.

/// Notified (empty payload) after events are appended, by the appending process once they
/// have committed (see `event_store::notify`); coalesced, so one notification may stand for
/// many appends.
pub const EVENTS: &str = "ordo_events";

/// Notified with a projection's name when its checkpoint or state changes, at commit.
pub const CHECKPOINTS: &str = "ordo_checkpoints";

/// Notified when a saga is started or signalled, so runners pick it up at once.
pub const SAGAS: &str = "ordo_sagas";
