-- One row per order ever charged. `pending` while a gateway call is (or was, before a
-- crash) under way: `attempt_started_at` is when the current attempt began, NULL when
-- no attempt is in flight. The port never answers a pending payment.
CREATE TABLE payments (
    id TEXT PRIMARY KEY NOT NULL,
    order_id TEXT NOT NULL UNIQUE,
    amount BIGINT NOT NULL CHECK (amount >= 1),
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'captured', 'declined', 'refunded')),
    provider_ref TEXT,
    decline_reason TEXT,
    -- The invoice issued when the payment was captured.
    invoice_id TEXT,
    refunded_amount BIGINT NOT NULL DEFAULT 0
        CHECK (refunded_amount >= 0 AND refunded_amount <= amount),
    attempt_started_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
) WITHOUT ROWID;

-- One per refunded payment (refunds are in full).
CREATE TABLE refunds (
    id TEXT PRIMARY KEY NOT NULL,
    payment_id TEXT NOT NULL UNIQUE REFERENCES payments (id),
    order_id TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount >= 1),
    currency TEXT NOT NULL,
    provider_ref TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
) WITHOUT ROWID;

-- One per captured payment, numbered without gaps per year (INV-2026-000001).
CREATE TABLE invoices (
    id TEXT PRIMARY KEY NOT NULL,
    number TEXT NOT NULL UNIQUE,
    payment_id TEXT NOT NULL UNIQUE REFERENCES payments (id),
    order_id TEXT NOT NULL UNIQUE,
    amount BIGINT NOT NULL CHECK (amount >= 1),
    currency TEXT NOT NULL,
    issued_at TIMESTAMP NOT NULL
) WITHOUT ROWID;

-- The last invoice number given out per year; its row lock serializes numbering.
CREATE TABLE invoice_counters (
    year INTEGER PRIMARY KEY NOT NULL,
    last_number BIGINT NOT NULL CHECK (last_number >= 1)
);
