-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT id FROM items WHERE id IN (SELECT item_id FROM meta WHERE tag = 'tag1') ORDER BY embedding <-> $1 LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT id FROM ruvector_new.items WHERE id IN (SELECT item_id FROM meta WHERE tag = 'tag1') ORDER BY embedding <-> $1::vector LIMIT 5
-- hand-shadow:
SELECT id FROM ruvector_new.items WHERE id IN (SELECT item_id FROM meta WHERE tag = 'tag1') ORDER BY embedding <-> $1 LIMIT 5
