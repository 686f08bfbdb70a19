-- The job table's view and state changes. The batch engine keeps in Rust only its prepared
-- per-batch statements (src/engine.rs); every other change of a job's state is one of these
-- functions, which the extension alone calls (as the owner of backfill.job: no other role
-- may execute them).

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
       j.queued_by,
       j.tables_schema
  FROM job j
 CROSS JOIN LATERAL (SELECT coalesce(j.finished_at, now()) - j.started_at AS elapsed) AS t;

-- A queued job; it will run as `queued_by`, on the tables attached now.
CREATE FUNCTION job_insert(model text, paths jsonb, overwrite boolean, origin text, queued_by regrole)
RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.job (process_model_identifier, paths, overwrite, origin, queued_by, tables_schema)
    VALUES (model, paths, overwrite, origin, queued_by,
            coalesce((SELECT a.schema_name FROM @extschema@.attachment a), '@extschema@'::regnamespace))
    RETURNING id
$$;

CREATE FUNCTION attachment_set(schema_name regnamespace, attached_by regrole) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.attachment (schema_name, attached_by) VALUES (schema_name, attached_by)
    ON CONFLICT (only_one) DO UPDATE
       SET schema_name = EXCLUDED.schema_name, attached_by = EXCLUDED.attached_by,
           attached_at = EXCLUDED.attached_at
$$;

CREATE FUNCTION attachment_clear() RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM @extschema@.attachment
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
                       job_cancel(bigint), job_summary(bigint),
                       attachment_set(regnamespace, regrole), attachment_clear()
    FROM PUBLIC;
COMMENT ON FUNCTION attachment_set(regnamespace, regrole) IS
    'Internal: records the schema whose tables jobs queued from now on use (backfill.attach).';
COMMENT ON FUNCTION attachment_clear() IS
    'Internal: forgets the attached schema (backfill.detach).';
COMMENT ON FUNCTION job_insert(text, jsonb, boolean, text, regrole) IS
    'Internal: inserts a queued job that will run as queued_by.';
COMMENT ON FUNCTION job_start(bigint, bigint, bigint) IS
    'Internal: marks a job running for the first time and fixes its bounds.';
COMMENT ON FUNCTION job_resume(bigint) IS 'Internal: marks a stopped or interrupted job running again.';
COMMENT ON FUNCTION job_finish(bigint) IS 'Internal: marks a job succeeded and returns its totals.';
COMMENT ON FUNCTION job_fail(bigint, text) IS 'Internal: marks a queued or running job failed with its last error.';
COMMENT ON FUNCTION job_cancel(bigint) IS 'Internal: marks a queued or running job cancelled; false when it had ended.';
COMMENT ON FUNCTION job_summary(bigint) IS 'Internal: a job''s state and counters in one line, for logs and notices.';
