-- The event store: postgres-es's `events` and `snapshots` tables, extended.
--
-- postgres-es's own INSERT names its seven columns, so every column added here has a
-- default and postgres-es keeps working against this schema (a test checks it).
-- Payloads are jsonb rather than postgres-es's json: jsonb refuses the NUL character that
-- json accepts on write and then chokes on in `->>` and casts (a poison event).

CREATE TABLE events
(
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL CHECK (sequence >= 1),
    event_type      text        NOT NULL,
    event_version   text        NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    -- A unique id per event, for consumers that deduplicate (Kafka inboxes, sagas).
    event_id        uuid        NOT NULL DEFAULT gen_random_uuid(),
    -- The global position, taken at INSERT. Positions are unique and increasing in insert
    -- order, but become visible in commit order: never follow the log by position alone.
    position        bigint      NOT NULL GENERATED ALWAYS AS IDENTITY,
    -- The inserting transaction. Readers order by (transaction_id, position) and read only
    -- below the oldest running transaction, so an event committed late is never skipped.
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    correlation_id  uuid,
    causation_id    uuid,
    idempotency_key text,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- The only concurrency control: two writers of the same aggregate version clash here.
    PRIMARY KEY (aggregate_type, aggregate_id, sequence),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_position_key UNIQUE (position)
);

-- The global log's order: the reader walks this index from its checkpoint.
CREATE INDEX events_log_order ON events (transaction_id, position);

CREATE TABLE snapshots
(
    aggregate_type   text    NOT NULL,
    aggregate_id     text    NOT NULL,
    last_sequence    bigint  NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint  NOT NULL CHECK (current_snapshot >= 0),
    payload          jsonb   NOT NULL,
    -- The format of `payload`; a snapshot of another format is ignored and the aggregate is
    -- rebuilt from its events, so changing an aggregate's state type needs no migration.
    state_version    integer NOT NULL DEFAULT 0,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- One snapshot per aggregate, replaced in place (postgres-es keeps one row too).
CREATE UNIQUE INDEX snapshots_one_per_aggregate ON snapshots (aggregate_type, aggregate_id);

-- Idempotency keys of commands, written in the same transaction as the command's events.
-- A second request with the same key blocks on this primary key until the first commits,
-- then replays its outcome; if the first rolls back, the second runs.
CREATE TABLE idempotency_keys
(
    idempotency_key text        PRIMARY KEY,
    -- SHA-256 of the request (method, route, path parameters, canonical JSON body).
    request_hash    bytea       NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    -- The outcome replayed to a retry; NULL only inside the first request's transaction.
    version         bigint,
    position        bigint,
    created_at      timestamptz NOT NULL DEFAULT now()
);
