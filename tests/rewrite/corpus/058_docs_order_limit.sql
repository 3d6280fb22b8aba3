-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT id, title FROM docs ORDER BY embedding <-> $1 LIMIT 10
-- primary:
SELECT id, title FROM docs WHERE embedding_vector IS NOT NULL ORDER BY embedding_vector <-> $1 LIMIT 10
-- shadow:
SELECT id, title FROM ruvector_new.docs ORDER BY emb <-> $1::vector LIMIT 10
-- hand-primary:
SELECT id, title FROM docs WHERE embedding_vector IS NOT NULL ORDER BY embedding_vector <-> $1 LIMIT 10
-- hand-shadow:
SELECT id, title FROM ruvector_new.docs ORDER BY emb <-> $1 LIMIT 10
