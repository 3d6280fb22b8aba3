-- pgcutover: objects shared by every route, in a schema of their own.
-- Idempotent: `install-triggers` runs this before each route. {{vs}} is the (quoted) schema of the vector
-- extension; every name below is schema-qualified so that no caller's search_path can change its meaning.

CREATE SCHEMA IF NOT EXISTS pgcutover;
-- Closed to PUBLIC (earlier versions granted USAGE to everyone): application roles reach nothing in here by
-- themselves. The triggers need no grant (a trigger's function runs without an EXECUTE check, and ours are
-- SECURITY DEFINER); roles that query through the proxy get what the fallback's queries call with
-- `install-triggers --grant-to ROLE` (see privileges.sql).
REVOKE ALL ON SCHEMA pgcutover FROM PUBLIC;

-- Rows whose legacy vector could not be converted (wrong dimensions, unparseable, NaN/Infinity).
CREATE TABLE IF NOT EXISTS pgcutover.bad_rows (
    table_name text NOT NULL,          -- schema.table
    key text NOT NULL,                 -- the row's key, as text
    reason text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, key)
);

-- Where the backfill is. A pass splits the table's keys into slots, contiguous key ranges (lo, hi] that
-- workers fill in parallel; each slot row is locked and advanced in the same transaction as each of its batches.
CREATE TABLE IF NOT EXISTS pgcutover.backfill_checkpoint (
    table_name text NOT NULL,          -- schema.table
    slot integer NOT NULL,
    pass integer NOT NULL,             -- a pass walks the keys once; a finished pass may be followed by another
    shadow boolean NOT NULL DEFAULT false,
    lo text,                           -- slot bounds as key text, NULL = unbounded
    hi text,
    last_key text,                     -- keys of the slot <= last_key are done in this pass
    rows_done bigint NOT NULL DEFAULT 0,
    rows_bad bigint NOT NULL DEFAULT 0,
    rows_copied bigint NOT NULL DEFAULT 0,
    rows_total bigint,                 -- estimate at the start of the pass, for the ETA
    rate double precision,             -- rows/s over the slot's most recent batches
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (table_name, slot)
);

-- What install-triggers put on which table, so that uninstall finds it even after the config changed.
CREATE TABLE IF NOT EXISTS pgcutover.installed (
    table_name text PRIMARY KEY,
    table_oid oid NOT NULL,
    function_base text NOT NULL,
    route jsonb NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);

-- Little-endian float32 bytea -> float8[] (exact: every float32 is a float8). Plain SQL has no bit cast from
-- integer to float, so each value is rebuilt from its bits: sign * (mantissa + 2^23) * 2^(exponent - 150),
-- or mantissa * 2^-149 for subnormals. reverse() turns the little-endian stream into big-endian words read
-- back to front, which PostgreSQL 18 casts bytea -> int4 directly; the PL/pgSQL variable detoasts the value
-- once (a plain SQL function would detoast it again for every substr). NaN/Infinity come out as values
-- beyond float4's range, which the cast to vector rejects.
CREATE OR REPLACE FUNCTION pgcutover.f32le_to_float8(b bytea) RETURNS double precision[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $pgcutover$
DECLARE
    r bytea := reverse(b);
    n integer := length(b);
BEGIN
    IF n = 0 OR n % 4 <> 0 THEN
        RAISE EXCEPTION 'bytea of % bytes is not a whole number of float32 values', n
            USING ERRCODE = 'invalid_binary_representation';
    END IF;
    RETURN (
        SELECT array_agg(CASE WHEN e = 0 THEN m * 1.401298464324817e-45::float8
                              ELSE (m + 8388608) * power(2::float8, e - 150) END * sg)
        FROM (SELECT (x >> 23) & 255 AS e, (x & 8388607)::float8 AS m,
                     CASE WHEN x < 0 THEN -1.0::float8 ELSE 1.0::float8 END AS sg
              FROM (SELECT substr(r, i, 4)::int4 AS x FROM generate_series(n - 3, 1, -4) AS i) AS words) AS parts
    );
END
$pgcutover$;

-- Little-endian float64 bytea -> float8[], the same way with 11 exponent and 52 mantissa bits.
CREATE OR REPLACE FUNCTION pgcutover.f64le_to_float8(b bytea) RETURNS double precision[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $pgcutover$
DECLARE
    r bytea := reverse(b);
    n integer := length(b);
BEGIN
    IF n = 0 OR n % 8 <> 0 THEN
        RAISE EXCEPTION 'bytea of % bytes is not a whole number of float64 values', n
            USING ERRCODE = 'invalid_binary_representation';
    END IF;
    RETURN (
        SELECT array_agg(CASE WHEN e = 0 THEN m * 4.9406564584124654e-324::float8
                              ELSE (m + 4503599627370496::float8) * power(2::float8, e - 1075) END * sg)
        FROM (SELECT (x >> 52) & 2047 AS e, (x & 4503599627370495)::float8 AS m,
                     CASE WHEN x < 0 THEN -1.0::float8 ELSE 1.0::float8 END AS sg
              FROM (SELECT substr(r, i, 8)::int8 AS x FROM generate_series(n - 7, 1, -8) AS i) AS words) AS parts
    );
END
$pgcutover$;

-- Legacy value -> vector for any legacy_format; raises a clear error for a bad value.
CREATE OR REPLACE FUNCTION pgcutover.to_vector(legacy anyelement, format text, dims integer)
RETURNS {{vs}}.vector
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $pgcutover$
DECLARE
    v {{vs}}.vector;
BEGIN
    IF legacy IS NULL THEN
        RETURN NULL;
    END IF;
    CASE format
        WHEN 'json' THEN v := legacy::text::{{vs}}.vector;
        WHEN 'bytea_f32' THEN v := pgcutover.f32le_to_float8(legacy::bytea)::{{vs}}.vector;
        WHEN 'bytea_f64' THEN v := pgcutover.f64le_to_float8(legacy::bytea)::{{vs}}.vector;
        WHEN 'array' THEN v := legacy::float8[]::{{vs}}.vector;
        ELSE RAISE EXCEPTION 'unknown legacy_format %', format USING ERRCODE = 'invalid_parameter_value';
    END CASE;
    IF {{vs}}.vector_dims(v) <> dims THEN
        RAISE EXCEPTION 'expected % dimensions, not %', dims, {{vs}}.vector_dims(v) USING ERRCODE = 'data_exception';
    END IF;
    RETURN v;
END
$pgcutover$;

-- The same, but NULL for a bad value (used where one bad row must not fail a whole statement).
CREATE OR REPLACE FUNCTION pgcutover.try_vector(legacy anyelement, format text, dims integer)
RETURNS {{vs}}.vector
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $pgcutover$
BEGIN
    RETURN pgcutover.to_vector(legacy, format, dims);
-- data_exception names the whole SQLSTATE class 22 (bad text, NaN, wrong dimensions, out of range, nulls).
EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
    RETURN NULL;
END
$pgcutover$;

-- Why a legacy value is bad (NULL when it is fine): the reason recorded in bad_rows.
CREATE OR REPLACE FUNCTION pgcutover.vector_error(legacy anyelement, format text, dims integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $pgcutover$
BEGIN
    PERFORM pgcutover.to_vector(legacy, format, dims);
    RETURN NULL;
EXCEPTION WHEN others THEN
    RETURN SQLERRM;
END
$pgcutover$;

-- Called by the dual-write triggers (SECURITY DEFINER, as the installer); EXECUTE is revoked from PUBLIC, so
-- applications cannot forge rows here. Itself SECURITY DEFINER so that a trigger owned by another installer
-- than the schema's still records.
CREATE OR REPLACE FUNCTION pgcutover.record_bad_row(table_name text, key text, reason text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgcutover$
    INSERT INTO pgcutover.bad_rows AS b (table_name, key, reason, seen_at)
    VALUES (table_name, key, reason, now())
    ON CONFLICT (table_name, key) DO UPDATE SET reason = EXCLUDED.reason, seen_at = EXCLUDED.seen_at;
$pgcutover$;

-- The channel the change notices go to: `[proxy] notify_channel` of the config install-triggers ran with.
CREATE OR REPLACE FUNCTION pgcutover.notify_channel() RETURNS text
LANGUAGE sql IMMUTABLE AS $pgcutover$ SELECT {{channel}}::text $pgcutover$;

-- Change notices for the fallback store: {"table": ..., "kind": ..., "keys": [...]} on notify_channel().
-- NOTIFY payloads must stay under 8000 bytes: a longer key list is cut into several notices by cumulative
-- length; a statement touching so many keys that it would need more than max_chunks notices sends one
-- {"table": ..., "kind": "resync"} instead, telling the consumer to reload.
CREATE OR REPLACE FUNCTION pgcutover.notify_keys(table_name text, kind text, keys jsonb) RETURNS void
LANGUAGE plpgsql AS $pgcutover$
DECLARE
    budget constant integer := 7900;
    max_chunks constant integer := 256;
    payload text;
    envelope integer;
    longest integer;
    room integer;
BEGIN
    IF keys IS NULL OR jsonb_array_length(keys) = 0 THEN
        RETURN;
    END IF;
    payload := json_build_object('table', table_name, 'kind', kind, 'keys', keys)::text;
    IF octet_length(payload) <= budget THEN
        PERFORM pg_notify(pgcutover.notify_channel(), payload);
        RETURN;
    END IF;
    envelope := octet_length(json_build_object('table', table_name, 'kind', kind, 'keys', '[]'::jsonb)::text);
    SELECT max(octet_length(value::text)) + 2 INTO longest FROM jsonb_array_elements(keys);
    room := budget - envelope - longest;
    IF room < longest OR octet_length(payload) > budget * max_chunks THEN
        PERFORM pg_notify(pgcutover.notify_channel(), json_build_object('table', table_name, 'kind', 'resync')::text);
        RETURN;
    END IF;
    -- A key goes to chunk floor(cumulative length / room): a chunk holds at most room + longest bytes of keys.
    FOR payload IN
        SELECT json_build_object('table', table_name, 'kind', kind, 'keys', json_agg(value ORDER BY ord))::text
        FROM (SELECT value, ord, sum(octet_length(value::text) + 2) OVER (ORDER BY ord) / room AS chunk
              FROM jsonb_array_elements(keys) WITH ORDINALITY AS e(value, ord)) AS numbered
        GROUP BY chunk
        ORDER BY chunk
    LOOP
        PERFORM pg_notify(pgcutover.notify_channel(), payload);
    END LOOP;
END
$pgcutover$;
