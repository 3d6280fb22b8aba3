-- reason: ambiguous-column
-- sql:
SELECT * FROM items, LATERAL (SELECT 1 AS one) l ORDER BY embedding <-> $1 LIMIT 3
