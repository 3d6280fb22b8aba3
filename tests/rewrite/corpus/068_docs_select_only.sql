-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT id, embedding <-> $1 AS d FROM docs WHERE id < 6 ORDER BY id
-- primary:
SELECT id, embedding_vector <-> $1 AS d FROM docs WHERE id < 6 ORDER BY id
-- shadow:
SELECT id, emb <-> $1::vector AS d FROM ruvector_new.docs WHERE id < 6 ORDER BY id
-- hand-primary:
SELECT id, embedding_vector <-> $1 AS d FROM docs WHERE id < 6 ORDER BY id
-- hand-shadow:
SELECT id, emb <-> $1 AS d FROM ruvector_new.docs WHERE id < 6 ORDER BY id
