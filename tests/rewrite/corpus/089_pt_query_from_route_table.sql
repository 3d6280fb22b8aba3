-- reason: similarity
-- sql:
SELECT id FROM items ORDER BY embedding <-> (SELECT embedding FROM items WHERE id = 1) LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT id FROM ruvector_new.items ORDER BY embedding <-> (SELECT embedding FROM items WHERE id = 1)::vector LIMIT 5
-- hand-shadow:
SELECT id FROM ruvector_new.items ORDER BY embedding <-> (SELECT embedding FROM items WHERE id = 1) LIMIT 5
