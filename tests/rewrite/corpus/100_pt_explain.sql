-- reason: not-select
-- sql:
EXPLAIN SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 5
