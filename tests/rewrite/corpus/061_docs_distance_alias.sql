-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]", 4]
-- sql:
SELECT d.id, d.embedding <-> $1 AS dist FROM docs d ORDER BY dist LIMIT $2
-- primary:
SELECT d.id, d.embedding_vector <-> $1 AS dist FROM docs AS d WHERE embedding_vector IS NOT NULL ORDER BY dist LIMIT $2
-- shadow:
SELECT d.id, d.emb <-> $1::vector AS dist FROM ruvector_new.docs AS d ORDER BY dist LIMIT $2
-- hand-primary:
SELECT d.id, d.embedding_vector <-> $1 AS dist FROM docs d WHERE d.embedding_vector IS NOT NULL ORDER BY dist LIMIT $2
-- hand-shadow:
SELECT d.id, d.emb <-> $1 AS dist FROM ruvector_new.docs d ORDER BY dist LIMIT $2
