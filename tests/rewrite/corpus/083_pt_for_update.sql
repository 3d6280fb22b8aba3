-- reason: locking
-- sql:
SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 1 FOR UPDATE
