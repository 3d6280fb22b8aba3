-- reason: multi-statement
-- sql:
SELECT id FROM items ORDER BY embedding <-> '[1,2,3,4,5,6,7,8]' LIMIT 1; SELECT 1
