-- backfill 0.4.0 -> 0.5.0: an operator's tools. backfill.preview and preview_summary show
-- what a backfill of some paths would write; backfill.active_hours and enqueue's not_before
-- keep jobs out of business hours (the progress view says what a job waits for, and until
-- when); the coverage view and backfill.count_coverage say how complete each key is.
-- Jobs queued or half-done before the upgrade keep running as before.

ALTER TABLE @extschema@.job ADD COLUMN not_before timestamptz;

CREATE TABLE @extschema@.coverage_count (
    process_model_identifier text NOT NULL,
    key text NOT NULL,
    instances bigint NOT NULL,
    with_row bigint NOT NULL,
    with_value bigint NOT NULL,
    counted_at timestamptz NOT NULL,
    PRIMARY KEY (process_model_identifier, key)
);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.coverage_count', '');

CREATE FUNCTION @extschema@."window_opens_at"() RETURNS timestamp with time zone /* Option < TimestampWithTimeZone > */
STRICT STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'window_opens_at_wrapper';

CREATE FUNCTION @extschema@."count_coverage"(
	"process_model_identifier" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS bigint /* i64 */
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'count_coverage_wrapper';

CREATE FUNCTION @extschema@."preview"(
	"process_model_identifier" TEXT, /* Option < & str > */
	"paths" jsonb, /* Option < JsonB > */
	"sample" INT DEFAULT 20 /* Option < i32 > */
) RETURNS TABLE (
	"process_instance_id" bigint,  /* i64 */
	"key" TEXT,  /* String */
	"value" TEXT,  /* Option < String > */
	"value_now" TEXT,  /* Option < String > */
	"outcome" TEXT,  /* String */
	"error" TEXT  /* Option < String > */
)
STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'preview_wrapper';

CREATE FUNCTION @extschema@."preview_summary"(
	"process_model_identifier" TEXT, /* Option < & str > */
	"paths" jsonb, /* Option < JsonB > */
	"sample" INT DEFAULT 1000 /* Option < i32 > */
) RETURNS TABLE (
	"key" TEXT,  /* String */
	"sampled" bigint,  /* i64 */
	"with_value" bigint,  /* i64 */
	"without_value" bigint,  /* i64 */
	"errors" bigint,  /* i64 */
	"instances" bigint,  /* i64 */
	"estimated_with_value" bigint  /* i64 */
)
STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'preview_summary_wrapper';

-- enqueue gains not_before: a new signature, so the function is created again. Whatever was
-- granted on the old one is granted on the new one.
CREATE TEMPORARY TABLE enqueue_grants AS
SELECT a.grantee, a.is_grantable
  FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) AS a
 WHERE p.oid = '@extschema@.enqueue(text, text[], boolean)'::pg_catalog.regprocedure
   AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner;
DROP FUNCTION @extschema@.enqueue(text, text[], boolean);
CREATE FUNCTION @extschema@."enqueue"(
	"process_model_identifier" TEXT, /* Option < & str > */
	"keys" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < Option < String > > > */
	"overwrite" bool DEFAULT false, /* Option < bool > */
	"not_before" timestamp with time zone DEFAULT NULL /* Option < TimestampWithTimeZone > */
) RETURNS bigint /* i64 */
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'enqueue_wrapper';
ALTER FUNCTION @extschema@.enqueue(text, text[], boolean, timestamptz) SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION @extschema@.enqueue(text, text[], boolean, timestamptz) FROM PUBLIC;
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT grantee, is_grantable FROM enqueue_grants LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.enqueue(text, text[], boolean, timestamptz) TO %s%s',
                                  CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(g.grantee::regrole::text) END,
                                  CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;
DROP TABLE enqueue_grants;

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
            ELSE w.opens_at END AS resumes_at
  FROM @extschema@.job j
 CROSS JOIN (SELECT @extschema@.window_opens_at() AS opens_at) AS w
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


CREATE FUNCTION @extschema@.job_hold(job_id bigint, not_before timestamptz) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.job SET not_before = job_hold.not_before
     WHERE id = job_id AND state = 'queued'
$$;

CREATE FUNCTION @extschema@.coverage_record(model text, keys text[], instances bigint[], with_row bigint[],
                                with_value bigint[]) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.coverage_count AS c
           (process_model_identifier, key, instances, with_row, with_value, counted_at)
    SELECT model, k.key, k.instances, k.with_row, k.with_value, now()
      FROM unnest(keys, instances, with_row, with_value) AS k(key, instances, with_row, with_value)
    ON CONFLICT (process_model_identifier, key) DO UPDATE
       SET instances = EXCLUDED.instances, with_row = EXCLUDED.with_row,
           with_value = EXCLUDED.with_value, counted_at = EXCLUDED.counted_at
$$;

CREATE VIEW @extschema@.coverage AS
SELECT m.id AS model,
       p.key,
       p.path,
       c.instances,
       c.with_row,
       c.with_value,
       CASE WHEN c.instances = 0 THEN 100.0
            ELSE round(100.0 * c.with_value / c.instances, 1) END AS percent,
       c.counted_at
  FROM @extschema@.process_model m
 CROSS JOIN LATERAL (
       SELECT e ->> 'key' AS key, e ->> 'path' AS path
         FROM jsonb_array_elements(CASE jsonb_typeof(m.metadata_extraction_paths)
                                        WHEN 'array' THEN m.metadata_extraction_paths
                                        ELSE '[]' END) AS e) AS p
  LEFT JOIN @extschema@.coverage_count c ON c.process_model_identifier = m.id AND c.key = p.key;

ALTER FUNCTION @extschema@.window_opens_at() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.count_coverage(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.preview(text, jsonb, integer) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.preview_summary(text, jsonb, integer) SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION @extschema@.preview(text, jsonb, integer), @extschema@.preview_summary(text, jsonb, integer),
                       @extschema@.count_coverage(text),
                       @extschema@.job_hold(bigint, timestamptz),
                       @extschema@.coverage_record(text, text[], bigint[], bigint[], bigint[])
    FROM PUBLIC;

COMMENT ON FUNCTION @extschema@.job_hold(bigint, timestamptz) IS 'Internal: keeps the workers from starting a queued job before a time (enqueue''s not_before).';
COMMENT ON FUNCTION @extschema@.coverage_record(text, text[], bigint[], bigint[], bigint[]) IS 'Internal: records the counts of a model''s keys just made, for the coverage view.';
COMMENT ON FUNCTION @extschema@.enqueue(text, text[], boolean, timestamptz) IS
    'Queues a job for the named keys (NULL: all) of the model''s current paths, replacing existing values with overwrite, that no worker starts before not_before (NULL: at once); returns its id. The job runs as the calling role.';
COMMENT ON FUNCTION @extschema@.preview(text, jsonb, integer) IS
    'What a backfill with these paths would write for a sample of the model''s instances spread over its id range, next to the value there now (outcome insert, keep, replace, none or error); writes nothing, reads with the caller''s privileges.';
COMMENT ON FUNCTION @extschema@.preview_summary(text, jsonb, integer) IS
    'Per key over a sample of the model''s instances: how many would get a value, get nothing or fail, and the estimate for the whole model; writes nothing.';
COMMENT ON FUNCTION @extschema@.count_coverage(text) IS
    'Counts now, exactly and with the caller''s privileges, the coverage of the model''s (NULL: every model''s) current keys for the coverage view; returns the number of keys counted.';
COMMENT ON FUNCTION @extschema@.window_opens_at() IS
    'When backfill.active_hours next lets workers start batches; NULL while it does or when it is empty.';
COMMENT ON VIEW @extschema@.coverage IS
    'Per model and key of its current paths: instances, instances with a row, with a value, percent with a value, as counted when a job filling the key succeeded or by count_coverage (counted_at).';
COMMENT ON TABLE @extschema@.coverage_count IS
    'The counts behind the coverage view. Written by the extension only.';
COMMENT ON VIEW @extschema@.progress IS
    'One row per job (a split job''s parts summed into it): state, processed/total, percent, rate, ETA, elapsed, errors, parts, and what keeps it waiting (not_before, active_hours) until when.';
