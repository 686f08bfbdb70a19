-- backfill 0.5.0 -> 0.6.0: the second security round and the faults an operator meets.
-- Reading the tables of a job (and latest_task_data, preview, count_coverage) locks them
-- first and runs with the privileges of the queuing role or of the tables' owner, never a
-- superuser's on tables another role controls (src/pg/table_owners.rs, Tables::reader); coverage is
-- counted and shown per role; a sync rejects a model for any error of its data; job rows get
-- a worker however they got there (a restore), a split job's parts no longer deadlock when
-- they end together, a split job's own row carries their totals when it succeeds, and a
-- succeeded job says whether its coverage count is still to come (wait waits for it). Jobs
-- queued or half-done before the upgrade keep running; one queued by a role that may not use
-- its attached tables now fails at its next batch, saying why.

-- A succeeded job owes the count of its keys' coverage until the transaction after its last
-- has recorded it (src/batch/finish.rs): backfill.wait waits for it, the coverage view shows
-- it (count_pending), an idle worker counts what a crash left owed.
ALTER TABLE @extschema@.job ADD COLUMN coverage_due boolean NOT NULL DEFAULT false;
CREATE INDEX job_coverage_due_idx ON @extschema@.job (id) WHERE coverage_due;
CREATE OR REPLACE FUNCTION @extschema@.job_finish(job_id bigint, OUT processed bigint, OUT updated bigint,
                           OUT errors bigint, OUT seconds float8)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job SET state = 'succeeded', finished_at = clock_timestamp(),
                               coverage_due = parent_id IS NULL
     WHERE id = job_id
    RETURNING instances_processed, instances_updated, errors,
              extract(epoch FROM finished_at - started_at)::float8
$$;
CREATE FUNCTION @extschema@.job_coverage_settled(job_id bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job SET coverage_due = false WHERE id = job_id AND coverage_due
$$;
REVOKE ALL ON FUNCTION @extschema@.job_coverage_settled(bigint) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.job_coverage_settled(bigint) IS 'Internal: a succeeded job''s coverage is counted (or could not be); it owes no count any more.';
COMMENT ON FUNCTION @extschema@.wait(bigint, interval) IS
    'Waits until the job is no longer queued or running, and a succeeded job''s coverage is counted (at most timeout), and returns its state.';

-- job.parent_id loses its foreign key: two parts ending at once deadlocked on the lock its
-- check takes, and pg_dump warned of a table referencing itself. A trigger removes a job's
-- parts with it, as the key's ON DELETE CASCADE did.
ALTER TABLE @extschema@.job DROP CONSTRAINT job_parent_id_fkey;
CREATE FUNCTION @extschema@.job_delete_parts() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Only a split job has parts (and the delete below fires this trigger again, on them).
    IF EXISTS (SELECT FROM deleted d WHERE d.parts IS NOT NULL) THEN
        DELETE FROM @extschema@.job j USING deleted d WHERE j.parent_id = d.id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER delete_parts AFTER DELETE ON @extschema@.job REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.job_delete_parts();
REVOKE ALL ON FUNCTION @extschema@.job_delete_parts() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.job_delete_parts() IS 'Trigger: deletes the parts of the jobs a statement deleted.';

-- Job rows, however they got there (queued, split, restored from a dump taken while a job
-- ran), get a worker when their transaction commits.
CREATE FUNCTION @extschema@."wake_for_new_jobs"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'wake_for_new_jobs_wrapper';
ALTER FUNCTION @extschema@.wake_for_new_jobs() SET search_path = pg_catalog, pg_temp;
CREATE TRIGGER wake_for_new_jobs
    AFTER INSERT ON @extschema@.job
    FOR EACH STATEMENT
    EXECUTE FUNCTION @extschema@.wake_for_new_jobs();
COMMENT ON FUNCTION @extschema@.wake_for_new_jobs() IS
    'Trigger: asks for a worker when the transaction that inserted job rows (queued, split, restored) commits.';

-- latest_task_data is written in Rust now: it reads as a job of the caller's would read.
CREATE OR REPLACE FUNCTION @extschema@."latest_task_data"(
	"process_instance_id" bigint /* Option < i64 > */
) RETURNS jsonb /* JsonbResult */
STABLE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'latest_task_data_wrapper';
ALTER FUNCTION @extschema@.latest_task_data(bigint) SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.latest_task_data(bigint) IS
    'The data of the instance''s latest completed task, {} when it has none, from the tables a job queued now would use, read with the privileges such a job of the caller''s would have.';

-- One count per model, key and counting role. What 0.5.0 counted does not say whose view of
-- the tables it was: those counts are dropped (backfill.count_coverage() counts again).
DELETE FROM @extschema@.coverage_count;
ALTER TABLE @extschema@.coverage_count ADD COLUMN counted_by regrole NOT NULL;
ALTER TABLE @extschema@.coverage_count DROP CONSTRAINT coverage_count_pkey,
    ADD PRIMARY KEY (process_model_identifier, key, counted_by);
DROP FUNCTION @extschema@.coverage_record(text, text[], bigint[], bigint[], bigint[]);
CREATE FUNCTION @extschema@.coverage_record(model text, keys text[], instances bigint[], with_row bigint[],
                                with_value bigint[], counted_by regrole) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.coverage_count AS c
           (process_model_identifier, key, instances, with_row, with_value, counted_at, counted_by)
    SELECT model, k.key, k.instances, k.with_row, k.with_value, now(), counted_by
      FROM unnest(keys, instances, with_row, with_value) AS k(key, instances, with_row, with_value)
    ON CONFLICT (process_model_identifier, key, counted_by) DO UPDATE
       SET instances = EXCLUDED.instances, with_row = EXCLUDED.with_row,
           with_value = EXCLUDED.with_value, counted_at = EXCLUDED.counted_at
$$;
REVOKE ALL ON FUNCTION @extschema@.coverage_record(text, text[], bigint[], bigint[], bigint[], regrole) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.coverage_record(text, text[], bigint[], bigint[], bigint[], regrole) IS 'Internal: records the counts of a model''s keys just made by a role, for the coverage view.';
-- (OR REPLACE keeps what was granted on the view.)
CREATE OR REPLACE VIEW @extschema@.coverage WITH (security_barrier) AS
SELECT m.id AS model,
       p.key,
       p.path,
       c.instances,
       c.with_row,
       c.with_value,
       CASE WHEN c.instances = 0 THEN 100.0
            ELSE round(100.0 * c.with_value / c.instances, 1) END AS percent,
       c.counted_at,
       c.counted_by,
       -- A job filling the key succeeded and its count is still to come (backfill.wait
       -- returns after it).
       EXISTS (SELECT FROM @extschema@.job j
                WHERE j.process_model_identifier = m.id AND j.coverage_due
                  AND j.paths @> jsonb_build_array(jsonb_build_object('key', p.key))) AS count_pending
  FROM @extschema@.process_model m
 CROSS JOIN LATERAL (
       SELECT e ->> 'key' AS key, e ->> 'path' AS path
         FROM jsonb_array_elements(CASE jsonb_typeof(m.metadata_extraction_paths)
                                        WHEN 'array' THEN m.metadata_extraction_paths
                                        ELSE '[]' END) AS e) AS p
  LEFT JOIN LATERAL (
       SELECT n.instances, n.with_row, n.with_value, n.counted_at, n.counted_by
         FROM @extschema@.coverage_count n
        WHERE n.process_model_identifier = m.id AND n.key = p.key
          AND pg_has_role(n.counted_by, 'USAGE')
        ORDER BY pg_get_userbyid(n.counted_by) = current_user DESC, n.counted_at DESC
        LIMIT 1) AS c ON true;
COMMENT ON VIEW @extschema@.coverage IS
    'Per model and key of its current paths: instances, instances with a row, with a value, percent with a value, as counted (counted_at, counted_by) when a job filling the key succeeded or by count_coverage, by the reading role or a role whose privileges it has; count_pending: a job filling the key succeeded and its count is still to come.';
COMMENT ON TABLE @extschema@.coverage_count IS
    'The counts behind the coverage view, one per model, key and role that counted (what that role may see). Written by the extension only.';

-- (sql/sync.sql: keep them equal.)
CREATE OR REPLACE FUNCTION @extschema@.sync_process_models(models jsonb)
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

-- A split job's own row carries its parts' totals when it succeeds (it kept 0 processed and
-- no cursor: only the progress view told the truth).
CREATE OR REPLACE FUNCTION @extschema@.job_settle(part_id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parent bigint := (SELECT j.parent_id FROM @extschema@.job j WHERE j.id = part_id);
BEGIN
    PERFORM FROM @extschema@.job j WHERE j.id = parent AND j.state = 'running' FOR UPDATE;
    IF NOT FOUND OR EXISTS (SELECT FROM @extschema@.job j
                             WHERE j.parent_id = parent AND j.state <> 'succeeded') THEN
        RETURN false;
    END IF;
    -- The job's own row carries its totals and a cursor at the end of its range, as a job
    -- that was not split does (the progress view keeps summing the parts).
    UPDATE @extschema@.job j
       SET state = 'succeeded', finished_at = clock_timestamp(),
           instances_processed = s.processed, instances_updated = s.updated, errors = s.errors,
           last_instance_id = j.max_instance_id,
           coverage_due = true
      FROM (SELECT coalesce(sum(part.instances_processed), 0) AS processed,
                   coalesce(sum(part.instances_updated), 0) AS updated,
                   coalesce(sum(part.errors), 0) AS errors
              FROM @extschema@.job part
             WHERE part.parent_id = parent) AS s
     WHERE j.id = parent;
    RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@.job_settle(bigint) IS 'Internal: after a part succeeded, marks its job succeeded, with its parts'' totals, when no other part is left.';

-- A batch on Citus-distributed tables reads many instances' documents in one statement on the
-- worker nodes: extract_values_or_fault gives an instance's error as a value instead of
-- failing the statement (src/batch/distributed.rs).
CREATE FUNCTION @extschema@."extract_values_or_fault"("task_data" json, "paths" TEXT[]) RETURNS TEXT[]
    STRICT STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'extract_values_or_fault_text_wrapper';
CREATE FUNCTION @extschema@."extract_values_or_fault"("task_data" jsonb, "paths" TEXT[]) RETURNS TEXT[]
    STRICT STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'extract_values_or_fault_jsonb_wrapper';
COMMENT ON FUNCTION @extschema@.extract_values_or_fault(json, text[]) IS
    'extract_values, with one more element: NULL, or the error of this instance''s data instead of raising it (the values then NULL): what a batch on Citus-distributed tables calls on the worker nodes.';
COMMENT ON FUNCTION @extschema@.extract_values_or_fault(jsonb, text[]) IS
    'extract_values, with one more element: NULL, or the error of this instance''s data instead of raising it (the values then NULL): what a batch on Citus-distributed tables calls on the worker nodes.';
