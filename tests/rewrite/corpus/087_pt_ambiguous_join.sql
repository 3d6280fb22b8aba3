-- reason: ambiguous-column
-- sql:
SELECT id FROM items JOIN meta ON meta.item_id = items.id ORDER BY embedding <-> $1 LIMIT 5
