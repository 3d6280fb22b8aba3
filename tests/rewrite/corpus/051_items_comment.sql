-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
/* app=search */ SELECT id FROM items -- nearest
ORDER BY embedding <-> $1 LIMIT 5
-- primary:
ORIGINAL
-- shadow:
/* app=search */ SELECT id FROM ruvector_new.items /* nearest */ ORDER BY embedding <-> $1::vector LIMIT 5
-- hand-shadow:
SELECT id FROM ruvector_new.items ORDER BY embedding <-> $1 LIMIT 5
