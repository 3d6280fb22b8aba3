-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT * FROM items JOIN meta ON meta.item_id = items.id ORDER BY items.embedding <-> $1 LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT items.id, items.content, items.category, items.price, items.embedding, meta.* FROM ruvector_new.items JOIN meta ON meta.item_id = items.id ORDER BY items.embedding <-> $1::vector LIMIT 5
-- hand-shadow:
SELECT * FROM ruvector_new.items JOIN meta ON meta.item_id = items.id ORDER BY items.embedding <-> $1 LIMIT 5
