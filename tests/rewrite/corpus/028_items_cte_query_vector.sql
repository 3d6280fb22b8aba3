-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
WITH q AS (SELECT $1::vector AS v) SELECT i.id FROM items i, q ORDER BY i.embedding <-> q.v LIMIT 5
-- primary:
ORIGINAL
-- shadow:
WITH q AS (SELECT $1::vector AS v) SELECT i.id FROM ruvector_new.items AS i, q ORDER BY i.embedding <-> q.v::vector LIMIT 5
-- hand-shadow:
WITH q AS (SELECT $1::vector AS v) SELECT i.id FROM ruvector_new.items i, q ORDER BY i.embedding <-> q.v LIMIT 5
