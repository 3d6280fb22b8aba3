-- reason: distance-shape
-- sql:
SELECT id FROM items ORDER BY embedding::halfvec(8) <=> $1::halfvec(8) LIMIT 3
