//! PostgreSQL NOTIFY channels shared by writers and readers of the log.

/// Notified (empty payload) after events are appended, by the appending process once they
/// have committed (see `event_store::notify`); coalesced, so one notification may stand for
/// many appends.
pub const EVENTS: &str = "ordo_events";

/// Notified with a projection's name when its state changes (at commit), and by its worker
/// after each batch commits, with where it now is (`projection::CheckpointNotice`). Saga
/// runners listen for the fulfilment trigger's notices: a batch of the trigger is what
/// starts and signals sagas.
pub const CHECKPOINTS: &str = "ordo_checkpoints";
