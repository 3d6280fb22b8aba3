-- reason: similarity
-- params: ["[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]"]
-- sql:
SELECT v."Id", v."Emb" FROM app."Vectors" v ORDER BY v."Emb" <=> $1 LIMIT 3
-- primary:
ORIGINAL
-- shadow:
SELECT v."Id", v.emb AS "Emb" FROM shadow2.vectors_v2 AS v ORDER BY v.emb <=> $1::vector LIMIT 3
-- hand-shadow:
SELECT v."Id", v.emb AS "Emb" FROM shadow2.vectors_v2 v ORDER BY v.emb <=> $1 LIMIT 3
