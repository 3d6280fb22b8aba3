-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT DISTINCT ON (category) category, id FROM items ORDER BY category, embedding <-> $1
-- primary:
ORIGINAL
-- shadow:
SELECT DISTINCT ON (category) category, id FROM ruvector_new.items ORDER BY category, embedding <-> $1::vector
-- hand-shadow:
SELECT DISTINCT ON (category) category, id FROM ruvector_new.items ORDER BY category, embedding <-> $1
