-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT id FROM big ORDER BY embedding <=> $1 LIMIT 5
-- primary:
SELECT id FROM big ORDER BY (embedding::halfvec(8)) <=> $1::vector::halfvec(8) LIMIT 5
-- shadow:
SELECT id FROM ruvector_new.big ORDER BY embedding <=> $1::vector LIMIT 5
-- hand-primary:
SELECT id FROM big ORDER BY (embedding::halfvec(8)) <=> $1::halfvec(8) LIMIT 5
-- hand-shadow:
SELECT id FROM ruvector_new.big ORDER BY embedding <=> $1 LIMIT 5
