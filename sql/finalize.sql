-- Objects that need both the tables and the Rust functions; runs last in the install script.

CREATE TRIGGER validate_metadata_extraction_paths
    BEFORE INSERT OR UPDATE ON process_model
    FOR EACH ROW EXECUTE FUNCTION validate_metadata_extraction_paths();

CREATE TRIGGER enqueue_backfill_on_model_update
    AFTER UPDATE ON process_model
    FOR EACH ROW
    WHEN (OLD.metadata_extraction_paths IS DISTINCT FROM NEW.metadata_extraction_paths)
    EXECUTE FUNCTION enqueue_backfill_on_model_update();

-- A model that arrives with paths while it has instances (a first sync on an existing
-- deployment) gets a catch-up job: its instances are filled where they have no row.
CREATE TRIGGER enqueue_catch_up_on_model_insert
    AFTER INSERT ON process_model
    FOR EACH ROW
    WHEN (NEW.metadata_extraction_paths IS DISTINCT FROM '[]'::jsonb)
    EXECUTE FUNCTION enqueue_catch_up_on_model_insert();

-- Job rows, however they got there (queued, split, restored from a dump), get a worker.
CREATE TRIGGER wake_for_new_jobs
    AFTER INSERT ON job
    FOR EACH STATEMENT
    EXECUTE FUNCTION wake_for_new_jobs();

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
-- extract_values and extract_values_or_fault (both overloads) are the exception: they run no
-- SQL and are called once per instance by every batch, where the setting would cost a save and restore per call.
ALTER FUNCTION latest_task_data(bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION extract_metadata(jsonb, jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION render_value(jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION enqueue(text, text[], boolean, timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION cancel(bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION wait(bigint, interval) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION run_begin(bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION run_batch(bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION run_end(bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION check_worker() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION attach(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION detach() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION worker_pid() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION window_opens_at() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION count_coverage(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION catch_up(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION preview(text, jsonb, integer) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION preview_summary(text, jsonb, integer) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION validate_metadata_extraction_paths() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION enqueue_backfill_on_model_update() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION enqueue_catch_up_on_model_insert() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION wake_for_new_jobs() SET search_path = pg_catalog, pg_temp;

-- Queuing, running, cancelling and watching jobs is granted, not open to every role (README,
-- "Privileges"). A job runs with the privileges of the role that queued it, and job rows are
-- written by the extension alone: no role but the owner may write backfill.job (SELECT may be
-- granted, to read jobs).
REVOKE ALL ON FUNCTION enqueue(text, text[], boolean, timestamptz), cancel(bigint), wait(bigint, interval),
                       run_begin(bigint), run_batch(bigint), run_end(bigint), worker_pid(),
                       check_worker(), attach(text), detach(), sync_process_models(jsonb),
                       preview(text, jsonb, integer), preview_summary(text, jsonb, integer),
                       count_coverage(text), catch_up(text)
    FROM PUBLIC;
REVOKE ALL ON PROCEDURE run(bigint) FROM PUBLIC;

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
    'Backfill jobs: what each fills, its committed cursor and counters, and the role it runs as; a job split across workers has a row per part (parent_id). Written by the extension only.';
COMMENT ON VIEW @extschema@.progress IS
    'One row per job (a split job''s parts summed into it): state, processed/total, percent, rate, ETA, elapsed, errors, parts, what keeps it waiting (not_before, active_hours) until when, and when it last moved (progressed_at).';
COMMENT ON TABLE @extschema@.attachment IS
    'The schema whose process_instance, task, json_data and process_instance_metadata jobs use instead of backfill''s own (backfill.attach); no row: backfill''s own.';
COMMENT ON FUNCTION @extschema@.latest_task_data(bigint) IS
    'The data of the instance''s latest completed task, {} when it has none, from the tables a job queued now would use, read with the privileges such a job of the caller''s would have.';
COMMENT ON FUNCTION @extschema@.extract_values(json, text[]) IS
    'The rendered values of these paths in json task data, read from its text as Python''s json.loads reads it: what a batch calls once per instance on json data.';
COMMENT ON FUNCTION @extschema@.attach(text) IS
    'From now on, jobs read and write the process_instance, task, json_data and process_instance_metadata tables of this schema (checked first; the caller must own them).';
COMMENT ON FUNCTION @extschema@.detach() IS
    'From now on, jobs use the tables of schema backfill again.';
COMMENT ON FUNCTION @extschema@.sync_process_models(jsonb) IS
    'Inserts and updates process models from [{"id", "display_name", "metadata_extraction_paths"}] (as read from process_model.json files); one row per model: inserted, updated, unchanged or rejected: reason.';
COMMENT ON FUNCTION @extschema@.extract_metadata(jsonb, jsonb) IS
    'The values the paths give in this task data, {key: rendered text or null}, rendered in backfill.value_format.';
COMMENT ON FUNCTION @extschema@.render_value(jsonb) IS
    'The text process_instance_metadata.value gets for a JSON value (NULL for null), in backfill.value_format, cut to 255 characters.';
COMMENT ON FUNCTION @extschema@.extract_values_or_fault(json, text[]) IS
    'extract_values, with one more element: NULL, or the error of this instance''s data instead of raising it (the values then NULL): what a batch on Citus-distributed tables calls on the worker nodes.';
COMMENT ON FUNCTION @extschema@.extract_values_or_fault(jsonb, text[]) IS
    'extract_values, with one more element: NULL, or the error of this instance''s data instead of raising it (the values then NULL): what a batch on Citus-distributed tables calls on the worker nodes.';
COMMENT ON FUNCTION @extschema@.extract_values(jsonb, text[]) IS
    'The rendered values of these paths in this task data, in order: what a batch calls once per instance.';
COMMENT ON FUNCTION @extschema@.enqueue(text, text[], boolean, timestamptz) IS
    'Queues a job for the named keys (NULL: all) of the model''s current paths, replacing existing values with overwrite, that no worker starts before not_before (NULL: at once); returns its id. The job runs as the calling role.';
COMMENT ON FUNCTION @extschema@.preview(text, jsonb, integer) IS
    'What a backfill with these paths would write for a sample of the model''s instances spread over its id range, next to the value there now (outcome insert, keep, replace, none or error); writes nothing, reads with the caller''s privileges.';
COMMENT ON FUNCTION @extschema@.preview_summary(text, jsonb, integer) IS
    'Per key over a sample of the model''s instances: how many would get a value, get nothing or fail, and the estimate for the whole model; writes nothing.';
COMMENT ON FUNCTION @extschema@.catch_up(text) IS
    'Queues, for the model (NULL: every model with paths) if it has instances, a job that fills every (instance, key) of its current paths without a row and keeps the rows there (overwrite off); one row (model, job_id) per job queued. The jobs run as the calling role.';
COMMENT ON FUNCTION @extschema@.count_coverage(text) IS
    'Counts now, exactly and with the caller''s privileges, the coverage of the model''s (NULL: every model''s) current keys for the coverage view; returns the number of keys counted.';
COMMENT ON FUNCTION @extschema@.window_opens_at() IS
    'When backfill.active_hours next lets workers start batches; NULL while it does or when it is empty.';
COMMENT ON VIEW @extschema@.coverage IS
    'Per model and key of its current paths: instances, instances with a row, with a value, percent with a value, as counted (counted_at, counted_by) when a job filling the key succeeded or by count_coverage, by the reading role or a role whose privileges it has; count_pending: a job filling the key succeeded and its count is still to come.';
COMMENT ON TABLE @extschema@.coverage_count IS
    'The counts behind the coverage view, one per model, key and role that counted (what that role may see). Written by the extension only.';
COMMENT ON FUNCTION @extschema@.cancel(bigint) IS
    'Stops a queued or running job at its next batch boundary; false when it had already ended.';
COMMENT ON FUNCTION @extschema@.wait(bigint, interval) IS
    'Waits until the job is no longer queued or running, and a succeeded job''s coverage is counted (at most timeout), and returns its state.';
COMMENT ON FUNCTION @extschema@.run_begin(bigint) IS
    'First step of CALL backfill.run: takes the job for this session; true when there are batches to run.';
COMMENT ON FUNCTION @extschema@.run_batch(bigint) IS
    'One batch of a job this session runs, in the caller''s transaction; true while there is more.';
COMMENT ON FUNCTION @extschema@.run_end(bigint) IS
    'Last step of CALL backfill.run: lets the job go and says how it ended.';
COMMENT ON FUNCTION @extschema@.check_worker() IS
    'Whether the background worker will run this database''s jobs; a WARNING says what to change when not.';
COMMENT ON FUNCTION @extschema@.worker_pid() IS
    'The pid of the background worker serving this database right now, NULL when none runs (a worker runs while the database has jobs to run).';
COMMENT ON FUNCTION @extschema@.validate_metadata_extraction_paths() IS
    'Trigger: rejects a malformed metadata_extraction_paths with 22023 naming the element.';
COMMENT ON FUNCTION @extschema@.enqueue_backfill_on_model_update() IS
    'Trigger: queues one job for the keys an UPDATE added (fill) or re-pointed (overwrite).';
COMMENT ON FUNCTION @extschema@.enqueue_catch_up_on_model_insert() IS
    'Trigger: queues a catch-up job (fill where an instance has no row) for a model inserted with paths while it has instances.';
COMMENT ON FUNCTION @extschema@.wake_for_new_jobs() IS
    'Trigger: asks for a worker when the transaction that inserted job rows (queued, split, restored) commits.';
COMMENT ON PROCEDURE @extschema@.run(bigint) IS
    'Runs a job to its end in this session, committing after every batch; continues a failed, cancelled or interrupted job from its cursor.';

-- Says so at CREATE EXTENSION when the worker will not serve this database.
SELECT check_worker();
