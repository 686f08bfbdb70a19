-- backfill 0.7.0 -> 0.8.0: the first day on an existing deployment. A model that arrives with
-- paths while it has instances (an INSERT, a first sync) gets a catch-up job, and
-- backfill.catch_up queues one on demand: instances that predate their keys are filled where
-- they have no row, the rows there kept. Jobs record when they last moved (progressed_at),
-- for monitoring.

CREATE FUNCTION @extschema@."catch_up"(
	"process_model_identifier" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"model" TEXT,  /* String */
	"job_id" bigint  /* i64 */
)
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'catch_up_wrapper';
ALTER FUNCTION @extschema@.catch_up(text) SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION @extschema@.catch_up(text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.catch_up(text) IS
    'Queues, for the model (NULL: every model with paths) if it has instances, a job that fills every (instance, key) of its current paths without a row and keeps the rows there (overwrite off); one row (model, job_id) per job queued. The jobs run as the calling role.';

CREATE FUNCTION @extschema@."enqueue_catch_up_on_model_insert"() RETURNS TRIGGER
LANGUAGE c
AS 'MODULE_PATHNAME', 'enqueue_catch_up_on_model_insert_wrapper';
ALTER FUNCTION @extschema@.enqueue_catch_up_on_model_insert() SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.enqueue_catch_up_on_model_insert() IS
    'Trigger: queues a catch-up job (fill where an instance has no row) for a model inserted with paths while it has instances.';
CREATE TRIGGER enqueue_catch_up_on_model_insert
    AFTER INSERT ON @extschema@.process_model
    FOR EACH ROW
    WHEN (NEW.metadata_extraction_paths IS DISTINCT FROM '[]'::jsonb)
    EXECUTE FUNCTION @extschema@.enqueue_catch_up_on_model_insert();

-- When a job last moved (its start or resume, each batch), shown by the progress view: the
-- column is added last, as in a fresh install, and the view gains it last (its grants kept).
ALTER TABLE @extschema@.job ADD COLUMN progressed_at timestamptz;
CREATE OR REPLACE FUNCTION @extschema@.job_start(job_id bigint, total bigint, max_instance_id bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job
       SET state = 'running', started_at = now(), finished_at = NULL, last_error = NULL,
           instances_total = total, max_instance_id = job_start.max_instance_id,
           progressed_at = now()
     WHERE id = job_id
$$;

CREATE OR REPLACE FUNCTION @extschema@.job_resume(job_id bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job
       SET state = 'running', started_at = coalesce(started_at, now()), finished_at = NULL,
           last_error = NULL, progressed_at = now()
     WHERE id = job_id;
    UPDATE @extschema@.job j SET state = 'running', finished_at = NULL, last_error = NULL,
                                 progressed_at = now()
      FROM @extschema@.job part
     WHERE part.id = job_id AND j.id = part.parent_id AND j.state <> 'running';
$$;

CREATE OR REPLACE FUNCTION @extschema@.job_split(job_id bigint, total bigint, max_instance_id bigint, uppers bigint[],
                          totals bigint[]) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job
       SET state = 'running', started_at = now(), finished_at = NULL, last_error = NULL,
           instances_total = total, max_instance_id = job_split.max_instance_id,
           parts = cardinality(uppers), progressed_at = now()
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
       j.parts,
       j.not_before,
       -- What keeps an unfinished job from the workers now, and until when.
       CASE WHEN j.state NOT IN ('queued', 'running') THEN NULL
            WHEN j.not_before > now() THEN 'not_before'
            WHEN w.opens_at IS NOT NULL THEN 'active_hours' END AS waiting_for,
       CASE WHEN j.state NOT IN ('queued', 'running') THEN NULL
            WHEN j.not_before > now() THEN j.not_before
            ELSE w.opens_at END AS resumes_at,
       -- When the job (or any of its parts) last moved: started, resumed, committed a batch.
       greatest(j.progressed_at, c.progressed_at) AS progressed_at
  FROM @extschema@.job j
 CROSS JOIN (SELECT @extschema@.window_opens_at() AS opens_at) AS w
 CROSS JOIN LATERAL (SELECT coalesce(j.finished_at, now()) - j.started_at AS elapsed) AS t
 -- The job's own counters, or its parts' summed.
 CROSS JOIN LATERAL (
       SELECT sum(r.processed)::bigint AS processed,
              sum(r.updated)::bigint AS updated,
              sum(r.errors)::bigint AS errors,
              (array_agg(r.last_error ORDER BY r.id DESC) FILTER (WHERE r.last_error IS NOT NULL))[1]
                  AS last_error,
              max(r.progressed_at) AS progressed_at
         FROM (SELECT j.instances_processed, j.instances_updated, j.errors, NULL::text, j.id,
                      NULL::timestamptz
                WHERE j.parts IS NULL
               UNION ALL
               SELECT part.instances_processed, part.instances_updated, part.errors,
                      part.last_error, part.id, part.progressed_at
                 FROM @extschema@.job part
                WHERE part.parent_id = j.id AND j.parts IS NOT NULL)
              AS r(processed, updated, errors, last_error, id, progressed_at)) AS c
 WHERE j.parent_id IS NULL;
COMMENT ON VIEW @extschema@.progress IS
    'One row per job (a split job''s parts summed into it): state, processed/total, percent, rate, ETA, elapsed, errors, parts, what keeps it waiting (not_before, active_hours) until when, and when it last moved (progressed_at).';
