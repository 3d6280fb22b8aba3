-- reason: similarity
-- params: ["[0.5,0.5,0.5,0.5,-0.5,-0.5,-0.5,-0.5]"]
-- sql:
SELECT id FROM docs ORDER BY cosine_distance(embedding, $1) LIMIT 5
-- primary:
SELECT id FROM docs WHERE embedding_vector IS NOT NULL ORDER BY cosine_distance(embedding_vector, $1) LIMIT 5
-- shadow:
SELECT id FROM ruvector_new.docs ORDER BY cosine_distance(emb, $1::vector) LIMIT 5
-- hand-primary:
SELECT id FROM docs WHERE embedding_vector IS NOT NULL ORDER BY cosine_distance(embedding_vector, $1) LIMIT 5
-- hand-shadow:
SELECT id FROM ruvector_new.docs ORDER BY cosine_distance(emb, $1) LIMIT 5
