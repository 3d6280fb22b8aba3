-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
WITH top AS (SELECT id, embedding <-> $1 AS d FROM items ORDER BY d LIMIT 5) SELECT id, d FROM top ORDER BY d
-- primary:
ORIGINAL
-- shadow:
WITH top AS (SELECT id, embedding <-> $1::vector AS d FROM ruvector_new.items ORDER BY d LIMIT 5) SELECT id, d FROM top ORDER BY d
-- hand-shadow:
WITH top AS (SELECT id, embedding <-> $1 AS d FROM ruvector_new.items ORDER BY d LIMIT 5) SELECT id, d FROM top ORDER BY d
