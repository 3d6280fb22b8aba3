-- reason: similarity
-- params: ["[0.5,0.5,0.5,0.5,-0.5,-0.5,-0.5,-0.5]"]
-- sql:
SELECT id FROM items WHERE embedding <=> $1 < 0.5 ORDER BY embedding <=> $1 LIMIT 20
-- primary:
ORIGINAL
-- shadow:
SELECT id FROM ruvector_new.items WHERE embedding <=> $1::vector < 0.5 ORDER BY embedding <=> $1::vector LIMIT 20
-- hand-shadow:
SELECT id FROM ruvector_new.items WHERE embedding <=> $1 < 0.5 ORDER BY embedding <=> $1 LIMIT 20
