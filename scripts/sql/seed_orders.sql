-- Appends a realistic history quickly, for benchmarks: 100 inventory items, then per order
-- the six events a confirmed order leaves (placed, stock reserved on its item, reservation
-- recorded, payment authorized and captured, confirmed). Set with psql -v orders=N.
-- Payloads have the shapes the domain's serde produces, so projections decode them.

\set items 100

INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload)
SELECT 'inventory_item', 'SEED-' || i, 1, 'InventoryItemRegistered', '1.0',
       jsonb_build_object('Registered', jsonb_build_object(
           'sku', 'SEED-' || i, 'name', 'Seed item ' || i,
           'unit_price', jsonb_build_object('amount_minor', 1000, 'currency', 'EUR'),
           'initial_stock', 1000000000, 'at', '2026-01-01T00:00:00Z'))
  FROM generate_series(0, :items - 1) AS i;

WITH o AS (
    SELECT n, md5('seed-order-' || n)::uuid AS id, 'SEED-' || (n % :items) AS sku,
           2 + n / :items AS item_sequence,
           to_char(timestamptz '2026-01-01' + n * interval '1 second', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS at
      FROM generate_series(0, :orders - 1) AS n
), price AS (SELECT jsonb_build_object('amount_minor', 1000, 'currency', 'EUR') AS p)
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload)
SELECT e.* FROM o, price, LATERAL (VALUES
    ('order', o.id::text, 1::bigint, 'OrderPlaced', '1.0', jsonb_build_object('Placed', jsonb_build_object(
        'customer_id', md5('seed-customer-' || (o.n % 1000))::uuid, 'card_token', 'tok_visa',
        'currency', 'EUR', 'at', o.at,
        'lines', jsonb_build_array(jsonb_build_object('sku', o.sku, 'quantity', 1))))),
    ('inventory_item', o.sku, o.item_sequence, 'StockReserved', '1.0', jsonb_build_object('Reserved',
        jsonb_build_object('order_id', o.id, 'quantity', 1, 'unit_price', price.p, 'at', o.at))),
    ('order', o.id::text, 2, 'OrderStockReserved', '1.0', jsonb_build_object('StockReserved', jsonb_build_object(
        'lines', jsonb_build_array(jsonb_build_object('sku', o.sku, 'quantity', 1,
                                                      'unit_price', price.p, 'line_total', price.p)),
        'total', price.p, 'at', o.at))),
    ('payment', o.id::text, 1, 'PaymentAuthorized', '1.0', jsonb_build_object('Authorized', jsonb_build_object(
        'order_id', o.id, 'amount', price.p, 'authorization_id', 'auth_' || o.n, 'at', o.at))),
    ('payment', o.id::text, 2, 'PaymentCaptured', '1.0', jsonb_build_object('Captured',
        jsonb_build_object('amount', price.p, 'at', o.at))),
    ('order', o.id::text, 3, 'OrderConfirmed', '1.0', jsonb_build_object('Confirmed', jsonb_build_object('at', o.at)))
) AS e(aggregate_type, aggregate_id, sequence, event_type, event_version, payload)
ORDER BY o.n;
