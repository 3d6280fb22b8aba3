-- reason: ambiguous-column
-- sql:
SELECT d.id FROM docs d WHERE EXISTS (SELECT 1 FROM meta m WHERE m.item_id = d.id AND embedding_vector IS NOT NULL) ORDER BY d.embedding <-> $1 LIMIT 5
