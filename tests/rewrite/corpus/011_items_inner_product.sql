-- reason: similarity
-- params: ["[0.5,0.5,0.5,0.5,-0.5,-0.5,-0.5,-0.5]"]
-- sql:
SELECT id FROM items ORDER BY embedding <#> $1 LIMIT 8
-- primary:
ORIGINAL
-- shadow:
SELECT id FROM ruvector_new.items ORDER BY embedding <#> $1::vector LIMIT 8
-- hand-shadow:
SELECT id FROM ruvector_new.items ORDER BY embedding <#> $1 LIMIT 8
