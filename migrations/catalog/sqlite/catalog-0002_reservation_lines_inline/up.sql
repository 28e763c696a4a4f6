-- A reservation keeps its lines in its own row, as a JSON array of [product id, quantity]
-- sorted by product id: reserving writes one row, not one more per line, and committing
-- or releasing reads them back from the status change it makes anyway (`RETURNING`). On
-- PostgreSQL every statement is a round trip: two fewer per order (BENCHMARKS.md).
-- Released tombstones (a release before any reserve) have no lines: '[]'.
ALTER TABLE reservations ADD COLUMN lines TEXT NOT NULL DEFAULT '[]';
UPDATE reservations
SET lines = (
    SELECT json_group_array(json_array(product_id, quantity))
    FROM (
        SELECT product_id, quantity
        FROM reservation_lines
        WHERE reservation_lines.order_id = reservations.order_id
        ORDER BY product_id
    )
)
WHERE order_id IN (SELECT order_id FROM reservation_lines);
DROP TABLE reservation_lines;
