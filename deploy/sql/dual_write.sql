-- Dual write: a BEFORE ROW trigger that sets {{vec}} from {{legacy}} whenever the legacy value is written,
-- NULL included (a legacy value set to NULL clears the vector).
-- Sections are rendered by deploy/triggers.py with quoted identifiers only.
-- SECURITY DEFINER (as the installer, who owns the table): the writer needs no grant in schema pgcutover for
-- the decoders and record_bad_row, and applications cannot call those themselves.

-- @section function
CREATE OR REPLACE FUNCTION {{fn}}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgcutover$
DECLARE
    converted {{vector_type}};
BEGIN
{{guard}}    -- UPDATE OF fires whenever the column is in the SET list; only a changed value is re-converted, so an
    -- UPDATE that sets both columns to values of its own keeps its vector.
    IF TG_OP = 'UPDATE' AND {{legacy_new}} IS NOT DISTINCT FROM {{legacy_old}} THEN
        RETURN NEW;
    END IF;
    IF NEW.{{legacy}} IS NULL THEN
        -- The legacy value was cleared: the vector derived from it goes too, or the row would still be found by
        -- similarity. Only a vector the same statement wrote itself is kept (an INSERT or UPDATE by a writer
        -- that sets the vector column directly); `status` lists such rows as disagreeing with their legacy value.
        -- (pgvector's = by its schema: the search_path here is pg_catalog only)
        IF TG_OP = 'UPDATE' AND NEW.{{vec}} OPERATOR({{vs}}.=) OLD.{{vec}} THEN
            NEW.{{vec}} := NULL;
        END IF;
        RETURN NEW;
    END IF;
    BEGIN
        converted := {{conversion}};
    EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
{{on_bad}}
    END;
    NEW.{{vec}} := converted;
    RETURN NEW;
END
$pgcutover$;

-- @section on_bad_error
        RAISE EXCEPTION 'pgcutover: bad legacy vector in %.% for key %: %',
                        {{display_lit}}, {{legacy_lit}}, NEW.{{key}}, SQLERRM
            USING ERRCODE = SQLSTATE,
                  HINT = 'fix the value, or set on_bad_vector = "skip" to store NULL and record the key in '
                         'pgcutover.bad_rows';

-- @section on_bad_skip
        converted := NULL;
        PERFORM pgcutover.record_bad_row({{display_lit}}, NEW.{{key}}::text, SQLERRM);

-- @section trigger
CREATE TRIGGER pgcutover_dual_write
    BEFORE INSERT OR UPDATE OF {{legacy}} ON {{table}}
    FOR EACH ROW EXECUTE FUNCTION {{fn}}();
