-- reason: limit-expression
-- sql:
SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 2 + 3
