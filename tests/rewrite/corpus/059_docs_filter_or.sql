-- reason: similarity
-- params: ["[0.5,0.5,0.5,0.5,-0.5,-0.5,-0.5,-0.5]"]
-- sql:
SELECT id FROM docs WHERE category = 'tech' OR category = 'art' ORDER BY embedding <=> $1 LIMIT 6
-- primary:
SELECT id FROM docs WHERE (category = 'tech' OR category = 'art') AND embedding_vector IS NOT NULL ORDER BY embedding_vector <=> $1 LIMIT 6
-- shadow:
SELECT id FROM ruvector_new.docs WHERE category = 'tech' OR category = 'art' ORDER BY emb <=> $1::vector LIMIT 6
-- hand-primary:
SELECT id FROM docs WHERE (category = 'tech' OR category = 'art') AND embedding_vector IS NOT NULL ORDER BY embedding_vector <=> $1 LIMIT 6
-- hand-shadow:
SELECT id FROM ruvector_new.docs WHERE category = 'tech' OR category = 'art' ORDER BY emb <=> $1 LIMIT 6
