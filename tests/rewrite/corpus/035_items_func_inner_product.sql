-- reason: similarity
-- params: ["[0.5,0.5,0.5,0.5,-0.5,-0.5,-0.5,-0.5]"]
-- sql:
SELECT id, inner_product(embedding, $1) FROM items ORDER BY inner_product(embedding, $1) DESC LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT id, inner_product(embedding, $1::vector) FROM ruvector_new.items ORDER BY inner_product(embedding, $1::vector) DESC LIMIT 5
-- hand-shadow:
SELECT id, inner_product(embedding, $1) FROM ruvector_new.items ORDER BY inner_product(embedding, $1) DESC LIMIT 5
