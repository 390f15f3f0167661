-- Kafka: the relay's checkpoint, consumers' inboxes, the example notifications service, and
-- an order_details that can be built from events in any order across aggregates.

-- The relay's place in the global log. Moved only after the broker confirmed delivery, by
-- the relay holding the current fencing token.
CREATE TABLE relay_checkpoints
(
    name                text        PRIMARY KEY,
    checkpoint_tx       xid8        NOT NULL DEFAULT '0',
    checkpoint_position bigint      NOT NULL DEFAULT 0,
    fencing_token       bigint      NOT NULL DEFAULT 0,
    owner               text,
    events_published    bigint      NOT NULL DEFAULT 0,
    updated_at          timestamptz
);

-- Events a consumer has applied, recorded in the same transaction as the effect: a
-- redelivered event finds its id here and is skipped.
CREATE TABLE consumer_inbox
(
    consumer    text        NOT NULL,
    event_id    uuid        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- The example downstream service: one message per order outcome.
CREATE TABLE notifications
(
    order_id   uuid        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('order_confirmed', 'order_cancelled')),
    message    text        NOT NULL,
    event_id   uuid        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, kind)
);

-- order_details: the payment's part gets a table of its own. Kafka keeps order per
-- aggregate, not across them, so a payment event can arrive before its order's
-- OrderPlaced; kept apart, the two rows no longer depend on each other's arrival.
CREATE TABLE order_payments_v1
(
    order_id       uuid        PRIMARY KEY,
    payment_status text        NOT NULL,
    captured_minor bigint      NOT NULL DEFAULT 0,
    refunded_minor bigint      NOT NULL DEFAULT 0,
    version        bigint      NOT NULL,
    updated_at     timestamptz NOT NULL,
    last_position  bigint      NOT NULL
);

INSERT INTO order_payments_v1
SELECT order_id, payment_status, captured_minor, refunded_minor, payment_version, updated_at,
       last_position
  FROM order_details_v1
 WHERE payment_version > 0;

DROP VIEW order_details;
ALTER TABLE order_details_v1
    DROP COLUMN payment_status,
    DROP COLUMN captured_minor,
    DROP COLUMN refunded_minor,
    DROP COLUMN payment_version;

-- The same definition lives in projections/src/order_details.rs (rebuilds re-create it).
CREATE VIEW order_details AS
SELECT o.order_id, o.customer_id, o.status, o.currency, o.lines, o.total_minor,
       COALESCE(p.payment_status, 'none') AS payment_status,
       COALESCE(p.captured_minor, 0) AS captured_minor,
       COALESCE(p.refunded_minor, 0) AS refunded_minor,
       o.cancel_reason, o.version, o.placed_at,
       GREATEST(o.updated_at, p.updated_at) AS updated_at,
       GREATEST(o.last_position, p.last_position,
                (SELECT max(t.position) FROM order_timeline_v1 t WHERE t.order_id = o.order_id))
           AS last_position
  FROM order_details_v1 o
  LEFT JOIN order_payments_v1 p ON p.order_id = o.order_id;
