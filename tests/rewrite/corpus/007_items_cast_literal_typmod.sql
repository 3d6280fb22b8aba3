-- reason: similarity
-- sql:
SELECT id FROM items ORDER BY embedding <-> '[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]'::vector(8) LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT id FROM ruvector_new.items ORDER BY embedding <-> '[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]'::vector LIMIT 5
-- hand-shadow:
SELECT id FROM ruvector_new.items ORDER BY embedding <-> '[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]'::vector(8) LIMIT 5
