-- reason: outer-join
-- sql:
SELECT m.tag, i.id FROM meta m LEFT JOIN items i ON i.id = m.item_id ORDER BY i.embedding <-> $1 LIMIT 5
