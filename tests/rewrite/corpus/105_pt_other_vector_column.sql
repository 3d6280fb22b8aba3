-- reason: no-route
-- sql:
SELECT id FROM queries ORDER BY v <-> $1 LIMIT 5
