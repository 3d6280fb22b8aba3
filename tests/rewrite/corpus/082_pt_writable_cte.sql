-- reason: writes
-- sql:
WITH gone AS (DELETE FROM meta RETURNING item_id) SELECT id FROM items ORDER BY embedding <-> $1
