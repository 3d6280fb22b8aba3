-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT s.id FROM (SELECT id, embedding <-> $1 AS d FROM items ORDER BY d LIMIT 10) s WHERE s.d < 10 ORDER BY s.d
-- primary:
ORIGINAL
-- shadow:
SELECT s.id FROM (SELECT id, embedding <-> $1::vector AS d FROM ruvector_new.items ORDER BY d LIMIT 10) AS s WHERE s.d < 10 ORDER BY s.d
-- hand-shadow:
SELECT s.id FROM (SELECT id, embedding <-> $1 AS d FROM ruvector_new.items ORDER BY d LIMIT 10) s WHERE s.d < 10 ORDER BY s.d
