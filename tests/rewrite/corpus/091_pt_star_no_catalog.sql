-- reason: star-needs-catalog
-- catalog: none
-- sql:
SELECT * FROM items ORDER BY embedding <-> $1 LIMIT 5
