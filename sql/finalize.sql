-- Objects that need both the tables and the Rust functions; runs last in the install script.

CREATE TRIGGER validate_metadata_extraction_paths
    BEFORE INSERT OR UPDATE ON process_model
    FOR EACH ROW EXECUTE FUNCTION validate_metadata_extraction_paths();

CREATE TRIGGER enqueue_backfill_on_model_update
    AFTER UPDATE ON process_model
    FOR EACH ROW
    WHEN (OLD.metadata_extraction_paths IS DISTINCT FROM NEW.metadata_extraction_paths)
    EXECUTE FUNCTION enqueue_backfill_on_model_update();

-- One row a job: where it is, how fast it goes, when it should end.
CREATE VIEW progress AS
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
  FROM job j
 CROSS JOIN LATERAL (SELECT coalesce(j.finished_at, now()) - j.started_at AS elapsed) AS t;

-- Runs a job to its end in this session, one transaction per batch, so it works on a server
-- without the worker. A second runner of the same job is refused; a failed, cancelled or
-- interrupted job continues from its cursor. An interrupt at any point lets the job go at once
-- (the run lock is released when the transaction aborts). A procedure that commits cannot
-- carry SET search_path, so this one calls only schema-qualified functions and uses no
-- operator: everything it decides is decided by those functions. Its first COMMIT fails,
-- before the job is touched, when it is called inside a transaction block: each batch needs a
-- COMMIT of its own. (sql/backfill--0.1.0--0.2.0.sql repeats the body: keep them equal.)
CREATE PROCEDURE run(job_id bigint)
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

-- Every function that runs SQL does so with a search path no database user can write to.
-- extract_values is the exception: it runs no SQL and is called once per instance by every
-- batch, where the setting would cost a save and restore per call.
ALTER FUNCTION extract_metadata(jsonb, jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION render_value(jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION enqueue(text, text[], boolean) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION cancel(bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION wait(bigint, interval) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION run_begin(bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION run_batch(bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION run_end(bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION check_worker() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION worker_pid() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION validate_metadata_extraction_paths() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION enqueue_backfill_on_model_update() SET search_path = pg_catalog, pg_temp;

-- Queuing, running, cancelling and watching jobs is granted, not open to every role (README,
-- "Privileges"). A job runs with the privileges of the role that queued it, and job rows are
-- written by the extension alone: no role but the owner has any privilege on backfill.job.
REVOKE ALL ON FUNCTION enqueue(text, text[], boolean), cancel(bigint), wait(bigint, interval),
                       run_begin(bigint), run_batch(bigint), run_end(bigint), worker_pid(),
                       check_worker()
    FROM PUBLIC;
REVOKE ALL ON PROCEDURE run(bigint) FROM PUBLIC;

-- Says so at CREATE EXTENSION when the worker will not serve this database.
SELECT check_worker();
