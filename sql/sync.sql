-- Process models from files: SpiffWorkflow keeps each model's metadata_extraction_paths in
-- <spec dir>/<id>/process_model.json; the command backfill-sync-models (sync-models/) reads
-- them and calls this function, which makes backfill.process_model say the same.

-- Inserts new models and updates changed ones, as the calling role: an update of the paths
-- fires the model table's trigger and queues a job exactly as a hand-written UPDATE does. A
-- bad element rejects that model only (each model is written in a subtransaction of its own,
-- and any error of its data is caught there).
-- Models missing from the input are left alone: a sync of part of a spec directory removes
-- nothing.
CREATE FUNCTION sync_process_models(models jsonb)
RETURNS TABLE (id text, action text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    model jsonb;
    position bigint;
    new_name text;
    new_paths jsonb;
    old_name text;
    old_paths jsonb;
BEGIN
    IF models IS NULL THEN
        RAISE EXCEPTION 'backfill.sync_process_models: models must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF jsonb_typeof(models) <> 'array' THEN
        RAISE EXCEPTION 'backfill.sync_process_models: models must be a JSON array, not %', jsonb_typeof(models)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass [{"id": ..., "display_name": ..., "metadata_extraction_paths": [...]}, ...].';
    END IF;
    FOR model, position IN SELECT m.value, m.ordinality FROM jsonb_array_elements(models) WITH ORDINALITY m
    LOOP
        id := CASE WHEN jsonb_typeof(model) = 'object' AND jsonb_typeof(model -> 'id') = 'string'
                   THEN model ->> 'id' END;
        IF id IS NULL OR id = '' THEN
            action := format('rejected: element %s has no "id" string', position);
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF jsonb_typeof(model -> 'display_name') NOT IN ('string', 'null') THEN
            action := 'rejected: "display_name" is not a string';
            RETURN NEXT;
            CONTINUE;
        END IF;
        new_name := model ->> 'display_name';
        new_paths := coalesce(nullif(model -> 'metadata_extraction_paths', 'null'), '[]');
        BEGIN
            INSERT INTO @extschema@.process_model AS p (id, display_name, metadata_extraction_paths)
            VALUES (id, new_name, new_paths)
            ON CONFLICT (id) DO NOTHING;
            IF FOUND THEN
                action := 'inserted';
            ELSE
                SELECT p.display_name, p.metadata_extraction_paths INTO old_name, old_paths
                  FROM @extschema@.process_model p
                 WHERE p.id = sync_process_models.id
                   FOR NO KEY UPDATE;
                IF old_name IS NOT DISTINCT FROM new_name AND old_paths = new_paths THEN
                    action := 'unchanged';
                ELSE
                    UPDATE @extschema@.process_model p
                       SET display_name = new_name, metadata_extraction_paths = new_paths
                     WHERE p.id = sync_process_models.id;
                    action := 'updated';
                END IF;
            END IF;
        EXCEPTION
            -- Whatever the model's data makes fail rejects that model only: the validation
            -- trigger's 22023 (its message names the offending element), an id too long for
            -- the index (54000), a constraint or a user's trigger refusing the row. Other
            -- errors (a missing privilege, a cancel) end the sync.
            WHEN data_exception OR integrity_constraint_violation OR program_limit_exceeded
                 OR raise_exception THEN
            action := 'rejected: ' || SQLERRM;
        END;
        RETURN NEXT;
    END LOOP;
END
$$;
