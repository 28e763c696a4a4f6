CREATE TABLE products (
    id TEXT PRIMARY KEY NOT NULL,
    sku TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    description TEXT,
    price_amount BIGINT NOT NULL CHECK (price_amount >= 0),
    currency TEXT NOT NULL,
    on_hand BIGINT NOT NULL CHECK (on_hand >= 0),
    reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= on_hand),
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE reservations (
    order_id TEXT PRIMARY KEY NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'released', 'committed', 'restocked')),
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
) WITHOUT ROWID;

CREATE TABLE reservation_lines (
    order_id TEXT NOT NULL REFERENCES reservations (order_id),
    product_id TEXT NOT NULL REFERENCES products (id),
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
) WITHOUT ROWID;
