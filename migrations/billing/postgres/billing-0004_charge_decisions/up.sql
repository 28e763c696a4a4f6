-- Which came first for an order: its first charge, or its void (a refund asked before
-- billing saw any charge of it: the saga gave up on the order, so a charge arriving later
-- is refused). Both insert the order's row: its key makes the later one wait for the
-- earlier one's commit and fail, and the later one answers from the earlier one's outcome.
-- One row per order, never deleted. It takes over from voided_charges (the voids) and
-- from the advisory lock the two used to take turns on.
CREATE TABLE charge_decisions (
    order_id TEXT PRIMARY KEY NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('charge', 'void')),
    decided_at TIMESTAMP NOT NULL
);

INSERT INTO charge_decisions (order_id, decision, decided_at)
    SELECT order_id, 'charge', created_at FROM payments;
INSERT INTO charge_decisions (order_id, decision, decided_at)
    SELECT order_id, 'void', created_at FROM voided_charges;

DROP TABLE voided_charges;
