-- reason: no-route
-- sql:
SELECT id FROM app.vectors ORDER BY emb <-> $1 LIMIT 5
