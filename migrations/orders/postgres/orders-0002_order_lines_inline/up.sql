-- An order keeps its lines in its own row, as a JSON array in line order of
-- {product_id, sku, name, quantity, unit_price, line_total}: placing an order writes one
-- row, and reading one (the saga, GET /orders/{id}, a customer's list) reads one, not
-- one more statement for the lines. On PostgreSQL every statement is a round trip
-- (BENCHMARKS.md, "Orders on PostgreSQL"). Lines never change once the order is placed.
ALTER TABLE orders ADD COLUMN lines TEXT NOT NULL DEFAULT '[]';
UPDATE orders
SET lines = grouped.lines
FROM (
    SELECT order_id, json_agg(json_build_object(
        'product_id', product_id, 'sku', sku, 'name', name, 'quantity', quantity,
        'unit_price', unit_price, 'line_total', line_total
    ) ORDER BY position)::text AS lines
    FROM order_lines
    GROUP BY order_id
) AS grouped
WHERE grouped.order_id = orders.id;
DROP TABLE order_lines;
