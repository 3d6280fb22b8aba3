-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT i.*, i.embedding <-> $1 AS d FROM items i ORDER BY d LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT id, content, category, price, embedding, i.embedding <-> $1::vector AS d FROM ruvector_new.items AS i ORDER BY d LIMIT 5
-- hand-shadow:
SELECT i.*, i.embedding <-> $1 AS d FROM ruvector_new.items i ORDER BY d LIMIT 5
