CREATE TABLE reservation_lines (
    order_id TEXT NOT NULL REFERENCES reservations (order_id),
    product_id TEXT NOT NULL REFERENCES products (id),
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
) WITHOUT ROWID;
INSERT INTO reservation_lines (order_id, product_id, quantity)
SELECT reservations.order_id, json_extract(line.value, '$[0]'), json_extract(line.value, '$[1]')
FROM reservations, json_each(reservations.lines) AS line;
ALTER TABLE reservations DROP COLUMN lines;
