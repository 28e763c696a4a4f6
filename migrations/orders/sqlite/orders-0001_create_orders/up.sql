CREATE TABLE orders (
    id TEXT PRIMARY KEY NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected', 'cancelled')),
    customer_email TEXT NOT NULL,
    total_amount BIGINT NOT NULL CHECK (total_amount >= 0),
    currency TEXT NOT NULL,
    -- Set when the saga turns to compensation; shown once the order is rejected.
    rejection_reason TEXT,
    -- Kept while a charge may still be needed; cleared when the saga ends.
    payment_token TEXT,
    -- The saga step to attempt next; NULL once no saga work remains.
    saga_step TEXT,
    saga_attempts BIGINT NOT NULL DEFAULT 0,
    saga_next_at TIMESTAMP,
    saga_deadline TIMESTAMP NOT NULL,
    saga_owner TEXT,
    saga_lease_until TIMESTAMP,
    saga_error TEXT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
) WITHOUT ROWID;
CREATE INDEX orders_by_customer ON orders (customer_email, id);
CREATE INDEX orders_saga_due ON orders (saga_next_at) WHERE saga_step IS NOT NULL;

CREATE TABLE order_lines (
    order_id TEXT NOT NULL REFERENCES orders (id),
    position BIGINT NOT NULL,
    product_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    name TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    unit_price BIGINT NOT NULL,
    line_total BIGINT NOT NULL,
    PRIMARY KEY (order_id, position)
) WITHOUT ROWID;

CREATE TABLE idempotency_keys (
    idempotency_key TEXT PRIMARY KEY NOT NULL,
    request_hash TEXT NOT NULL,
    order_id TEXT NOT NULL REFERENCES orders (id),
    created_at TIMESTAMP NOT NULL
) WITHOUT ROWID;
