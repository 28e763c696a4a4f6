CREATE TABLE voided_charges (
    order_id TEXT PRIMARY KEY,
    created_at TIMESTAMP NOT NULL
);

INSERT INTO voided_charges (order_id, created_at)
    SELECT order_id, decided_at FROM charge_decisions WHERE decision = 'void';

DROP TABLE charge_decisions;
