-- reason: star-join-using
-- sql:
SELECT * FROM items JOIN meta USING (id) ORDER BY items.embedding <-> $1 LIMIT 3
