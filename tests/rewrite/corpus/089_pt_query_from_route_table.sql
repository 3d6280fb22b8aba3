-- reason: route-table-repeated
-- sql:
SELECT id FROM items ORDER BY embedding <-> (SELECT embedding FROM items WHERE id = 1) LIMIT 5
