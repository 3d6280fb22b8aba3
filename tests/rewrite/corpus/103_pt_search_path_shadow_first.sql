-- reason: no-route
-- search_path: ruvector_new, public
-- sql:
SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 5
