-- reason: vector-column-needs-catalog
-- catalog: none
-- sql:
SELECT id, embedding FROM items ORDER BY embedding <-> $1 LIMIT 3
