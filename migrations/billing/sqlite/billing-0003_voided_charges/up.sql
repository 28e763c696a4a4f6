-- Orders refunded before billing saw any charge of them: the saga gave up on the order, so
-- a charge arriving later (a request delayed in the network, an attempt retried) is
-- refused. One row per order, never deleted.
CREATE TABLE voided_charges (
    order_id TEXT PRIMARY KEY,
    created_at TIMESTAMP NOT NULL
) WITHOUT ROWID;
