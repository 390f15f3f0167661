-- Appends no longer NOTIFY inside their transaction: a NOTIFY makes the commit take
-- PostgreSQL's global notification lock through the WAL flush, which serialises every
-- appending commit. The appending process notifies after its commit instead
-- (infra/src/event_store/notify.rs); followers still poll as a fallback.
DROP TRIGGER events_notify ON events;
DROP FUNCTION ordo_notify_events();
