-- The transaction that appended the outcome's event, when the first request appended: a
-- retry replays the same consistency token (`<position>.<transaction id>`). NULL for a
-- no-op, and for keys recorded before this column existed (their replays answer with the
-- bare position, which the query API looks up).
ALTER TABLE idempotency_keys ADD COLUMN transaction_id xid8;
