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
);
INSERT INTO order_lines (order_id, position, product_id, sku, name, quantity, unit_price, line_total)
SELECT orders.id, line.position - 1, line.value ->> 'product_id', line.value ->> 'sku',
    line.value ->> 'name', (line.value ->> 'quantity')::bigint,
    (line.value ->> 'unit_price')::bigint, (line.value ->> 'line_total')::bigint
FROM orders, json_array_elements(orders.lines::json) WITH ORDINALITY AS line (value, position);
ALTER TABLE orders DROP COLUMN lines;
