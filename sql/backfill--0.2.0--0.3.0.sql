-- backfill 0.2.0 -> 0.3.0: jobs can read and write an application's own tables
-- (backfill.attach: SpiffWorkflow's, with json task data read from its text), and process
-- models can be synced from process_model.json files (backfill.sync_process_models).
-- Data, queued jobs and jobs in progress are kept: they keep using the extension's tables.

ALTER TABLE @extschema@.job ADD COLUMN tables_schema regnamespace;
UPDATE @extschema@.job SET tables_schema = '@extschema@'::regnamespace;
ALTER TABLE @extschema@.job ALTER COLUMN tables_schema SET NOT NULL;

CREATE TABLE @extschema@.attachment (
    schema_name regnamespace NOT NULL,
    attached_by regrole NOT NULL,
    attached_at timestamptz NOT NULL DEFAULT now(),
    only_one boolean PRIMARY KEY DEFAULT true CHECK (only_one)
);
GRANT SELECT ON @extschema@.attachment TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.attachment', '');

CREATE OR REPLACE VIEW @extschema@.progress AS
SELECT j.id,
       j.process_model_identifier AS model,
       ARRAY(SELECT p ->> 'key' FROM jsonb_array_elements(j.paths) AS p) AS keys,
       j.state,
       j.instances_processed AS processed,
       j.instances_total AS total,
       CASE WHEN j.instances_total = 0 THEN 100.0
            ELSE round(100.0 * j.instances_processed / j.instances_total, 1) END AS percent,
       round(j.instances_processed / nullif(extract(epoch FROM t.elapsed), 0), 1) AS instances_per_second,
       CASE WHEN j.state = 'running' AND j.instances_processed > 0
            THEN t.elapsed * ((j.instances_total - j.instances_processed)::float8 / j.instances_processed)
       END AS eta,
       t.elapsed,
       j.instances_updated AS updated,
       j.errors,
       j.last_error,
       j.overwrite,
       j.origin,
       j.created_at,
       j.started_at,
       j.finished_at,
       j.queued_by,
       j.tables_schema
  FROM job j
 CROSS JOIN LATERAL (SELECT coalesce(j.finished_at, now()) - j.started_at AS elapsed) AS t;

CREATE OR REPLACE FUNCTION @extschema@.job_insert(model text, paths jsonb, overwrite boolean, origin text, queued_by regrole)
RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.job (process_model_identifier, paths, overwrite, origin, queued_by, tables_schema)
    VALUES (model, paths, overwrite, origin, queued_by,
            coalesce((SELECT a.schema_name FROM @extschema@.attachment a), '@extschema@'::regnamespace))
    RETURNING id
$$;

CREATE FUNCTION @extschema@.attachment_set(schema_name regnamespace, attached_by regrole) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.attachment (schema_name, attached_by) VALUES (schema_name, attached_by)
    ON CONFLICT (only_one) DO UPDATE
       SET schema_name = EXCLUDED.schema_name, attached_by = EXCLUDED.attached_by,
           attached_at = EXCLUDED.attached_at
$$;

CREATE FUNCTION @extschema@.attachment_clear() RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM @extschema@.attachment
$$;
REVOKE ALL ON FUNCTION @extschema@.attachment_set(regnamespace, regrole), @extschema@.attachment_clear() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.attachment_set(regnamespace, regrole) IS
    'Internal: records the schema whose tables jobs queued from now on use (backfill.attach).';
COMMENT ON FUNCTION @extschema@.attachment_clear() IS
    'Internal: forgets the attached schema (backfill.detach).';

-- The batch statement now names the job's tables itself; the inlined lookup is gone.
CREATE OR REPLACE FUNCTION @extschema@.latest_task_data(process_instance_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tables regnamespace := coalesce((SELECT a.schema_name FROM @extschema@.attachment a),
                                    '@extschema@'::regnamespace);
    data jsonb;
BEGIN
    EXECUTE format(
        'SELECT d.data::jsonb
           FROM (SELECT t.json_data_hash FROM %1$s.task t
                  WHERE t.process_instance_id = $1 AND t.state = ''COMPLETED''
                  ORDER BY t.end_in_seconds DESC NULLS LAST, t.guid DESC
                  LIMIT 1) latest
           JOIN %1$s.json_data d ON d.hash = latest.json_data_hash', tables)
       INTO data USING process_instance_id;
    RETURN coalesce(data, '{}');
END
$$;
DROP FUNCTION @extschema@.latest_completed_task(bigint);

CREATE FUNCTION @extschema@.extract_values("task_data" json, "paths" TEXT[]) RETURNS TEXT[]
    STRICT STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'extract_values_from_text_wrapper';
CREATE FUNCTION @extschema@.attach("schema_name" TEXT) RETURNS void
    VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'attach_wrapper';
CREATE FUNCTION @extschema@.detach() RETURNS void
    STRICT VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'detach_wrapper';
ALTER FUNCTION @extschema@.attach(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.detach() SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION @extschema@.sync_process_models(models jsonb)
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
        EXCEPTION WHEN invalid_parameter_value THEN
            -- The validation trigger's message names the offending element.
            action := 'rejected: ' || SQLERRM;
        END;
        RETURN NEXT;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION @extschema@.attach(text), @extschema@.detach(), @extschema@.sync_process_models(jsonb) FROM PUBLIC;

COMMENT ON TABLE @extschema@.attachment IS
    'The schema whose process_instance, task, json_data and process_instance_metadata jobs use instead of backfill''s own (backfill.attach); no row: backfill''s own.';
COMMENT ON FUNCTION @extschema@.latest_task_data(bigint) IS
    'The data of the instance''s latest completed task, {} when it has none, from the attached tables when there are.';
COMMENT ON FUNCTION @extschema@.extract_values(json, text[]) IS
    'The rendered values of these paths in json task data, read from its text as Python''s json.loads reads it: what a batch calls once per instance on json data.';
COMMENT ON FUNCTION @extschema@.attach(text) IS
    'From now on, jobs read and write the process_instance, task, json_data and process_instance_metadata tables of this schema (checked first; the caller must own them).';
COMMENT ON FUNCTION @extschema@.detach() IS
    'From now on, jobs use the tables of schema backfill again.';
COMMENT ON FUNCTION @extschema@.sync_process_models(jsonb) IS
    'Inserts and updates process models from [{"id", "display_name", "metadata_extraction_paths"}] (as read from process_model.json files); one row per model: inserted, updated, unchanged or rejected: reason.';
COMMENT ON FUNCTION @extschema@.worker_pid() IS
    'The pid of the background worker serving this database right now, NULL when none runs (a worker runs while the database has jobs to run).';
