-- reason: distance-desc
-- sql:
SELECT id FROM items ORDER BY embedding <-> $1 DESC LIMIT 5
