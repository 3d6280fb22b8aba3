-- Privileges on schema pgcutover: run after every install (schema and routes) in the same transaction, so no
-- other session ever sees one of our functions with PostgreSQL's default EXECUTE for PUBLIC.
-- Nothing in the schema is open to PUBLIC: not the SECURITY DEFINER trigger functions (attaching them to a
-- table of one's own needs EXECUTE), not record_bad_row or notify_keys, not the tables. A REVOKE on an object
-- another role owns is only a warning, never an error.

-- @section lockdown
REVOKE ALL ON SCHEMA pgcutover FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgcutover FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA pgcutover FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA pgcutover FROM PUBLIC;

-- @section query_role
-- What a role that queries through the proxy needs: the fallback's merged queries for bytea legacy formats
-- call pgcutover.try_vector (and through it the pure, side-effect-free decoders) as the client's own role.
GRANT USAGE ON SCHEMA pgcutover TO {{role}};
GRANT EXECUTE ON FUNCTION
    pgcutover.try_vector(anyelement, text, integer),
    pgcutover.to_vector(anyelement, text, integer),
    pgcutover.f32le_to_float8(bytea),
    pgcutover.f64le_to_float8(bytea)
TO {{role}};

-- @section guard
    -- Made for one table: refuse to run for any other (defence in depth behind the revoked EXECUTE). The table
    -- is recognised by its OID, or by its schema and name (the same table after a dump and restore gets a new
    -- OID; a rename keeps it): no other table can share either while this one exists. Row triggers of a
    -- partitioned table fire for its partitions (only the table's owner can attach one).
    -- (Two IFs: the outer test is a simple expression, evaluated without the executor on every row.)
    IF TG_RELID <> {{table_oid}}::oid THEN
        IF NOT (TG_TABLE_SCHEMA = {{schema_lit}} AND TG_TABLE_NAME = {{name_lit}})
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_partition_ancestors(TG_RELID) AS a
                           JOIN pg_catalog.pg_class AS c ON c.oid = a.relid
                           JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                           WHERE a.relid = {{table_oid}}::oid
                              OR (n.nspname = {{schema_lit}} AND c.relname = {{name_lit}})) THEN
            RAISE EXCEPTION 'pgcutover: this trigger function belongs to %, not to %.%',
                            {{display_lit}}, TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
