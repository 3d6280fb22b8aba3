-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT id FROM docs ORDER BY embedding::vector <-> $1::vector LIMIT 5
-- primary:
SELECT id FROM docs WHERE embedding_vector IS NOT NULL ORDER BY embedding_vector <-> $1::vector LIMIT 5
-- shadow:
SELECT id FROM ruvector_new.docs ORDER BY emb <-> $1::vector LIMIT 5
-- hand-primary:
SELECT id FROM docs WHERE embedding_vector IS NOT NULL ORDER BY embedding_vector <-> $1 LIMIT 5
-- hand-shadow:
SELECT id FROM ruvector_new.docs ORDER BY emb <-> $1 LIMIT 5
