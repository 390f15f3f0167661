-- Projections: their checkpoints and leases, parked events, wake-ups, and the read models.

-- Wake projectors, sagas and relays as soon as events commit (NOTIFY is delivered at
-- COMMIT, and identical notifications in one transaction are merged). Readers still poll as
-- a fallback, so a lost notification only costs latency.
CREATE FUNCTION ordo_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ordo_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION ordo_notify_events();

-- One row per projection: where it is in the global log, who runs it, and how it is doing.
CREATE TABLE projection_state
(
    name                text        PRIMARY KEY,
    version             integer     NOT NULL,
    -- The last event applied, in log order. Written in the same transaction as the rows.
    checkpoint_tx       xid8        NOT NULL DEFAULT '0',
    checkpoint_position bigint      NOT NULL DEFAULT 0,
    state               text        NOT NULL DEFAULT 'running'
                                    CHECK (state IN ('running', 'halted', 'paused', 'rebuilding')),
    -- Bumped by each worker that takes the projection over; a batch commits only while its
    -- worker's token is current, so a worker that lost its lease cannot apply anything.
    fencing_token       bigint      NOT NULL DEFAULT 0,
    owner               text,
    -- When the checkpoint last moved. Liveness is in projection_heartbeats.
    progress_at         timestamptz,
    events_applied      bigint      NOT NULL DEFAULT 0,
    last_error          text,
    last_error_at       timestamptz
);

-- Liveness of each projection's live worker, apart from progress (the checkpoint moving), so
-- a stalled worker is told apart from an idle one. A table of its own, so a heartbeat never
-- waits behind a batch holding the projection_state row.
CREATE TABLE projection_heartbeats
(
    name         text        PRIMARY KEY REFERENCES projection_state (name),
    owner        text        NOT NULL,
    heartbeat_at timestamptz NOT NULL
);

-- Events a projection could not apply (poison events), with the error.
CREATE TABLE projection_dead_letters
(
    id              bigserial   PRIMARY KEY,
    projection      text        NOT NULL REFERENCES projection_state (name),
    event_id        uuid        NOT NULL,
    position        bigint      NOT NULL,
    transaction_id  xid8        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL,
    event_type      text        NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL,
    -- parked: the projection halted on it; skipped: the projection went past it.
    status          text        NOT NULL CHECK (status IN ('parked', 'skipped', 'retried')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz
);
CREATE INDEX projection_dead_letters_by_projection ON projection_dead_letters (projection, status);

-- Read models. Each table carries its projection's version in its name; the query API reads
-- the unversioned views, so a rebuild can fill _v2 beside _v1 and swap the views atomically.
-- Timestamps in rows come from the events, never from now(), so a rebuild reproduces them.

CREATE TABLE inventory_v1
(
    sku              text        PRIMARY KEY,
    name             text        NOT NULL,
    unit_price_minor bigint      NOT NULL,
    currency         text        NOT NULL,
    on_hand          bigint      NOT NULL,
    reserved         bigint      NOT NULL,
    available        bigint      GENERATED ALWAYS AS (on_hand - reserved) STORED,
    version          bigint      NOT NULL,
    updated_at       timestamptz NOT NULL,
    last_position    bigint      NOT NULL
);
CREATE VIEW inventory AS SELECT * FROM inventory_v1;

CREATE TABLE order_details_v1
(
    order_id         uuid        PRIMARY KEY,
    customer_id      uuid        NOT NULL,
    status           text        NOT NULL,
    currency         text        NOT NULL,
    -- [{sku, quantity, unit_price_minor, line_total_minor}]; prices null until reserved.
    lines            jsonb       NOT NULL,
    total_minor      bigint,
    payment_status   text        NOT NULL DEFAULT 'none',
    captured_minor   bigint      NOT NULL DEFAULT 0,
    refunded_minor   bigint      NOT NULL DEFAULT 0,
    cancel_reason    text,
    -- The order aggregate's version, and the payment's: each guards its own updates.
    version          bigint      NOT NULL,
    payment_version  bigint      NOT NULL DEFAULT 0,
    placed_at        timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    last_position    bigint      NOT NULL
);
CREATE VIEW order_details AS SELECT * FROM order_details_v1;

-- What happened to an order, from the order's, its items' and its payment's events.
CREATE TABLE order_timeline_v1
(
    order_id    uuid        NOT NULL,
    position    bigint      NOT NULL,
    event_id    uuid        NOT NULL,
    at          timestamptz NOT NULL,
    source      text        NOT NULL,
    event_type  text        NOT NULL,
    description text        NOT NULL,
    PRIMARY KEY (order_id, position)
);
CREATE VIEW order_timeline AS SELECT * FROM order_timeline_v1;

CREATE TABLE customer_orders_v1
(
    customer_id     uuid        NOT NULL,
    order_id        uuid        NOT NULL UNIQUE,
    placed_at       timestamptz NOT NULL,
    -- Newest first is by placement position: unique, so it is a stable keyset cursor.
    placed_position bigint      NOT NULL,
    status          text        NOT NULL,
    currency        text        NOT NULL,
    total_minor     bigint,
    line_count      integer     NOT NULL,
    version         bigint      NOT NULL,
    last_position   bigint      NOT NULL,
    PRIMARY KEY (customer_id, order_id)
);
CREATE INDEX customer_orders_v1_newest_first ON customer_orders_v1 (customer_id, placed_position DESC);
CREATE VIEW customer_orders AS SELECT * FROM customer_orders_v1;

CREATE TABLE sales_daily_v1
(
    day                         date   NOT NULL,
    currency                    text   NOT NULL,
    orders_confirmed            bigint NOT NULL DEFAULT 0,
    revenue_minor               bigint NOT NULL DEFAULT 0,
    cancelled_customer_request  bigint NOT NULL DEFAULT 0,
    cancelled_out_of_stock      bigint NOT NULL DEFAULT 0,
    cancelled_payment_declined  bigint NOT NULL DEFAULT 0,
    cancelled_payment_timeout   bigint NOT NULL DEFAULT 0,
    refunds                     bigint NOT NULL DEFAULT 0,
    refunded_minor              bigint NOT NULL DEFAULT 0,
    last_position               bigint NOT NULL,
    PRIMARY KEY (day, currency)
);
CREATE VIEW sales_daily AS SELECT * FROM sales_daily_v1;

-- The sales projection's private memory: each order's currency and total, and whether it
-- was already counted, so counting stays idempotent per order and per refund.
CREATE TABLE sales_daily_orders_v1
(
    order_id    uuid    PRIMARY KEY,
    currency    text    NOT NULL,
    total_minor bigint,
    confirmed   boolean NOT NULL DEFAULT false,
    cancelled   boolean NOT NULL DEFAULT false
);
CREATE TABLE sales_daily_refunds_v1
(
    refund_id uuid PRIMARY KEY
);
