#!/usr/bin/env python3
"""Writes the pgbench scripts of an order's statements (README.md) into the folder given."""

import sys
from pathlib import Path

ORDERS_A_BATCH = 4
LINES = '[{"product_id":"p1","sku":"SKU-1","name":"Name","quantity":1,"unit_price":1000,"line_total":1000}]'
RESERVED = '[{"product_id":"p1","quantity":1}]'
# The steps of an order in turn; the reads run outside any transaction.
STEPS = ["lookup", "place", "reserve", "charge", "capture", "commit", "end", "webhooks", "record", "settle"]
READS = {"lookup", "webhooks"}


def order(i):
    return f"(:n{i})::text"


def product(i):
    return f"(:p{i})::text"


def per_order(i):
    """The statements of order `i`, step by step, one statement per row."""
    n, p = order(i), product(i)
    return {
        "lookup": [f"SELECT id, sku, name, price_amount, currency, on_hand, reserved FROM products WHERE id = 'p' || {p};"],
        "place": [
            "INSERT INTO orders (id, status, customer_email, total_amount, currency, payment_token, saga_step, "
            "saga_attempts, saga_deadline, saga_owner, saga_lease_until, created_at, updated_at, lines) VALUES "
            f"('o' || {n}, 'pending', 'a@example.com', 1000, 'EUR', 'tok_visa', 'reserve', 0, now(), 'run', now(), now(), now(), '{LINES}');"
        ],
        "reserve": [
            f"UPDATE products SET reserved = reserved + 1, updated_at = now() WHERE id = 'p' || {p} AND on_hand - reserved >= 1 RETURNING id, sku, name, on_hand, reserved;",
            f"INSERT INTO reservations (order_id, status, created_at, updated_at, lines) VALUES ('o' || {n}, 'reserved', now(), now(), '{RESERVED}');",
        ],
        "charge": [
            f"SELECT pg_advisory_xact_lock(hashtextextended('billing.charge.o' || {n}, 0));",
            "INSERT INTO payments (id, order_id, amount, currency, customer_email, status, refunded_amount, attempt_started_at, created_at, updated_at) "
            f"SELECT 'pay' || {n}, 'o' || {n}, 1000, 'EUR', 'a@example.com', 'pending', 0, now(), now(), now() "
            f"WHERE NOT EXISTS (SELECT 1 FROM voided_charges WHERE order_id = 'o' || {n});",
        ],
        "capture": [
            f"UPDATE payments SET status = 'captured', provider_ref = 'sim_ref', invoice_id = 'inv' || {n}, updated_at = now() WHERE order_id = 'o' || {n} AND status = 'pending' RETURNING id, amount, currency;",
            "UPDATE invoice_counters SET last_number = last_number + 1 WHERE year = 2026 RETURNING last_number;",
            f"INSERT INTO invoices (id, number, payment_id, order_id, amount, currency, issued_at) VALUES ('inv' || {n}, 'INV-2026-' || {n}, 'pay' || {n}, 'o' || {n}, 1000, 'EUR', now());",
            f"INSERT INTO outbox (event_id, event_type, event_key, occurred_at, envelope) VALUES ('c' || {n}, 'billing.payment_captured', 'o' || {n}, now(), repeat('x', 600));",
        ],
        "commit": [
            f"UPDATE reservations SET status = 'committed', updated_at = now() WHERE order_id = 'o' || {n} AND status = 'reserved' RETURNING lines;",
            f"UPDATE products SET reserved = reserved - 1, on_hand = on_hand - 1, updated_at = now() WHERE id = 'p' || {p};",
        ],
        "end": [
            f"UPDATE orders SET status = 'confirmed', saga_step = NULL, saga_owner = NULL, saga_lease_until = NULL, updated_at = now() WHERE id = 'o' || {n} AND status = 'pending' RETURNING id, status;",
            f"INSERT INTO outbox (event_id, event_type, event_key, occurred_at, envelope) VALUES ('f' || {n}, 'orders.order_confirmed', 'o' || {n}, now(), repeat('x', 900));",
        ],
        "webhooks": ["SELECT id, url, events, secret, created_at FROM webhooks ORDER BY id;"] * 2,
        "record": [
            f"INSERT INTO inbox (consumer, event_id, handled_at) VALUES ('notifications', 'f' || {n}, now()) ON CONFLICT DO NOTHING;",
            "INSERT INTO deliveries (id, dedup_key, event_id, event_type, order_id, channel, recipient, template, subject, text_body, html_body, "
            "status, attempts, next_attempt_at, claimed_until, created_at, updated_at) VALUES "
            f"('d' || {n}, 'email-c-' || {n}, 'f' || {n}, 'orders.order_confirmed', 'o' || {n}, 'file', 'a@example.com', 'order_confirmed', "
            "'Your order', repeat('t', 400), repeat('h', 900), 'retrying', 0, now(), now(), now(), now()) ON CONFLICT (dedup_key) DO NOTHING;",
        ],
        "settle": [
            f"UPDATE deliveries SET status = 'sent', attempts = 1, last_error = NULL, next_attempt_at = now(), claimed_until = NULL, updated_at = now() WHERE id = 'd' || {n} AND status = 'retrying';"
        ],
    }


def merged(count):
    """The statements of `count` orders, one multi-row statement per step."""
    orders = range(count)

    def each(make):
        return ", ".join(make(i) for i in orders)

    ids = lambda prefix: "ARRAY[" + each(lambda i: f"'{prefix}' || {order(i)}") + "]"
    stock = each(lambda i: f"('p' || {product(i)}, 1)")
    return {
        "lookup": ["SELECT id, sku, name, price_amount, currency, on_hand, reserved FROM products WHERE id = ANY (ARRAY[" + each(lambda i: f"'p' || {product(i)}") + "]);"],
        "place": [
            "INSERT INTO orders (id, status, customer_email, total_amount, currency, payment_token, saga_step, saga_attempts, saga_deadline, "
            "saga_owner, saga_lease_until, created_at, updated_at, lines) VALUES "
            + each(lambda i: f"('o' || {order(i)}, 'pending', 'a@example.com', 1000, 'EUR', 'tok_visa', 'reserve', 0, now(), 'run', now(), now(), now(), '{LINES}')") + ";"
        ],
        "reserve": [
            f"UPDATE products SET reserved = reserved + v.q, updated_at = now() FROM (VALUES {stock}) AS v(id, q) "
            "WHERE products.id = v.id AND on_hand - reserved >= v.q RETURNING products.id, on_hand, reserved;",
            "INSERT INTO reservations (order_id, status, created_at, updated_at, lines) VALUES "
            + each(lambda i: f"('o' || {order(i)}, 'reserved', now(), now(), '{RESERVED}')") + ";",
        ],
        "charge": [
            f"SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest({ids('billing.charge.o')}) AS k ORDER BY k;",
            "INSERT INTO payments (id, order_id, amount, currency, customer_email, status, refunded_amount, attempt_started_at, created_at, updated_at) "
            "SELECT 'pay' || v.o, 'o' || v.o, 1000, 'EUR', 'a@example.com', 'pending', 0, now(), now(), now() FROM (VALUES "
            + each(lambda i: f"({order(i)})") + ") AS v(o) WHERE NOT EXISTS (SELECT 1 FROM voided_charges WHERE order_id = 'o' || v.o);",
        ],
        "capture": [
            f"UPDATE payments SET status = 'captured', provider_ref = 'sim_ref', invoice_id = 'inv' || substr(order_id, 2), updated_at = now() "
            f"WHERE order_id = ANY ({ids('o')}) AND status = 'pending' RETURNING id, amount, currency;",
            f"UPDATE invoice_counters SET last_number = last_number + {count} WHERE year = 2026 RETURNING last_number;",
            "INSERT INTO invoices (id, number, payment_id, order_id, amount, currency, issued_at) VALUES "
            + each(lambda i: f"('inv' || {order(i)}, 'INV-2026-' || {order(i)}, 'pay' || {order(i)}, 'o' || {order(i)}, 1000, 'EUR', now())") + ";",
            "INSERT INTO outbox (event_id, event_type, event_key, occurred_at, envelope) VALUES "
            + each(lambda i: f"('c' || {order(i)}, 'billing.payment_captured', 'o' || {order(i)}, now(), repeat('x', 600))") + ";",
        ],
        "commit": [
            f"UPDATE reservations SET status = 'committed', updated_at = now() WHERE order_id = ANY ({ids('o')}) AND status = 'reserved' RETURNING order_id, lines;",
            f"UPDATE products SET reserved = reserved - v.q, on_hand = on_hand - v.q, updated_at = now() FROM (VALUES {stock}) AS v(id, q) WHERE products.id = v.id;",
        ],
        "end": [
            "UPDATE orders SET status = 'confirmed', saga_step = NULL, saga_owner = NULL, saga_lease_until = NULL, updated_at = now() "
            f"WHERE id = ANY ({ids('o')}) AND status = 'pending' RETURNING id, status;",
            "INSERT INTO outbox (event_id, event_type, event_key, occurred_at, envelope) VALUES "
            + each(lambda i: f"('f' || {order(i)}, 'orders.order_confirmed', 'o' || {order(i)}, now(), repeat('x', 900))") + ";",
        ],
        "webhooks": ["SELECT id, url, events, secret, created_at FROM webhooks ORDER BY id;"],
        "record": [
            "INSERT INTO inbox (consumer, event_id, handled_at) VALUES "
            + each(lambda i: f"('notifications', 'f' || {order(i)}, now())") + " ON CONFLICT DO NOTHING RETURNING event_id;",
            "INSERT INTO deliveries (id, dedup_key, event_id, event_type, order_id, channel, recipient, template, subject, text_body, html_body, "
            "status, attempts, next_attempt_at, claimed_until, created_at, updated_at) VALUES "
            + each(lambda i: f"('d' || {order(i)}, 'email-c-' || {order(i)}, 'f' || {order(i)}, 'orders.order_confirmed', 'o' || {order(i)}, 'file', "
                   "'a@example.com', 'order_confirmed', 'Your order', repeat('t', 400), repeat('h', 900), 'retrying', 0, now(), now(), now(), now())")
            + " ON CONFLICT (dedup_key) DO NOTHING RETURNING id;",
        ],
        "settle": [
            "UPDATE deliveries SET status = 'sent', attempts = 1, last_error = NULL, next_attempt_at = now(), claimed_until = NULL, updated_at = now() "
            f"WHERE id = ANY ({ids('d')}) AND status = 'retrying';"
        ],
    }


def script(count, statements, pipelined):
    lines = [line for i in range(count) for line in (f"\\set n{i} random(1, 1000000000000)", f"\\set p{i} random(1, 100)")]
    for step in STEPS:
        if step in READS:
            lines += statements[step]
            continue
        transaction = ["BEGIN;", *statements[step], "COMMIT;"]
        lines += ["\\startpipeline", *transaction, "\\endpipeline"] if pipelined else transaction
    return lines


def write(folder):
    one = per_order(0)
    batch = {step: [s for i in range(ORDERS_A_BATCH) for s in per_order(i)[step]] for step in STEPS}
    kinds = {"": (1, one), "batched-": (ORDERS_A_BATCH, batch), "merged-": (ORDERS_A_BATCH, merged(ORDERS_A_BATCH))}
    for prefix, (count, statements) in kinds.items():
        for mode, pipelined in (("plain", False), ("pipelined", True)):
            lines = script(count, statements, pipelined)
            (folder / f"{prefix}{mode}.sql").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    target.mkdir(parents=True, exist_ok=True)
    write(target)
