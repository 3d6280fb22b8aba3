-- reason: similarity
-- params: ["[0.5,0.5,0.5,0.5,-0.5,-0.5,-0.5,-0.5]"]
-- sql:
SELECT id, embedding <=> $1 AS d FROM items WHERE embedding <=> $1 < 0.8 ORDER BY embedding <=> $1 LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT id, embedding <=> $1::vector AS d FROM ruvector_new.items WHERE embedding <=> $1::vector < 0.8 ORDER BY embedding <=> $1::vector LIMIT 5
-- hand-shadow:
SELECT id, embedding <=> $1 AS d FROM ruvector_new.items WHERE embedding <=> $1 < 0.8 ORDER BY embedding <=> $1 LIMIT 5
