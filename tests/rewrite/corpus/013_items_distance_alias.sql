-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT id, embedding <-> $1 AS distance FROM items ORDER BY distance LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT id, embedding <-> $1::vector AS distance FROM ruvector_new.items ORDER BY distance LIMIT 5
-- hand-shadow:
SELECT id, embedding <-> $1 AS distance FROM ruvector_new.items ORDER BY distance LIMIT 5
