-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT id FROM docs WHERE embedding <-> $1 < 1.3 ORDER BY id
-- primary:
SELECT id FROM docs WHERE embedding_vector <-> $1 < 1.3 AND embedding_vector IS NOT NULL ORDER BY id
-- shadow:
SELECT id FROM ruvector_new.docs WHERE emb <-> $1::vector < 1.3 ORDER BY id
-- hand-primary:
SELECT id FROM docs WHERE embedding_vector <-> $1 < 1.3 ORDER BY id
-- hand-shadow:
SELECT id FROM ruvector_new.docs WHERE emb <-> $1 < 1.3 ORDER BY id
