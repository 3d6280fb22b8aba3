-- reason: not-select
-- sql:
INSERT INTO meta SELECT id, 'x' FROM items ORDER BY embedding <-> $1 LIMIT 1
