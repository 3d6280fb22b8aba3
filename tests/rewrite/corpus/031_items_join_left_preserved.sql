-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT i.id, m.tag FROM items i LEFT JOIN meta m ON m.item_id = i.id ORDER BY i.embedding <-> $1, m.tag LIMIT 6
-- primary:
ORIGINAL
-- shadow:
SELECT i.id, m.tag FROM ruvector_new.items AS i LEFT JOIN meta AS m ON m.item_id = i.id ORDER BY i.embedding <-> $1::vector, m.tag LIMIT 6
-- hand-shadow:
SELECT i.id, m.tag FROM ruvector_new.items i LEFT JOIN meta m ON m.item_id = i.id ORDER BY i.embedding <-> $1, m.tag LIMIT 6
