-- The job table's view and state changes. The batch engine keeps in Rust only its prepared
-- per-batch statements (their texts in src/job/store.rs); every other change of a job's state
-- is one of these functions, which the extension alone calls (as the owner of backfill.job: no
-- other role may execute them), all through src/job/store.rs.

-- One row a job (a split job's parts are summed into it, not shown): where it is, how fast it
-- goes, when it should end.
CREATE VIEW progress AS
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
  FROM job j
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
                 FROM job part
                WHERE part.parent_id = j.id AND j.parts IS NOT NULL)
              AS r(processed, updated, errors, last_error, id, progressed_at)) AS c
 WHERE j.parent_id IS NULL;

-- A job's parts go with it (job.parent_id has no foreign key: see sql/schema.sql).
CREATE FUNCTION job_delete_parts() RETURNS trigger
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
CREATE TRIGGER delete_parts AFTER DELETE ON job REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION job_delete_parts();

-- A queued job; it will run as `queued_by`, on the tables attached now.
CREATE FUNCTION job_insert(model text, paths jsonb, overwrite boolean, origin text, queued_by regrole)
RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.job (process_model_identifier, paths, overwrite, origin, queued_by, tables_schema)
    VALUES (model, paths, overwrite, origin, queued_by,
            coalesce((SELECT a.schema_name FROM @extschema@.attachment a), '@extschema@'))
    RETURNING id
$$;

-- Keeps the workers from starting a queued job before `not_before`.
CREATE FUNCTION job_hold(job_id bigint, not_before timestamptz) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job SET not_before = job_hold.not_before
     WHERE id = job_id AND state = 'queued'
$$;

-- Counts of a model's keys, just made by `counted_by` (src/batch/coverage.rs), replacing that role's
-- earlier ones.
CREATE FUNCTION coverage_record(model text, keys text[], instances bigint[], with_row bigint[],
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

-- Per model and key of its current paths: how many instances, how many have a row and a
-- value, as last counted by the role reading the view, or else by a role whose privileges it
-- has, the newest first (NULL counts: no such count yet; backfill.count_coverage counts). A
-- count made by another role says what that role may see: it is not shown to roles without
-- its privileges. A security barrier: a caller's own conditions on the view are not applied
-- before that filter.
CREATE VIEW coverage WITH (security_barrier) AS
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
       EXISTS (SELECT FROM job j
                WHERE j.process_model_identifier = m.id AND j.coverage_due
                  AND j.paths @> jsonb_build_array(jsonb_build_object('key', p.key))) AS count_pending
  FROM process_model m
 CROSS JOIN LATERAL (
       SELECT e ->> 'key' AS key, e ->> 'path' AS path
         FROM jsonb_array_elements(CASE jsonb_typeof(m.metadata_extraction_paths)
                                        WHEN 'array' THEN m.metadata_extraction_paths
                                        ELSE '[]' END) AS e) AS p
  LEFT JOIN LATERAL (
       SELECT n.instances, n.with_row, n.with_value, n.counted_at, n.counted_by
         FROM coverage_count n
        WHERE n.process_model_identifier = m.id AND n.key = p.key
          AND pg_has_role(n.counted_by, 'USAGE')
        ORDER BY pg_get_userbyid(n.counted_by) = current_user DESC, n.counted_at DESC
        LIMIT 1) AS c ON true;

CREATE FUNCTION attachment_set(schema_name regnamespace, attached_by regrole) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.attachment (schema_name, attached_by)
    SELECT n.nspname, attached_by FROM pg_catalog.pg_namespace n WHERE n.oid = schema_name
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
           instances_total = total, max_instance_id = job_start.max_instance_id,
           progressed_at = now()
     WHERE id = job_id
$$;

-- A part that resumes makes its job running again (CALL backfill.run of a failed or cancelled
-- split job resumes its parts one by one).
CREATE FUNCTION job_resume(job_id bigint) RETURNS void
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

-- A job's first start in a worker splits it: the job fixes its bounds as job_start does and
-- becomes a container of parts, one per element of `uppers` (part k covers the ids after
-- uppers[k-1] up to uppers[k]; the first from the start), each `totals[k]` instances.
CREATE FUNCTION job_split(job_id bigint, total bigint, max_instance_id bigint, uppers bigint[],
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

-- After a part succeeded, in the same transaction: the job succeeds when it was the last.
-- True when it did. The job row is locked after the part's (never before: cancel locks the
-- parts first too), so two parts ending at once take turns, and the second sees the first.
CREATE FUNCTION job_settle(part_id bigint) RETURNS boolean
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

-- A part of a job that failed or was cancelled stops too (its runner sees it at its next
-- batch), saying why.
CREATE FUNCTION job_stop_part(part_id bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job part
       SET state = 'cancelled', finished_at = now(),
           last_error = format('stopped: job %s is %s', j.id, j.state)
      FROM @extschema@.job j
     WHERE part.id = part_id AND j.id = part.parent_id AND part.state IN ('queued', 'running')
$$;

CREATE FUNCTION job_finish(job_id bigint, OUT processed bigint, OUT updated bigint,
                           OUT errors bigint, OUT seconds float8)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job SET state = 'succeeded', finished_at = clock_timestamp(),
                               coverage_due = parent_id IS NULL
     WHERE id = job_id
    RETURNING instances_processed, instances_updated, errors,
              extract(epoch FROM finished_at - started_at)::float8
$$;

-- The coverage a succeeded job owed is counted (or could not be, with a warning): wait() and
-- the coverage view stop saying a count is to come.
CREATE FUNCTION job_coverage_settled(job_id bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job SET coverage_due = false WHERE id = job_id AND coverage_due
$$;

-- A failed part fails its job with its error (the other parts stop at their next batch).
CREATE FUNCTION job_fail(job_id bigint, message text) RETURNS void
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

-- True when the job was queued or running (and is now cancelled). A part stands for its job:
-- the whole job is cancelled, its parts first (each waits for its batch in flight), then the
-- job row, in the order a part's last batch locks them.
CREATE FUNCTION job_cancel(job_id bigint) RETURNS boolean
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

-- "running: 500 of 3000 instances processed, ..." for log lines and notices (of the whole job
-- when given a part).
CREATE FUNCTION job_summary(job_id bigint) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('%s: %s of %s instances processed, %s updated, %s errors in %s (%s instances/s)',
                  p.state, p.processed, coalesce(p.total, 0), p.updated, p.errors,
                  coalesce(p.elapsed, interval '0'), coalesce(p.instances_per_second, 0))
      FROM @extschema@.progress p
     WHERE p.id = (SELECT coalesce(j.parent_id, j.id) FROM @extschema@.job j WHERE j.id = job_id)
$$;

REVOKE ALL ON FUNCTION job_hold(bigint, timestamptz),
                       coverage_record(text, text[], bigint[], bigint[], bigint[], regrole)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION job_insert(text, jsonb, boolean, text, regrole), job_start(bigint, bigint, bigint),
                       job_resume(bigint), job_finish(bigint), job_fail(bigint, text),
                       job_split(bigint, bigint, bigint, bigint[], bigint[]), job_settle(bigint),
                       job_coverage_settled(bigint),
                       job_stop_part(bigint), job_delete_parts(),
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
COMMENT ON FUNCTION job_resume(bigint) IS 'Internal: marks a stopped or interrupted job (or part, and its job) running again.';
COMMENT ON FUNCTION job_split(bigint, bigint, bigint, bigint[], bigint[]) IS
    'Internal: starts a job split across workers: fixes its bounds and inserts its parts.';
COMMENT ON FUNCTION job_settle(bigint) IS 'Internal: after a part succeeded, marks its job succeeded, with its parts'' totals, when no other part is left.';
COMMENT ON FUNCTION job_coverage_settled(bigint) IS 'Internal: a succeeded job''s coverage is counted (or could not be); it owes no count any more.';
COMMENT ON FUNCTION job_stop_part(bigint) IS 'Internal: stops a part of a job that failed or was cancelled.';
COMMENT ON FUNCTION job_delete_parts() IS 'Trigger: deletes the parts of the jobs a statement deleted.';
COMMENT ON FUNCTION job_finish(bigint) IS 'Internal: marks a job succeeded and returns its totals.';
COMMENT ON FUNCTION job_fail(bigint, text) IS 'Internal: marks a queued or running job (a part: and its job) failed with its last error.';
COMMENT ON FUNCTION job_cancel(bigint) IS 'Internal: marks a queued or running job (a part: its whole job) cancelled; false when it had ended.';
COMMENT ON FUNCTION job_summary(bigint) IS 'Internal: a job''s state and counters in one line, for logs and notices.';
COMMENT ON FUNCTION job_hold(bigint, timestamptz) IS 'Internal: keeps the workers from starting a queued job before a time (enqueue''s not_before).';
COMMENT ON FUNCTION coverage_record(text, text[], bigint[], bigint[], bigint[], regrole) IS 'Internal: records the counts of a model''s keys just made by a role, for the coverage view.';
