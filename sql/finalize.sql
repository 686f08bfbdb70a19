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
       j.finished_at
  FROM job j
 CROSS JOIN LATERAL (SELECT coalesce(j.finished_at, now()) - j.started_at AS elapsed) AS t;

-- Runs a job to its end in this session, one transaction per batch, so it works on a server
-- without the worker. A second runner of the same job is refused; a failed, cancelled or
-- interrupted job continues from its cursor.
CREATE PROCEDURE run(job_id bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    state text;
    pause interval;
    not_first boolean := false;
    summary text;
BEGIN
    -- Fails here, before the job is touched, when called inside a transaction block: each
    -- batch needs a COMMIT of its own.
    COMMIT;
    state := @extschema@.run_begin(job_id);
    IF state <> 'running' THEN
        RAISE NOTICE 'backfill job % is %: nothing to run', job_id, state;
        RETURN;
    END IF;
    COMMIT;
    LOOP
        BEGIN
            -- The throttle pause too is inside the block: an interrupt may come at any point.
            pause := current_setting('backfill.batch_delay')::interval;
            IF pause > interval '0' AND not_first THEN
                PERFORM pg_sleep(extract(epoch FROM pause));
            END IF;
            not_first := true;
            state := @extschema@.run_batch(job_id);
        EXCEPTION WHEN OTHERS OR query_canceled THEN
            -- Interrupted: let the worker or another session take the job from its cursor.
            PERFORM @extschema@.run_end(job_id);
            RAISE;
        END;
        COMMIT;
        EXIT WHEN state <> 'running';
    END LOOP;
    PERFORM @extschema@.run_end(job_id);
    SELECT format('backfill job %s %s: %s of %s instances processed, %s updated, %s errors in %s',
                  p.id, p.state, p.processed, p.total, p.updated, p.errors, p.elapsed)
      INTO summary
      FROM @extschema@.progress p WHERE p.id = job_id;
    RAISE NOTICE '%', summary;
END
$$;

-- Says so at CREATE EXTENSION when the worker will not serve this database.
SELECT check_worker();
