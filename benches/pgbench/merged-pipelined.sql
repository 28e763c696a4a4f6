\set n0 random(1, 1000000000000)
\set p0 random(1, 100)
\set n1 random(1, 1000000000000)
\set p1 random(1, 100)
\set n2 random(1, 1000000000000)
\set p2 random(1, 100)
\set n3 random(1, 1000000000000)
\set p3 random(1, 100)
SELECT id, sku, name, price_amount, currency, on_hand, reserved FROM products WHERE id = ANY (ARRAY['p' || (:p0)::text, 'p' || (:p1)::text, 'p' || (:p2)::text, 'p' || (:p3)::text]);
\startpipeline
BEGIN;
INSERT INTO orders (id, status, customer_email, total_amount, currency, payment_token, saga_step, saga_attempts, saga_deadline, saga_owner, saga_lease_until, created_at, updated_at, lines) VALUES ('o' || (:n0)::text, 'pending', 'a@example.com', 1000, 'EUR', 'tok_visa', 'reserve', 0, now(), 'run', now(), now(), now(), '[{"product_id":"p1","sku":"SKU-1","name":"Name","quantity":1,"unit_price":1000,"line_total":1000}]'), ('o' || (:n1)::text, 'pending', 'a@example.com', 1000, 'EUR', 'tok_visa', 'reserve', 0, now(), 'run', now(), now(), now(), '[{"product_id":"p1","sku":"SKU-1","name":"Name","quantity":1,"unit_price":1000,"line_total":1000}]'), ('o' || (:n2)::text, 'pending', 'a@example.com', 1000, 'EUR', 'tok_visa', 'reserve', 0, now(), 'run', now(), now(), now(), '[{"product_id":"p1","sku":"SKU-1","name":"Name","quantity":1,"unit_price":1000,"line_total":1000}]'), ('o' || (:n3)::text, 'pending', 'a@example.com', 1000, 'EUR', 'tok_visa', 'reserve', 0, now(), 'run', now(), now(), now(), '[{"product_id":"p1","sku":"SKU-1","name":"Name","quantity":1,"unit_price":1000,"line_total":1000}]');
COMMIT;
\endpipeline
\startpipeline
BEGIN;
UPDATE products SET reserved = reserved + v.q, updated_at = now() FROM (VALUES ('p' || (:p0)::text, 1), ('p' || (:p1)::text, 1), ('p' || (:p2)::text, 1), ('p' || (:p3)::text, 1)) AS v(id, q) WHERE products.id = v.id AND on_hand - reserved >= v.q RETURNING products.id, on_hand, reserved;
INSERT INTO reservations (order_id, status, created_at, updated_at, lines) VALUES ('o' || (:n0)::text, 'reserved', now(), now(), '[{"product_id":"p1","quantity":1}]'), ('o' || (:n1)::text, 'reserved', now(), now(), '[{"product_id":"p1","quantity":1}]'), ('o' || (:n2)::text, 'reserved', now(), now(), '[{"product_id":"p1","quantity":1}]'), ('o' || (:n3)::text, 'reserved', now(), now(), '[{"product_id":"p1","quantity":1}]');
COMMIT;
\endpipeline
\startpipeline
BEGIN;
SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(ARRAY['billing.charge.o' || (:n0)::text, 'billing.charge.o' || (:n1)::text, 'billing.charge.o' || (:n2)::text, 'billing.charge.o' || (:n3)::text]) AS k ORDER BY k;
INSERT INTO payments (id, order_id, amount, currency, customer_email, status, refunded_amount, attempt_started_at, created_at, updated_at) SELECT 'pay' || v.o, 'o' || v.o, 1000, 'EUR', 'a@example.com', 'pending', 0, now(), now(), now() FROM (VALUES ((:n0)::text), ((:n1)::text), ((:n2)::text), ((:n3)::text)) AS v(o) WHERE NOT EXISTS (SELECT 1 FROM voided_charges WHERE order_id = 'o' || v.o);
COMMIT;
\endpipeline
\startpipeline
BEGIN;
UPDATE payments SET status = 'captured', provider_ref = 'sim_ref', invoice_id = 'inv' || substr(order_id, 2), updated_at = now() WHERE order_id = ANY (ARRAY['o' || (:n0)::text, 'o' || (:n1)::text, 'o' || (:n2)::text, 'o' || (:n3)::text]) AND status = 'pending' RETURNING id, amount, currency;
UPDATE invoice_counters SET last_number = last_number + 4 WHERE year = 2026 RETURNING last_number;
INSERT INTO invoices (id, number, payment_id, order_id, amount, currency, issued_at) VALUES ('inv' || (:n0)::text, 'INV-2026-' || (:n0)::text, 'pay' || (:n0)::text, 'o' || (:n0)::text, 1000, 'EUR', now()), ('inv' || (:n1)::text, 'INV-2026-' || (:n1)::text, 'pay' || (:n1)::text, 'o' || (:n1)::text, 1000, 'EUR', now()), ('inv' || (:n2)::text, 'INV-2026-' || (:n2)::text, 'pay' || (:n2)::text, 'o' || (:n2)::text, 1000, 'EUR', now()), ('inv' || (:n3)::text, 'INV-2026-' || (:n3)::text, 'pay' || (:n3)::text, 'o' || (:n3)::text, 1000, 'EUR', now());
INSERT INTO outbox (event_id, event_type, event_key, occurred_at, envelope) VALUES ('c' || (:n0)::text, 'billing.payment_captured', 'o' || (:n0)::text, now(), repeat('x', 600)), ('c' || (:n1)::text, 'billing.payment_captured', 'o' || (:n1)::text, now(), repeat('x', 600)), ('c' || (:n2)::text, 'billing.payment_captured', 'o' || (:n2)::text, now(), repeat('x', 600)), ('c' || (:n3)::text, 'billing.payment_captured', 'o' || (:n3)::text, now(), repeat('x', 600));
COMMIT;
\endpipeline
\startpipeline
BEGIN;
UPDATE reservations SET status = 'committed', updated_at = now() WHERE order_id = ANY (ARRAY['o' || (:n0)::text, 'o' || (:n1)::text, 'o' || (:n2)::text, 'o' || (:n3)::text]) AND status = 'reserved' RETURNING order_id, lines;
UPDATE products SET reserved = reserved - v.q, on_hand = on_hand - v.q, updated_at = now() FROM (VALUES ('p' || (:p0)::text, 1), ('p' || (:p1)::text, 1), ('p' || (:p2)::text, 1), ('p' || (:p3)::text, 1)) AS v(id, q) WHERE products.id = v.id;
COMMIT;
\endpipeline
\startpipeline
BEGIN;
UPDATE orders SET status = 'confirmed', saga_step = NULL, saga_owner = NULL, saga_lease_until = NULL, updated_at = now() WHERE id = ANY (ARRAY['o' || (:n0)::text, 'o' || (:n1)::text, 'o' || (:n2)::text, 'o' || (:n3)::text]) AND status = 'pending' RETURNING id, status;
INSERT INTO outbox (event_id, event_type, event_key, occurred_at, envelope) VALUES ('f' || (:n0)::text, 'orders.order_confirmed', 'o' || (:n0)::text, now(), repeat('x', 900)), ('f' || (:n1)::text, 'orders.order_confirmed', 'o' || (:n1)::text, now(), repeat('x', 900)), ('f' || (:n2)::text, 'orders.order_confirmed', 'o' || (:n2)::text, now(), repeat('x', 900)), ('f' || (:n3)::text, 'orders.order_confirmed', 'o' || (:n3)::text, now(), repeat('x', 900));
COMMIT;
\endpipeline
SELECT id, url, events, secret, created_at FROM webhooks ORDER BY id;
\startpipeline
BEGIN;
INSERT INTO inbox (consumer, event_id, handled_at) VALUES ('notifications', 'f' || (:n0)::text, now()), ('notifications', 'f' || (:n1)::text, now()), ('notifications', 'f' || (:n2)::text, now()), ('notifications', 'f' || (:n3)::text, now()) ON CONFLICT DO NOTHING RETURNING event_id;
INSERT INTO deliveries (id, dedup_key, event_id, event_type, order_id, channel, recipient, template, subject, text_body, html_body, status, attempts, next_attempt_at, claimed_until, created_at, updated_at) VALUES ('d' || (:n0)::text, 'email-c-' || (:n0)::text, 'f' || (:n0)::text, 'orders.order_confirmed', 'o' || (:n0)::text, 'file', 'a@example.com', 'order_confirmed', 'Your order', repeat('t', 400), repeat('h', 900), 'retrying', 0, now(), now(), now(), now()), ('d' || (:n1)::text, 'email-c-' || (:n1)::text, 'f' || (:n1)::text, 'orders.order_confirmed', 'o' || (:n1)::text, 'file', 'a@example.com', 'order_confirmed', 'Your order', repeat('t', 400), repeat('h', 900), 'retrying', 0, now(), now(), now(), now()), ('d' || (:n2)::text, 'email-c-' || (:n2)::text, 'f' || (:n2)::text, 'orders.order_confirmed', 'o' || (:n2)::text, 'file', 'a@example.com', 'order_confirmed', 'Your order', repeat('t', 400), repeat('h', 900), 'retrying', 0, now(), now(), now(), now()), ('d' || (:n3)::text, 'email-c-' || (:n3)::text, 'f' || (:n3)::text, 'orders.order_confirmed', 'o' || (:n3)::text, 'file', 'a@example.com', 'order_confirmed', 'Your order', repeat('t', 400), repeat('h', 900), 'retrying', 0, now(), now(), now(), now()) ON CONFLICT (dedup_key) DO NOTHING RETURNING id;
COMMIT;
\endpipeline
\startpipeline
BEGIN;
UPDATE deliveries SET status = 'sent', attempts = 1, last_error = NULL, next_attempt_at = now(), claimed_until = NULL, updated_at = now() WHERE id = ANY (ARRAY['d' || (:n0)::text, 'd' || (:n1)::text, 'd' || (:n2)::text, 'd' || (:n3)::text]) AND status = 'retrying';
COMMIT;
\endpipeline
