CREATE TABLE reservation_lines (
    order_id TEXT NOT NULL REFERENCES reservations (order_id),
    product_id TEXT NOT NULL REFERENCES products (id),
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);
INSERT INTO reservation_lines (order_id, product_id, quantity)
SELECT reservations.order_id, line ->> 0, (line ->> 1)::bigint
FROM reservations, json_array_elements(reservations.lines::json) AS line;
ALTER TABLE reservations DROP COLUMN lines;
