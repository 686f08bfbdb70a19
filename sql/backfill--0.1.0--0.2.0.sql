-- backfill 0.1.0 -> 0.2.0: jobs run with the privileges of the role that queued them, job rows
-- are written by the extension alone, and every function runs with a fixed search path.
-- Data, queued jobs and jobs in progress are kept: a running job continues from its cursor.

-- Jobs queued under 0.1.0 ran as a superuser; they keep running as the extension's owner.
ALTER TABLE @extschema@.job ADD COLUMN queued_by regrole;
UPDATE @extschema@.job
   SET queued_by = (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'backfill')::regrole;
ALTER TABLE @extschema@.job ALTER COLUMN queued_by SET NOT NULL;

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

ALTER FUNCTION @extschema@.latest_task_data(bigint) SET search_path = pg_catalog, pg_temp;
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
