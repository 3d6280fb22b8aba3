-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT id, row_number() OVER (ORDER BY embedding <-> $1) AS rank FROM items ORDER BY rank LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT id, ROW_NUMBER() OVER (ORDER BY embedding <-> $1::vector) AS rank FROM ruvector_new.items ORDER BY rank LIMIT 5
-- hand-shadow:
SELECT id, row_number() OVER (ORDER BY embedding <-> $1) AS rank FROM ruvector_new.items ORDER BY rank LIMIT 5
