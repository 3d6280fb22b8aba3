-- reason: recursive-cte
-- sql:
WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT id FROM items, r ORDER BY embedding <-> $1
