-- reason: multiple-routes
-- sql:
SELECT i.id FROM items i JOIN docs d ON d.id = i.id ORDER BY i.embedding <-> $1 LIMIT 5
