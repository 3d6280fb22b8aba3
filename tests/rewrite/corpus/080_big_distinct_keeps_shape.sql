-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT DISTINCT id, embedding <=> $1 AS d FROM big ORDER BY embedding <=> $1 LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT DISTINCT id, embedding <=> $1::vector AS d FROM ruvector_new.big ORDER BY embedding <=> $1::vector LIMIT 5
-- hand-shadow:
SELECT DISTINCT id, embedding <=> $1 AS d FROM ruvector_new.big ORDER BY embedding <=> $1 LIMIT 5
