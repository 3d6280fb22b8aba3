-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT id, 1 - (embedding <=> $1) AS similarity FROM items ORDER BY similarity DESC LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT id, 1 - (embedding <=> $1::vector) AS similarity FROM ruvector_new.items ORDER BY similarity DESC LIMIT 5
-- hand-shadow:
SELECT id, 1 - (embedding <=> $1) AS similarity FROM ruvector_new.items ORDER BY similarity DESC LIMIT 5
