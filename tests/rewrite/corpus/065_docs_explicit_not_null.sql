-- reason: similarity
-- params: ["[0.5,0.5,0.5,0.5,-0.5,-0.5,-0.5,-0.5]"]
-- sql:
SELECT id FROM docs WHERE embedding_vector IS NOT NULL ORDER BY embedding <-> $1 LIMIT 4
-- primary:
SELECT id FROM docs WHERE embedding_vector IS NOT NULL ORDER BY embedding_vector <-> $1 LIMIT 4
-- shadow:
SELECT id FROM ruvector_new.docs WHERE emb IS NOT NULL ORDER BY emb <-> $1::vector LIMIT 4
-- hand-primary:
SELECT id FROM docs WHERE embedding_vector IS NOT NULL ORDER BY embedding_vector <-> $1 LIMIT 4
-- hand-shadow:
SELECT id FROM ruvector_new.docs WHERE emb IS NOT NULL ORDER BY emb <-> $1 LIMIT 4
