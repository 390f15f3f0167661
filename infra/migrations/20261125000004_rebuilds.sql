-- Rebuilds of projections into shadow tables, resumable after an interruption.
CREATE TABLE projection_rebuilds
(
    name                text        PRIMARY KEY REFERENCES projection_state (name),
    -- The version the shadow tables are built with.
    target_version      integer     NOT NULL,
    -- The schema holding the shadow tables (same names as the live ones).
    schema_name         text        NOT NULL,
    checkpoint_tx       xid8        NOT NULL DEFAULT '0',
    checkpoint_position bigint      NOT NULL DEFAULT 0,
    events_applied      bigint      NOT NULL DEFAULT 0,
    started_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- A parked event a rebuild went past (with a handler that can now apply it).
ALTER TABLE projection_dead_letters DROP CONSTRAINT projection_dead_letters_status_check;
ALTER TABLE projection_dead_letters ADD CONSTRAINT projection_dead_letters_status_check
    CHECK (status IN ('parked', 'skipped', 'retried', 'superseded'));
