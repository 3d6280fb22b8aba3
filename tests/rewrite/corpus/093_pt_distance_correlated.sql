-- reason: distance-position
-- sql:
SELECT i.id FROM items i WHERE EXISTS (SELECT 1 FROM queries q WHERE i.embedding <-> q.v < 0.5)
