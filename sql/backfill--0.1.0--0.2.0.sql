-- backfill 0.1.0 -> 0.2.0: jobs run with the privileges of the role that queued them, job rows
-- are written by the extension alone, and every function runs with a fixed search path.
-- Data, queued jobs and jobs in progress are kept: a running job continues from its cursor.

-- Jobs queued under 0.1.0 ran as a superuser; they keep running as the extension's owner.
ALTER TABLE @extschema@.job ADD COLUMN queued_by regrole;
UPDATE @extschema@.job
   SET queued_by = (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'backfill')::regrole;
ALTER TABLE @extschema@.job ALTER COLUMN queued_by SET NOT NULL;

-- The rendering follows backfill.value_format: STABLE, not IMMUTABLE (no index or folded
-- constant may keep a stale format).
ALTER FUNCTION @extschema@.extract_metadata(jsonb, jsonb) STABLE;
ALTER FUNCTION @extschema@.render_value(jsonb) STABLE;

-- NULL arguments now raise 22004 instead of returning NULL or looping: no longer STRICT.
CREATE OR REPLACE FUNCTION @extschema@.cancel("job_id" bigint) RETURNS bool
    CALLED ON NULL INPUT VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'cancel_wrapper';
CREATE OR REPLACE FUNCTION @extschema@.wait("job_id" bigint, "timeout" interval DEFAULT '60 s') RETURNS text
    CALLED ON NULL INPUT VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'wait_wrapper';
CREATE OR REPLACE FUNCTION @extschema@.run_end("job_id" bigint) RETURNS void
    CALLED ON NULL INPUT VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'run_end_wrapper';
-- run_begin and run_batch now answer whether there is more to run.
DROP FUNCTION @extschema@.run_begin(bigint);
CREATE FUNCTION @extschema@.run_begin("job_id" bigint) RETURNS bool
    VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'run_begin_wrapper';
DROP FUNCTION @extschema@.run_batch(bigint);
CREATE FUNCTION @extschema@.run_batch("job_id" bigint) RETURNS bool
    VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'run_batch_wrapper';

CREATE OR REPLACE PROCEDURE @extschema@.run(job_id bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    more boolean;
BEGIN
    COMMIT;
    more := @extschema@.run_begin(job_id);
    WHILE more LOOP
        COMMIT;
        more := @extschema@.run_batch(job_id);
    END LOOP;
    COMMIT;
    PERFORM @extschema@.run_end(job_id);
END
$$;

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
       j.queued_by
  FROM @extschema@.job j
 CROSS JOIN LATERAL (SELECT coalesce(j.finished_at, now()) - j.started_at AS elapsed) AS t;

ALTER FUNCTION @extschema@.extract_metadata(jsonb, jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.render_value(jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.enqueue(text, text[], boolean) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.cancel(bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.wait(bigint, interval) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.run_begin(bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.run_batch(bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.run_end(bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.check_worker() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.worker_pid() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.validate_metadata_extraction_paths() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.enqueue_backfill_on_model_update() SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.enqueue(text, text[], boolean), @extschema@.cancel(bigint),
                       @extschema@.wait(bigint, interval), @extschema@.run_begin(bigint),
                       @extschema@.run_batch(bigint), @extschema@.run_end(bigint),
                       @extschema@.worker_pid(), @extschema@.check_worker()
    FROM PUBLIC;
REVOKE ALL ON PROCEDURE @extschema@.run(bigint) FROM PUBLIC;

-- What each object is, for \d+ and \df+ (every object of schema backfill has a comment).
COMMENT ON TABLE @extschema@.process_model IS
    'Process models and their metadata_extraction_paths ([{"key", "path"}]); an UPDATE of the paths queues a backfill job.';
COMMENT ON TABLE @extschema@.process_instance IS
    'Process instances; a job walks those of one model in id order.';
COMMENT ON TABLE @extschema@.json_data IS
    'Task data, content-addressed by hash, as in SpiffWorkflow.';
COMMENT ON TABLE @extschema@.task IS
    'Tasks of instances; the data of the latest COMPLETED one (by end_in_seconds) is what paths are read from.';
COMMENT ON TABLE @extschema@.process_instance_metadata IS
    'One row per instance and key: the value extracted from the latest completed task data, rendered as SpiffWorkflow stores it.';
COMMENT ON TABLE @extschema@.job IS
    'Backfill jobs: what each fills, its committed cursor and counters, and the role it runs as. Written by the extension only.';
COMMENT ON VIEW @extschema@.progress IS
    'One row per job: state, processed/total, percent, rate, ETA, elapsed, errors.';
COMMENT ON FUNCTION @extschema@.latest_task_data(bigint) IS
    'The data of the instance''s latest completed task, {} when it has none.';
COMMENT ON FUNCTION @extschema@.extract_metadata(jsonb, jsonb) IS
    'The values the paths give in this task data, {key: rendered text or null}, rendered in backfill.value_format.';
COMMENT ON FUNCTION @extschema@.render_value(jsonb) IS
    'The text process_instance_metadata.value gets for a JSON value (NULL for null), in backfill.value_format, cut to 255 characters.';
COMMENT ON FUNCTION @extschema@.extract_values(jsonb, text[]) IS
    'The rendered values of these paths in this task data, in order: what a batch calls once per instance.';
COMMENT ON FUNCTION @extschema@.enqueue(text, text[], boolean) IS
    'Queues a job for the named keys (NULL: all) of the model''s current paths, replacing existing values with overwrite; returns its id. The job runs as the calling role.';
COMMENT ON FUNCTION @extschema@.cancel(bigint) IS
    'Stops a queued or running job at its next batch boundary; false when it had already ended.';
COMMENT ON FUNCTION @extschema@.wait(bigint, interval) IS
    'Waits until the job is no longer queued or running (at most timeout) and returns its state.';
COMMENT ON FUNCTION @extschema@.run_begin(bigint) IS
    'First step of CALL backfill.run: takes the job for this session; true when there are batches to run.';
COMMENT ON FUNCTION @extschema@.run_batch(bigint) IS
    'One batch of a job this session runs, in the caller''s transaction; true while there is more.';
COMMENT ON FUNCTION @extschema@.run_end(bigint) IS
    'Last step of CALL backfill.run: lets the job go and says how it ended.';
COMMENT ON FUNCTION @extschema@.check_worker() IS
    'Whether the background worker will run this database''s jobs; a WARNING says what to change when not.';
COMMENT ON FUNCTION @extschema@.worker_pid() IS
    'The pid of the background worker serving this database, NULL when none runs.';
COMMENT ON FUNCTION @extschema@.validate_metadata_extraction_paths() IS
    'Trigger: rejects a malformed metadata_extraction_paths with 22023 naming the element.';
COMMENT ON FUNCTION @extschema@.enqueue_backfill_on_model_update() IS
    'Trigger: queues one job for the keys an UPDATE added (fill) or re-pointed (overwrite).';
COMMENT ON PROCEDURE @extschema@.run(bigint) IS
    'Runs a job to its end in this session, committing after every batch; continues a failed, cancelled or interrupted job from its cursor.';

-- The latest-completed-task lookup, written once (inlined into each batch).
-- The latest completed task of an instance, written once: latest_task_data and every batch
-- (src/engine.rs) use it. It is inlined into the statement that calls it, so a batch plans it
-- as one probe of task_latest_completed_idx; a function with SET search_path would not be, so
-- this one names every operator with its schema and every table with the extension's.
CREATE FUNCTION latest_completed_task(process_instance_id bigint)
RETURNS TABLE (json_data_hash text)
LANGUAGE sql STABLE PARALLEL SAFE ROWS 1
AS $$
    SELECT t.json_data_hash
      FROM @extschema@.task t
     WHERE t.process_instance_id OPERATOR(pg_catalog.=) latest_completed_task.process_instance_id
       AND t.state OPERATOR(pg_catalog.=) 'COMPLETED'
     ORDER BY t.end_in_seconds DESC NULLS LAST, t.guid DESC
     LIMIT 1
$$;

-- The data of an instance's latest completed task, '{}' when it has none.
CREATE OR REPLACE FUNCTION latest_task_data(process_instance_id bigint) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        (SELECT d.data
           FROM @extschema@.latest_completed_task(latest_task_data.process_instance_id) l
           JOIN @extschema@.json_data d ON d.hash = l.json_data_hash),
        '{}'::jsonb)
$$;

-- Job state changes, in SQL (sql/jobs.sql).
-- A queued job; it will run as `queued_by`.
CREATE FUNCTION job_insert(model text, paths jsonb, overwrite boolean, origin text, queued_by regrole)
RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.job (process_model_identifier, paths, overwrite, origin, queued_by)
    VALUES (model, paths, overwrite, origin, queued_by)
    RETURNING id
$$;

-- A job's first start fixes its bounds: `total` instances, up to `max_instance_id`.
CREATE FUNCTION job_start(job_id bigint, total bigint, max_instance_id bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job
       SET state = 'running', started_at = now(), finished_at = NULL, last_error = NULL,
           instances_total = total, max_instance_id = job_start.max_instance_id
     WHERE id = job_id
$$;

CREATE FUNCTION job_resume(job_id bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job SET state = 'running', finished_at = NULL, last_error = NULL
     WHERE id = job_id
$$;

CREATE FUNCTION job_finish(job_id bigint, OUT processed bigint, OUT updated bigint,
                           OUT errors bigint, OUT seconds float8)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job SET state = 'succeeded', finished_at = clock_timestamp()
     WHERE id = job_id
    RETURNING instances_processed, instances_updated, errors,
              extract(epoch FROM finished_at - started_at)::float8
$$;

CREATE FUNCTION job_fail(job_id bigint, message text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job SET state = 'failed', finished_at = clock_timestamp(), last_error = message
     WHERE id = job_id AND state IN ('queued', 'running')
$$;

-- True when the job was queued or running (and is now cancelled).
CREATE FUNCTION job_cancel(job_id bigint) RETURNS boolean
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    WITH cancelled AS (
        UPDATE @extschema@.job SET state = 'cancelled', finished_at = now()
         WHERE id = job_id AND state IN ('queued', 'running')
        RETURNING id)
    SELECT EXISTS (SELECT FROM cancelled)
$$;

-- "running: 500 of 3000 instances processed, ..." for log lines and notices.
CREATE FUNCTION job_summary(job_id bigint) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('%s: %s of %s instances processed, %s updated, %s errors in %s (%s instances/s)',
                  p.state, p.processed, coalesce(p.total, 0), p.updated, p.errors,
                  coalesce(p.elapsed, interval '0'), coalesce(p.instances_per_second, 0))
      FROM @extschema@.progress p
     WHERE p.id = job_id
$$;

REVOKE ALL ON FUNCTION job_insert(text, jsonb, boolean, text, regrole), job_start(bigint, bigint, bigint),
                       job_resume(bigint), job_finish(bigint), job_fail(bigint, text),
                       job_cancel(bigint), job_summary(bigint)
    FROM PUBLIC;
COMMENT ON FUNCTION job_insert(text, jsonb, boolean, text, regrole) IS
    'Internal: inserts a queued job that will run as queued_by.';
COMMENT ON FUNCTION job_start(bigint, bigint, bigint) IS
    'Internal: marks a job running for the first time and fixes its bounds.';
COMMENT ON FUNCTION job_resume(bigint) IS 'Internal: marks a stopped or interrupted job running again.';
COMMENT ON FUNCTION job_finish(bigint) IS 'Internal: marks a job succeeded and returns its totals.';
COMMENT ON FUNCTION job_fail(bigint, text) IS 'Internal: marks a queued or running job failed with its last error.';
COMMENT ON FUNCTION job_cancel(bigint) IS 'Internal: marks a queued or running job cancelled; false when it had ended.';
COMMENT ON FUNCTION job_summary(bigint) IS 'Internal: a job''s state and counters in one line, for logs and notices.';
COMMENT ON FUNCTION @extschema@.latest_completed_task(bigint) IS
    'The hash of the task data of the instance''s latest completed task (latest by end_in_seconds, then guid); inlined where it is called.';
