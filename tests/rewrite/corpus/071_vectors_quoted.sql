-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT "Id", "Label" FROM app."Vectors" ORDER BY "Emb" <-> $1 LIMIT 5
-- primary:
ORIGINAL
-- shadow:
SELECT "Id", "Label" FROM shadow2.vectors_v2 AS "Vectors" ORDER BY emb <-> $1::vector LIMIT 5
-- hand-shadow:
SELECT "Id", "Label" FROM shadow2.vectors_v2 ORDER BY emb <-> $1 LIMIT 5
