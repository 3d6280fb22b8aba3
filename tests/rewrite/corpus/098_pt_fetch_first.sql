-- reason: fetch-first
-- sql:
SELECT id FROM items ORDER BY embedding <-> $1 FETCH FIRST 5 ROWS ONLY
