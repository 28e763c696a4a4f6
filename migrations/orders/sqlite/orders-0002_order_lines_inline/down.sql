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
INSERT INTO order_lines (order_id, position, product_id, sku, name, quantity, unit_price, line_total)
SELECT orders.id, CAST(line.key AS INTEGER), json_extract(line.value, '$.product_id'),
    json_extract(line.value, '$.sku'), json_extract(line.value, '$.name'),
    json_extract(line.value, '$.quantity'), json_extract(line.value, '$.unit_price'),
    json_extract(line.value, '$.line_total')
FROM orders, json_each(orders.lines) AS line;
ALTER TABLE orders DROP COLUMN lines;
