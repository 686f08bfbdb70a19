-- backfill 0.6.0 -> 0.7.0: a production database's ordinary life. pg_upgrade works (no reg*
-- column that it refuses; no batch in binary-upgrade mode); a library newer than a database's
-- objects says so instead of failing inside; memory is bounded per document and running out
-- of it is an instance's error; every lock a batch meets is waited out.

-- pg_upgrade keeps no schema's OID and refuses a table with a regnamespace column: the schema
-- of a job's tables, and of the attached tables, is held by name. A schema dropped before the
-- upgrade leaves its OID as the name, which no schema has: such a job fails when it runs, as
-- it would have. The progress view shows the column, so it is made again, with what was
-- granted on it.
SELECT pg_catalog.set_config('backfill_upgrade.progress_acl',
                             coalesce((SELECT c.relacl::text FROM pg_catalog.pg_class c
                                        WHERE c.oid = '@extschema@.progress'::regclass), ''),
                             true);
DROP VIEW @extschema@.progress;
-- regnamespace's text is the name, double-quoted where an identifier needs it.
ALTER TABLE @extschema@.job ALTER COLUMN tables_schema TYPE name USING
    CASE WHEN tables_schema::text LIKE '"%'
         THEN replace(substr(tables_schema::text, 2, length(tables_schema::text) - 2), '""', '"')
         ELSE tables_schema::text END;
ALTER TABLE @extschema@.attachment ALTER COLUMN schema_name TYPE name USING
    CASE WHEN schema_name::text LIKE '"%'
         THEN replace(substr(schema_name::text, 2, length(schema_name::text) - 2), '""', '"')
         ELSE schema_name::text END;
CREATE VIEW @extschema@.progress AS
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
COMMENT ON VIEW @extschema@.progress IS
    'One row per job (a split job''s parts summed into it): state, processed/total, percent, rate, ETA, elapsed, errors, parts, and what keeps it waiting (not_before, active_hours) until when.';
DO $regrant$
DECLARE
    grant_ record;
BEGIN
    FOR grant_ IN
        SELECT a.privilege_type, a.is_grantable,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END AS grantee
          FROM pg_catalog.aclexplode(nullif(pg_catalog.current_setting('backfill_upgrade.progress_acl'), '')::pg_catalog.aclitem[]) a
          LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
         WHERE a.grantee <> (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = '@extschema@.progress'::regclass)
    LOOP
        EXECUTE pg_catalog.format('GRANT %s ON @extschema@.progress TO %s%s', grant_.privilege_type,
                                  grant_.grantee, CASE WHEN grant_.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$regrant$;
CREATE OR REPLACE FUNCTION @extschema@.job_insert(model text, paths jsonb, overwrite boolean, origin text, queued_by regrole)
RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.job (process_model_identifier, paths, overwrite, origin, queued_by, tables_schema)
    VALUES (model, paths, overwrite, origin, queued_by,
            coalesce((SELECT a.schema_name FROM @extschema@.attachment a), '@extschema@'))
    RETURNING id
$$;
CREATE OR REPLACE FUNCTION @extschema@.attachment_set(schema_name regnamespace, attached_by regrole) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.attachment (schema_name, attached_by)
    SELECT n.nspname, attached_by FROM pg_catalog.pg_namespace n WHERE n.oid = schema_name
    ON CONFLICT (only_one) DO UPDATE
       SET schema_name = EXCLUDED.schema_name, attached_by = EXCLUDED.attached_by,
           attached_at = EXCLUDED.attached_at
$$;
