-- reason: similarity
-- params: ["[0.5,0.5,0.5,0.5,-0.5,-0.5,-0.5,-0.5]"]
-- sql:
SELECT id FROM items WHERE l1_distance(embedding, $1) < 3 ORDER BY id
-- primary:
ORIGINAL
-- shadow:
SELECT id FROM ruvector_new.items WHERE l1_distance(embedding, $1::vector) < 3 ORDER BY id
-- hand-shadow:
SELECT id FROM ruvector_new.items WHERE l1_distance(embedding, $1) < 3 ORDER BY id
