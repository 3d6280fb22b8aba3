-- reason: similarity
-- params: ["[0.5,0.5,0.5,0.5,-0.5,-0.5,-0.5,-0.5]"]
-- sql:
SELECT id FROM items ORDER BY embedding <-> $1 DESC LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT id FROM ruvector_new.items ORDER BY embedding <-> $1::vector DESC LIMIT 5
-- hand-shadow:
SELECT id FROM ruvector_new.items ORDER BY embedding <-> $1 DESC LIMIT 5
