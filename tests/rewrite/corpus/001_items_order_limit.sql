-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT id, content FROM items ORDER BY embedding <-> $1 LIMIT 10
-- primary:
ORIGINAL
-- shadow:
SELECT id, content FROM ruvector_new.items ORDER BY embedding <-> $1::vector LIMIT 10
-- hand-shadow:
SELECT id, content FROM ruvector_new.items ORDER BY embedding <-> $1 LIMIT 10
