-- backfill 0.3.0 -> 0.4.0: one job can be split across workers (backfill.workers_per_job).
-- A split job's parts are rows of backfill.job with parent_id set; the progress view sums them
-- into their job and shows the job alone. Jobs queued or half-done before the upgrade are
-- kept and run whole, from their cursor (a job is split only when it first starts).

ALTER TABLE @extschema@.job
    ADD COLUMN parent_id bigint REFERENCES @extschema@.job ON DELETE CASCADE,
    ADD COLUMN parts integer CHECK (parts > 1);
CREATE INDEX job_parent_id_idx ON @extschema@.job (parent_id);

CREATE OR REPLACE VIEW @extschema@.progress AS
SELECT j.id,
       j.process_model_identifier AS model,
       ARRAY(SELECT p ->> 'key' FROM jsonb_array_elements(j.paths) AS p) AS keys,
       j.state,
       c.processed,
       j.instances_total AS total,
       CASE WHEN j.instances_total = 0 THEN 100.0
            ELSE round(100.0 * c.processed / j.instances_total, 1) END AS percent,
       round(c.processed / nullif(extract(epoch FROM t.elapsed), 0), 1) AS instances_per_second,
       CASE WHEN j.state = 'running' AND c.processed > 0
            THEN t.elapsed * ((j.instances_total - c.processed)::float8 / c.processed)
       END AS eta,
       t.elapsed,
       c.updated,
       c.errors,
       coalesce(j.last_error, c.last_error) AS last_error,
       j.overwrite,
       j.origin,
       j.created_at,
       j.started_at,
       j.finished_at,
       j.queued_by,
       j.tables_schema,
       j.parts
  FROM @extschema@.job j
 CROSS JOIN LATERAL (SELECT coalesce(j.finished_at, now()) - j.started_at AS elapsed) AS t
 -- The job's own counters, or its parts' summed.
 CROSS JOIN LATERAL (
       SELECT sum(r.processed)::bigint AS processed,
              sum(r.updated)::bigint AS updated,
              sum(r.errors)::bigint AS errors,
              (array_agg(r.last_error ORDER BY r.id DESC) FILTER (WHERE r.last_error IS NOT NULL))[1]
                  AS last_error
         FROM (SELECT j.instances_processed, j.instances_updated, j.errors, NULL::text, j.id
                WHERE j.parts IS NULL
               UNION ALL
               SELECT part.instances_processed, part.instances_updated, part.errors,
                      part.last_error, part.id
                 FROM @extschema@.job part
                WHERE part.parent_id = j.id AND j.parts IS NOT NULL)
              AS r(processed, updated, errors, last_error, id)) AS c
 WHERE j.parent_id IS NULL;

CREATE OR REPLACE FUNCTION @extschema@.job_resume(job_id bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job
       SET state = 'running', started_at = coalesce(started_at, now()), finished_at = NULL,
           last_error = NULL
     WHERE id = job_id;
    UPDATE @extschema@.job j SET state = 'running', finished_at = NULL, last_error = NULL
      FROM @extschema@.job part
     WHERE part.id = job_id AND j.id = part.parent_id AND j.state <> 'running';
$$;

CREATE OR REPLACE FUNCTION @extschema@.job_fail(job_id bigint, message text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job SET state = 'failed', finished_at = clock_timestamp(), last_error = message
     WHERE id = job_id AND state IN ('queued', 'running');
    UPDATE @extschema@.job j
       SET state = 'failed', finished_at = clock_timestamp(),
           last_error = format('part %s: %s', part.id, message)
      FROM @extschema@.job part
     WHERE part.id = job_id AND j.id = part.parent_id AND j.state IN ('queued', 'running');
$$;

CREATE OR REPLACE FUNCTION @extschema@.job_cancel(job_id bigint) RETURNS boolean
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job SET state = 'cancelled', finished_at = now()
     WHERE parent_id = (SELECT coalesce(j.parent_id, j.id) FROM @extschema@.job j WHERE j.id = job_id)
       AND state IN ('queued', 'running');
    WITH cancelled AS (
        UPDATE @extschema@.job SET state = 'cancelled', finished_at = now()
         WHERE id = (SELECT coalesce(j.parent_id, j.id) FROM @extschema@.job j WHERE j.id = job_id)
           AND state IN ('queued', 'running')
        RETURNING id)
    SELECT EXISTS (SELECT FROM cancelled)
$$;

CREATE OR REPLACE FUNCTION @extschema@.job_summary(job_id bigint) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('%s: %s of %s instances processed, %s updated, %s errors in %s (%s instances/s)',
                  p.state, p.processed, coalesce(p.total, 0), p.updated, p.errors,
                  coalesce(p.elapsed, interval '0'), coalesce(p.instances_per_second, 0))
      FROM @extschema@.progress p
     WHERE p.id = (SELECT coalesce(j.parent_id, j.id) FROM @extschema@.job j WHERE j.id = job_id)
$$;

CREATE FUNCTION @extschema@.job_split(job_id bigint, total bigint, max_instance_id bigint, uppers bigint[],
                          totals bigint[]) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job
       SET state = 'running', started_at = now(), finished_at = NULL, last_error = NULL,
           instances_total = total, max_instance_id = job_split.max_instance_id,
           parts = cardinality(uppers)
     WHERE id = job_id;
    INSERT INTO @extschema@.job (process_model_identifier, paths, overwrite, origin, queued_by,
                                 tables_schema, parent_id, instances_total, max_instance_id,
                                 last_instance_id)
    SELECT j.process_model_identifier, j.paths, j.overwrite, j.origin, j.queued_by,
           j.tables_schema, j.id, p.total, p.upper, lag(p.upper) OVER (ORDER BY p.n)
      FROM @extschema@.job j, unnest(uppers, totals) WITH ORDINALITY AS p(upper, total, n)
     WHERE j.id = job_id
     ORDER BY p.n;
$$;

CREATE FUNCTION @extschema@.job_settle(part_id bigint) RETURNS boolean
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
    UPDATE @extschema@.job SET state = 'succeeded', finished_at = clock_timestamp()
     WHERE id = parent;
    RETURN true;
END
$$;

CREATE FUNCTION @extschema@.job_stop_part(part_id bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job part
       SET state = 'cancelled', finished_at = now(),
           last_error = format('stopped: job %s is %s', j.id, j.state)
      FROM @extschema@.job j
     WHERE part.id = part_id AND j.id = part.parent_id AND part.state IN ('queued', 'running')
$$;

REVOKE ALL ON FUNCTION @extschema@.job_split(bigint, bigint, bigint, bigint[], bigint[]),
                       @extschema@.job_settle(bigint), @extschema@.job_stop_part(bigint)
    FROM PUBLIC;

COMMENT ON FUNCTION @extschema@.job_resume(bigint) IS 'Internal: marks a stopped or interrupted job (or part, and its job) running again.';

COMMENT ON FUNCTION @extschema@.job_split(bigint, bigint, bigint, bigint[], bigint[]) IS
    'Internal: starts a job split across workers: fixes its bounds and inserts its parts.';

COMMENT ON FUNCTION @extschema@.job_settle(bigint) IS 'Internal: after a part succeeded, marks its job succeeded when no other part is left.';

COMMENT ON FUNCTION @extschema@.job_stop_part(bigint) IS 'Internal: stops a part of a job that failed or was cancelled.';

COMMENT ON FUNCTION @extschema@.job_fail(bigint, text) IS 'Internal: marks a queued or running job (a part: and its job) failed with its last error.';

COMMENT ON FUNCTION @extschema@.job_cancel(bigint) IS 'Internal: marks a queued or running job (a part: its whole job) cancelled; false when it had ended.';
COMMENT ON TABLE @extschema@.job IS
    'Backfill jobs: what each fills, its committed cursor and counters, and the role it runs as; a job split across workers has a row per part (parent_id). Written by the extension only.';
COMMENT ON VIEW @extschema@.progress IS
    'One row per job (a split job''s parts summed into it): state, processed/total, percent, rate, ETA, elapsed, errors, parts.';
