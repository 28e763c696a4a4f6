-- A reservation keeps its lines in its own row, as a JSON array of [product id, quantity]
-- sorted by product id: reserving writes one row, not one more per line, and committing
-- or releasing reads them back from the status change it makes anyway (`RETURNING`). On
-- PostgreSQL every statement is a round trip: two fewer per order (BENCHMARKS.md).
-- Released tombstones (a release before any reserve) have no lines: '[]'.
ALTER TABLE reservations ADD COLUMN lines TEXT NOT NULL DEFAULT '[]';
UPDATE reservations
SET lines = grouped.lines
FROM (
    SELECT order_id, json_agg(json_build_array(product_id, quantity) ORDER BY product_id)::text AS lines
    FROM reservation_lines
    GROUP BY order_id
) AS grouped
WHERE grouped.order_id = reservations.order_id;
DROP TABLE reservation_lines;
