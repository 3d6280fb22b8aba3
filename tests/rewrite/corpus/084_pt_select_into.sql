-- reason: select-into
-- sql:
SELECT id INTO TEMP nearest FROM items ORDER BY embedding <-> $1 LIMIT 1
