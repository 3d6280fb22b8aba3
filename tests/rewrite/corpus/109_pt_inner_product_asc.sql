-- reason: similarity
-- params: ["[0.5,0.5,0.5,0.5,-0.5,-0.5,-0.5,-0.5]"]
-- sql:
SELECT id FROM items ORDER BY inner_product(embedding, $1) LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT id FROM ruvector_new.items ORDER BY inner_product(embedding, $1::vector) LIMIT 5
-- hand-shadow:
SELECT id FROM ruvector_new.items ORDER BY inner_product(embedding, $1) LIMIT 5
