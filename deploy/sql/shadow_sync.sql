-- Shadow sync: statement-level AFTER triggers with transition tables copy every change of {{table}} to
-- {{shadow}} inside the writer's transaction (a rollback takes the copy with it). Each shadow key is only
-- written by a transaction that holds the source row (or its unique-index entry), so concurrent writers
-- reach the shadow in the same order as the table; ON CONFLICT makes each write an idempotent upsert.
-- SECURITY DEFINER: application users need no privileges on the shadow.

-- @section insert
CREATE OR REPLACE FUNCTION {{fn}}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgcutover$
BEGIN
{{guard}}    INSERT INTO {{shadow}} AS s ({{columns}}){{overriding}}
    SELECT {{values}} FROM pgcutover_new AS n
    ON CONFLICT ({{shadow_key}}) DO UPDATE SET {{assignments}};
    RETURN NULL;
END
$pgcutover$;

-- @section update
CREATE OR REPLACE FUNCTION {{fn}}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgcutover$
BEGIN
{{guard}}    -- A key changed: the old key leaves the shadow (a swap of keys within one statement deletes nothing).
    DELETE FROM {{shadow}} AS s USING pgcutover_old AS o
    WHERE s.{{shadow_key}} = o.{{key}}
      AND NOT EXISTS (SELECT 1 FROM pgcutover_new AS n WHERE n.{{key}} = o.{{key}});
    INSERT INTO {{shadow}} AS s ({{columns}}){{overriding}}
    SELECT {{values}} FROM pgcutover_new AS n
    ON CONFLICT ({{shadow_key}}) DO UPDATE SET {{assignments}};
    RETURN NULL;
END
$pgcutover$;

-- @section delete
CREATE OR REPLACE FUNCTION {{fn}}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgcutover$
BEGIN
{{guard}}    DELETE FROM {{shadow}} AS s USING pgcutover_old AS o WHERE s.{{shadow_key}} = o.{{key}};
    RETURN NULL;
END
$pgcutover$;

-- @section truncate
CREATE OR REPLACE FUNCTION {{fn}}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgcutover$
BEGIN
{{guard}}    DELETE FROM {{shadow}};
    RETURN NULL;
END
$pgcutover$;

-- @section triggers
CREATE TRIGGER pgcutover_shadow_insert AFTER INSERT ON {{table}}
    REFERENCING NEW TABLE AS pgcutover_new
    FOR EACH STATEMENT EXECUTE FUNCTION {{fn_insert}}();
CREATE TRIGGER pgcutover_shadow_update AFTER UPDATE ON {{table}}
    REFERENCING OLD TABLE AS pgcutover_old NEW TABLE AS pgcutover_new
    FOR EACH STATEMENT EXECUTE FUNCTION {{fn_update}}();
CREATE TRIGGER pgcutover_shadow_delete AFTER DELETE ON {{table}}
    REFERENCING OLD TABLE AS pgcutover_old
    FOR EACH STATEMENT EXECUTE FUNCTION {{fn_delete}}();
CREATE TRIGGER pgcutover_shadow_truncate AFTER TRUNCATE ON {{table}}
    FOR EACH STATEMENT EXECUTE FUNCTION {{fn_truncate}}();
