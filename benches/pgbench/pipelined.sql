\set n random(1, 1000000000000)
\set p random(1, 100)

SELECT id, sku, name, price_amount, currency, on_hand, reserved FROM products WHERE id = 'p' || (:p)::text;
\startpipeline
BEGIN;
INSERT INTO orders (id, status, customer_email, total_amount, currency, payment_token, saga_step, saga_attempts, saga_deadline, saga_owner, saga_lease_until, created_at, updated_at, lines) VALUES ('o' || (:n)::text, 'pending', 'a@example.com', 1000, 'EUR', 'tok_visa', 'reserve', 0, now(), 'run', now(), now(), now(), '[{"product_id":"p1","sku":"SKU-1","name":"Name","quantity":1,"unit_price":1000,"line_total":1000}]');
COMMIT;
\endpipeline
\startpipeline
BEGIN;
UPDATE products SET reserved = reserved + 1, updated_at = now() WHERE id = 'p' || (:p)::text AND on_hand - reserved >= 1 RETURNING id, sku, name, on_hand, reserved;
INSERT INTO reservations (order_id, status, created_at, updated_at, lines) VALUES ('o' || (:n)::text, 'reserved', now(), now(), '[{"product_id":"p1","quantity":1}]');
COMMIT;
\endpipeline
\startpipeline
BEGIN;
SELECT pg_advisory_xact_lock(hashtextextended('billing.charge.o' || (:n)::text, 0));
INSERT INTO payments (id, order_id, amount, currency, customer_email, status, refunded_amount, attempt_started_at, created_at, updated_at) SELECT 'pay' || (:n)::text, 'o' || (:n)::text, 1000, 'EUR', 'a@example.com', 'pending', 0, now(), now(), now() WHERE NOT EXISTS (SELECT 1 FROM voided_charges WHERE order_id = 'o' || (:n)::text);
COMMIT;
\endpipeline
\startpipeline
BEGIN;
UPDATE payments SET status = 'captured', provider_ref = 'sim_ref', invoice_id = 'inv' || (:n)::text, updated_at = now() WHERE order_id = 'o' || (:n)::text AND status = 'pending' RETURNING id, amount, currency;
UPDATE invoice_counters SET last_number = last_number + 1 WHERE year = 2026 RETURNING last_number;
INSERT INTO invoices (id, number, payment_id, order_id, amount, currency, issued_at) VALUES ('inv' || (:n)::text, 'INV-2026-' || (:n)::text, 'pay' || (:n)::text, 'o' || (:n)::text, 1000, 'EUR', now());
INSERT INTO outbox (event_id, event_type, event_key, occurred_at, envelope) VALUES ('c' || (:n)::text, 'billing.payment_captured', 'o' || (:n)::text, now(), repeat('x', 600));
COMMIT;
\endpipeline
\startpipeline
BEGIN;
UPDATE reservations SET status = 'committed', updated_at = now() WHERE order_id = 'o' || (:n)::text AND status = 'reserved' RETURNING lines;
UPDATE products SET reserved = reserved - 1, on_hand = on_hand - 1, updated_at = now() WHERE id = 'p' || (:p)::text;
COMMIT;
\endpipeline
\startpipeline
BEGIN;
UPDATE orders SET status = 'confirmed', saga_step = NULL, saga_owner = NULL, saga_lease_until = NULL, updated_at = now() WHERE id = 'o' || (:n)::text AND status = 'pending' RETURNING id, status;
INSERT INTO outbox (event_id, event_type, event_key, occurred_at, envelope) VALUES ('f' || (:n)::text, 'orders.order_confirmed', 'o' || (:n)::text, now(), repeat('x', 900));
COMMIT;
\endpipeline
SELECT id, url, events, secret, created_at FROM webhooks ORDER BY id;
SELECT id, url, events, secret, created_at FROM webhooks ORDER BY id;
\startpipeline
BEGIN;
INSERT INTO inbox (consumer, event_id, handled_at) VALUES ('notifications', 'f' || (:n)::text, now()) ON CONFLICT DO NOTHING;
INSERT INTO deliveries (id, dedup_key, event_id, event_type, order_id, channel, recipient, template, subject, text_body, html_body, status, attempts, next_attempt_at, claimed_until, created_at, updated_at) VALUES ('d' || (:n)::text, 'email-c-' || (:n)::text, 'f' || (:n)::text, 'orders.order_confirmed', 'o' || (:n)::text, 'file', 'a@example.com', 'order_confirmed', 'Your order', repeat('t', 400), repeat('h', 900), 'retrying', 0, now(), now(), now(), now()) ON CONFLICT (dedup_key) DO NOTHING;
COMMIT;
\endpipeline
\startpipeline
BEGIN;
UPDATE deliveries SET status = 'sent', attempts = 1, last_error = NULL, next_attempt_at = now(), claimed_until = NULL, updated_at = now() WHERE id = 'd' || (:n)::text AND status = 'retrying';
COMMIT;
\endpipeline
