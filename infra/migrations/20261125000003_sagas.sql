-- The order fulfilment saga: one row per order, the saga's state and its durable timer.

CREATE TABLE fulfillment_sagas
(
    order_id         uuid        PRIMARY KEY,
    -- Written only by the saga runner that holds the claim.
    state            jsonb       NOT NULL,
    stage            text        NOT NULL,
    next_step        text,
    -- The durable timer: when a runner should next look at this saga (a retry, the payment
    -- deadline, or now after a signal). NULL while it waits for an event.
    due_at           timestamptz,
    -- Signals from the trigger (events about the order), written only by the trigger.
    cancel_requested boolean     NOT NULL DEFAULT false,
    ship_requested   boolean     NOT NULL DEFAULT false,
    -- Bumped with every signal, so a runner that saved while a signal arrived re-checks.
    signals          bigint      NOT NULL DEFAULT 0,
    -- Which runner works on it, until when (a dead runner's claim expires).
    claimed_by       text,
    claimed_until    timestamptz,
    -- Consecutive failed attempts at the current step, and the last failure.
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text,
    last_error_at    timestamptz,
    stage_since      timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Runners take due sagas in due order with FOR UPDATE SKIP LOCKED.
CREATE INDEX fulfillment_sagas_due ON fulfillment_sagas (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX fulfillment_sagas_stage ON fulfillment_sagas (stage, stage_since);
