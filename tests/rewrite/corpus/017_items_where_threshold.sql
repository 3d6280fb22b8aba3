-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT id FROM items WHERE embedding <-> $1 < 1.2
-- primary:
ORIGINAL
-- shadow:
SELECT id FROM ruvector_new.items WHERE embedding <-> $1::vector < 1.2
-- hand-shadow:
SELECT id FROM ruvector_new.items WHERE embedding <-> $1 < 1.2
