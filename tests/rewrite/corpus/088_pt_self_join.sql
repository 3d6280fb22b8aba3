-- reason: route-table-repeated
-- sql:
SELECT a.id FROM items a JOIN items b ON a.id = b.id ORDER BY a.embedding <-> b.embedding LIMIT 5
