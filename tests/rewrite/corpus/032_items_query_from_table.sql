-- reason: similarity
-- sql:
SELECT id FROM items ORDER BY embedding <-> (SELECT v FROM queries WHERE id = 3) LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT id FROM ruvector_new.items ORDER BY embedding <-> (SELECT v FROM queries WHERE id = 3)::vector LIMIT 5
-- hand-shadow:
SELECT id FROM ruvector_new.items ORDER BY embedding <-> (SELECT v FROM queries WHERE id = 3) LIMIT 5
