-- reason: parse-error
-- sql:
SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 5 WHERE (
