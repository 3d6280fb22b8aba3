-- reason: similarity-asc
-- sql:
SELECT id FROM items ORDER BY inner_product(embedding, $1) LIMIT 5
