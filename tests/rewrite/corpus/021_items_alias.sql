-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT i.id, i.content FROM items i ORDER BY i.embedding <-> $1 LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT i.id, i.content FROM ruvector_new.items AS i ORDER BY i.embedding <-> $1::vector LIMIT 5
-- hand-shadow:
SELECT i.id, i.content FROM ruvector_new.items i ORDER BY i.embedding <-> $1 LIMIT 5
