-- reason: search-path-ambiguous
-- catalog: none
-- search_path: app, public
-- sql:
SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 5
