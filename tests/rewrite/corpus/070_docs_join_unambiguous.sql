-- reason: similarity
-- sql:
SELECT d.id, q.id AS qid FROM docs d CROSS JOIN queries q WHERE q.id = 1 ORDER BY d.embedding <-> q.v LIMIT 5
-- primary:
SELECT d.id, q.id AS qid FROM docs AS d CROSS JOIN queries AS q WHERE q.id = 1 AND d.embedding_vector IS NOT NULL ORDER BY d.embedding_vector <-> q.v LIMIT 5
-- shadow:
SELECT d.id, q.id AS qid FROM ruvector_new.docs AS d CROSS JOIN queries AS q WHERE q.id = 1 ORDER BY d.emb <-> q.v::vector LIMIT 5
-- hand-primary:
SELECT d.id, q.id AS qid FROM docs d CROSS JOIN queries q WHERE q.id = 1 AND d.embedding_vector IS NOT NULL ORDER BY d.embedding_vector <-> q.v LIMIT 5
-- hand-shadow:
SELECT d.id, q.id AS qid FROM ruvector_new.docs d CROSS JOIN queries q WHERE q.id = 1 ORDER BY d.emb <-> q.v LIMIT 5
