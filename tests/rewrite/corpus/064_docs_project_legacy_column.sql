-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT id, embedding FROM docs ORDER BY embedding <-> $1 LIMIT 3
-- primary:
SELECT id, embedding FROM docs WHERE embedding_vector IS NOT NULL ORDER BY embedding_vector <-> $1 LIMIT 3
-- shadow:
SELECT id, embedding FROM ruvector_new.docs ORDER BY emb <-> $1::vector LIMIT 3
-- hand-primary:
SELECT id, embedding FROM docs WHERE embedding_vector IS NOT NULL ORDER BY embedding_vector <-> $1 LIMIT 3
-- hand-shadow:
SELECT id, embedding FROM ruvector_new.docs ORDER BY emb <-> $1 LIMIT 3
