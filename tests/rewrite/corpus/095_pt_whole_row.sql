-- reason: whole-row-reference
-- sql:
SELECT items FROM items ORDER BY embedding <-> $1 LIMIT 5
