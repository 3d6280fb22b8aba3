-- reason: no-distance
-- sql:
SELECT id FROM items WHERE embedding IS NOT NULL AND content <> '<->'
