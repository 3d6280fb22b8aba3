-- reason: distance-position
-- sql:
SELECT i.id FROM items i JOIN queries q ON i.embedding <-> q.v < 0.5
