-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT i.id FROM items i WHERE EXISTS (SELECT 1 FROM meta m WHERE m.item_id = id AND tag <> 'tag3') ORDER BY i.embedding <-> $1 LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT i.id FROM ruvector_new.items AS i WHERE EXISTS(SELECT 1 FROM meta AS m WHERE m.item_id = id AND tag <> 'tag3') ORDER BY i.embedding <-> $1::vector LIMIT 5
-- hand-shadow:
SELECT i.id FROM ruvector_new.items i WHERE EXISTS (SELECT 1 FROM meta m WHERE m.item_id = i.id AND m.tag <> 'tag3') ORDER BY i.embedding <-> $1 LIMIT 5
