-- reason: similarity
-- execute: no
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT id, embedding <-> $1 * 1 AS d FROM items ORDER BY d LIMIT 3
-- primary:
ORIGINAL
-- shadow:
SELECT id, embedding <-> ($1 * 1)::vector AS d FROM ruvector_new.items ORDER BY d LIMIT 3
