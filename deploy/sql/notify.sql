-- Change notices for the fallback store, batched per statement from the transition tables.
-- A row is legacy-only when {{vec}} IS NULL AND {{legacy}} IS NOT NULL: those are the rows the store holds.
--   upsert:   a legacy-only row inserted, its legacy value changed, or a row that became legacy-only
--   migrated: a legacy-only row whose vector became non-NULL
--   delete:   a legacy-only row deleted, its legacy value set to NULL, or its key changed (the new key
--             is then an upsert)
--   resync:   TRUNCATE, or a statement too large to list (see pgcutover.notify_keys)
-- SECURITY DEFINER: pgcutover.notify_keys is not executable by applications.

-- @section insert
CREATE OR REPLACE FUNCTION {{fn}}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgcutover$
BEGIN
{{guard}}    PERFORM pgcutover.notify_keys({{display_lit}}, 'upsert',
        (SELECT jsonb_agg(n.{{key}}) FROM pgcutover_new AS n WHERE n.{{vec}} IS NULL AND n.{{legacy}} IS NOT NULL));
    RETURN NULL;
END
$pgcutover$;

-- @section update
CREATE OR REPLACE FUNCTION {{fn}}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgcutover$
BEGIN
{{guard}}    PERFORM pgcutover.notify_keys({{display_lit}}, 'delete',
        (SELECT jsonb_agg(o.{{key}}) FROM pgcutover_old AS o
         WHERE o.{{vec}} IS NULL AND o.{{legacy}} IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM pgcutover_new AS n WHERE n.{{key}} = o.{{key}}
                           AND (n.{{vec}} IS NOT NULL OR n.{{legacy}} IS NOT NULL))));
    PERFORM pgcutover.notify_keys({{display_lit}}, 'migrated',
        (SELECT jsonb_agg(n.{{key}}) FROM pgcutover_new AS n JOIN pgcutover_old AS o ON o.{{key}} = n.{{key}}
         WHERE n.{{vec}} IS NOT NULL AND o.{{vec}} IS NULL AND o.{{legacy}} IS NOT NULL));
    PERFORM pgcutover.notify_keys({{display_lit}}, 'upsert',
        (SELECT jsonb_agg(n.{{key}}) FROM pgcutover_new AS n LEFT JOIN pgcutover_old AS o ON o.{{key}} = n.{{key}}
         WHERE n.{{vec}} IS NULL AND n.{{legacy}} IS NOT NULL
           AND (o.{{key}} IS NULL OR o.{{vec}} IS NOT NULL OR o.{{legacy}} IS NULL
                OR {{legacy_old}} IS DISTINCT FROM {{legacy_new}})));
    RETURN NULL;
END
$pgcutover$;

-- @section delete
CREATE OR REPLACE FUNCTION {{fn}}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgcutover$
BEGIN
{{guard}}    PERFORM pgcutover.notify_keys({{display_lit}}, 'delete',
        (SELECT jsonb_agg(o.{{key}}) FROM pgcutover_old AS o WHERE o.{{vec}} IS NULL AND o.{{legacy}} IS NOT NULL));
    RETURN NULL;
END
$pgcutover$;

-- @section truncate
CREATE OR REPLACE FUNCTION {{fn}}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgcutover$
BEGIN
{{guard}}    PERFORM pg_notify(pgcutover.notify_channel(), json_build_object('table', {{display_lit}}, 'kind', 'resync')::text);
    RETURN NULL;
END
$pgcutover$;

-- @section triggers
CREATE TRIGGER pgcutover_notify_insert AFTER INSERT ON {{table}}
    REFERENCING NEW TABLE AS pgcutover_new
    FOR EACH STATEMENT EXECUTE FUNCTION {{fn_insert}}();
CREATE TRIGGER pgcutover_notify_update AFTER UPDATE ON {{table}}
    REFERENCING OLD TABLE AS pgcutover_old NEW TABLE AS pgcutover_new
    FOR EACH STATEMENT EXECUTE FUNCTION {{fn_update}}();
CREATE TRIGGER pgcutover_notify_delete AFTER DELETE ON {{table}}
    REFERENCING OLD TABLE AS pgcutover_old
    FOR EACH STATEMENT EXECUTE FUNCTION {{fn_delete}}();
CREATE TRIGGER pgcutover_notify_truncate AFTER TRUNCATE ON {{table}}
    FOR EACH STATEMENT EXECUTE FUNCTION {{fn_truncate}}();
