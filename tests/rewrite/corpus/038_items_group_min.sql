-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT category, min(embedding <-> $1) AS best FROM items GROUP BY category ORDER BY 2
-- primary:
ORIGINAL
-- shadow:
SELECT category, MIN(embedding <-> $1::vector) AS best FROM ruvector_new.items GROUP BY category ORDER BY 2
-- hand-shadow:
SELECT category, min(embedding <-> $1) AS best FROM ruvector_new.items GROUP BY category ORDER BY 2
