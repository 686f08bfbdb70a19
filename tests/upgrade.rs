//! `ALTER EXTENSION backfill UPDATE` from every earlier release keeps data, queued jobs and
//! jobs in progress, and leaves the same objects as a fresh install.
//!
//! The install scripts of 0.1.0 to 0.5.0 are frozen in tests/upgrade/ and copied next
//! to the current one by scripts/test; the library is the current one (it keeps every C
//! symbol their scripts name).

mod common;

use common::{bulk_sql, one_i64, one_text, wrong_rows, Cluster};
use postgres::Client;
use std::collections::BTreeSet;

/// Every object of the extension in schema backfill (a test build adds functions of its own
/// in schema tests), described in text: functions with their signature, result,
/// strictness, volatility, settings, privileges, body and comment; columns; views; constraints,
/// indexes and triggers of its tables; table privileges.
const DESCRIBE: &str = "
WITH members AS (
    SELECT d.classid, d.objid FROM pg_depend d
      JOIN pg_extension e ON e.oid = d.refobjid
     WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'backfill'
)
SELECT 'function ' || p.oid::regprocedure || ' -> ' || p.prorettype::regtype
       || ' kind=' || p.prokind::text || ' strict=' || p.proisstrict || ' volatile=' || p.provolatile::text
       || ' parallel=' || p.proparallel::text || ' config=' || coalesce(p.proconfig::text, '-')
       || ' acl=' || coalesce(p.proacl::text, '-') || ' args=' || pg_get_function_arguments(p.oid)
       || ' src=' || p.prosrc || ' comment=' || coalesce(obj_description(p.oid, 'pg_proc'), '-')
  FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
 WHERE p.pronamespace = 'backfill'::regnamespace
UNION ALL
SELECT 'column ' || c.oid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || ' notnull=' || a.attnotnull || ' default=' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-')
  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
UNION ALL
SELECT 'relation ' || c.oid::regclass || ' ' || c.relkind::text || ' acl=' || coalesce(c.relacl::text, '-')
       || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '-')
       || coalesce(' view=' || pg_get_viewdef(c.oid), '')
  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
UNION ALL
SELECT 'constraint ' || con.conrelid::regclass || ' ' || con.conname || ' ' || pg_get_constraintdef(con.oid)
  FROM members m JOIN pg_constraint con ON m.classid = 'pg_class'::regclass AND con.conrelid = m.objid
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM members m JOIN pg_index i ON m.classid = 'pg_class'::regclass AND i.indrelid = m.objid
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid)
  FROM members m JOIN pg_trigger t ON m.classid = 'pg_class'::regclass AND t.tgrelid = m.objid
 WHERE NOT t.tgisinternal";

fn describe(db: &mut Client) -> BTreeSet<String> {
    db.query(DESCRIBE, &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// What an earlier release left behind: data, a queued job, and a job stopped half-way with
/// its rows and cursor committed (as a crash or a stopped worker would leave it). Releases
/// from 0.2.0 on record the role a job runs as, from 0.3.0 on its tables.
fn old_data(db: &mut Client, release: &str) -> i64 {
    db.batch_execute(&bulk_sql(2_000)).unwrap();
    let (role_column, role) = match release {
        "0.1.0" => ("", ""),
        "0.2.0" => (", queued_by", ", 'postgres'"),
        _ => (
            ", queued_by, tables_schema",
            ", 'postgres', 'backfill'::regnamespace",
        ),
    };
    db.batch_execute(&format!(
        "INSERT INTO backfill.job (process_model_identifier, paths, overwrite, origin{role_column})
         VALUES ('bulk/model', '[{{\"key\": \"number\", \"path\": \"invoice.number\", \"overwrite\": false}}]',
                 false, 'model_update'{role});
         INSERT INTO backfill.job (process_model_identifier, paths, overwrite, origin, state,
                                   instances_total, max_instance_id, last_instance_id,
                                   instances_processed, instances_updated, started_at{role_column})
         SELECT 'other/model', '[{{\"key\": \"status\", \"path\": \"invoice.status\", \"overwrite\": false}}]',
                false, 'manual', 'running', count(*), max(id), 1200,
                count(*) FILTER (WHERE id <= 1200), count(*) FILTER (WHERE id <= 1200), now(){role}
           FROM backfill.process_instance WHERE process_model_identifier = 'other/model';
         INSERT INTO backfill.process_instance_metadata
                (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
         SELECT i.id, 'status',
                backfill.extract_metadata(backfill.latest_task_data(i.id),
                                          '[{{\"key\": \"status\", \"path\": \"invoice.status\"}}]') ->> 'status',
                0, 0
           FROM backfill.process_instance i
          WHERE i.process_model_identifier = 'other/model' AND i.id <= 1200;"
    ))
    .unwrap();
    one_i64(
        db,
        "SELECT count(*) FROM backfill.process_instance_metadata",
    )
}

fn version(db: &mut Client) -> String {
    one_text(
        db,
        "SELECT extversion FROM pg_extension WHERE extname = 'backfill'",
    )
}

/// After `ALTER EXTENSION backfill UPDATE` to the current version: nothing lost, both jobs
/// complete exactly (the half-done one from its cursor), and the objects are those of a fresh
/// install.
fn jobs_complete_and_catalog_matches(cluster: &Cluster, db: &mut Client, rows_before: i64) {
    assert_eq!(
        one_i64(
            db,
            "SELECT count(*) FROM backfill.process_instance_metadata"
        ),
        rows_before
    );
    // Jobs queued before attach existed use the extension's own tables.
    assert_eq!(
        one_i64(
            db,
            "SELECT count(*) FROM backfill.job WHERE tables_schema <> 'backfill'::regnamespace"
        ),
        0
    );
    for job in [1_i64, 2] {
        db.batch_execute(&format!("CALL backfill.run({job})"))
            .unwrap();
        assert_eq!(
            one_text(
                db,
                &format!("SELECT state FROM backfill.job WHERE id = {job}")
            ),
            "succeeded"
        );
    }
    assert!(cluster
        .log()
        .contains("backfill: job 2 resumed for model other/model"));
    assert_eq!(wrong_rows(db, "bulk/model", "number", "invoice.number"), 0);
    assert_eq!(wrong_rows(db, "other/model", "status", "invoice.status"), 0);
    assert_eq!(
        one_i64(
            db,
            "SELECT instances_total - instances_processed FROM backfill.job WHERE id = 2"
        ),
        0
    );

    let upgraded = describe(db);
    let mut fresh = cluster.create_db("fresh");
    let installed = describe(&mut fresh);
    let missing: Vec<_> = installed.difference(&upgraded).collect();
    let extra: Vec<_> = upgraded.difference(&installed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "after the upgrade, missing:\n{missing:#?}\nand not in a fresh install:\n{extra:#?}"
    );
}

/// A server without workers (the jobs here run when the test runs them) with database "old"
/// holding `release` of the extension and `old_data`; the rows written so far.
fn old_release(name: &str, release: &str) -> (Cluster, Client, i64) {
    let cluster = Cluster::start(name, &["backfill.max_workers = 0"]);
    let mut db = cluster.create_db("old");
    db.batch_execute(&format!(
        "DROP EXTENSION backfill; CREATE EXTENSION backfill VERSION '{release}'"
    ))
    .unwrap();
    assert_eq!(version(&mut db), release);
    let rows_before = old_data(&mut db, release);
    (cluster, db, rows_before)
}

#[test]
fn update_from_0_1_0_keeps_data_and_jobs_and_matches_a_fresh_install() {
    let (cluster, mut db, rows_before) = old_release("upgrade", "0.1.0");

    db.batch_execute("ALTER EXTENSION backfill UPDATE TO '0.2.0'")
        .unwrap();
    assert_eq!(version(&mut db), "0.2.0");
    // Jobs of 0.1.0 ran as a superuser: they run as the extension's owner.
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.job WHERE queued_by::text <> 'postgres'"
        ),
        0
    );
    db.batch_execute("ALTER EXTENSION backfill UPDATE").unwrap();
    assert_eq!(version(&mut db), env!("CARGO_PKG_VERSION"));
    jobs_complete_and_catalog_matches(&cluster, &mut db, rows_before);
}

#[test]
fn update_from_0_2_0_keeps_data_and_jobs_and_matches_a_fresh_install() {
    let (cluster, mut db, rows_before) = old_release("upgrade-0.2", "0.2.0");
    db.batch_execute("ALTER EXTENSION backfill UPDATE").unwrap();
    assert_eq!(version(&mut db), env!("CARGO_PKG_VERSION"));
    jobs_complete_and_catalog_matches(&cluster, &mut db, rows_before);
}

#[test]
fn update_from_0_3_0_keeps_data_and_jobs_and_matches_a_fresh_install() {
    let (cluster, mut db, rows_before) = old_release("upgrade-0.3", "0.3.0");
    db.batch_execute("ALTER EXTENSION backfill UPDATE").unwrap();
    assert_eq!(version(&mut db), env!("CARGO_PKG_VERSION"));
    // Jobs of 0.3.0 are whole jobs: no parts, and the progress view shows them as before.
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.progress WHERE parts IS NULL"
        ),
        2
    );
    jobs_complete_and_catalog_matches(&cluster, &mut db, rows_before);
}

#[test]
fn update_from_0_4_0_keeps_data_jobs_and_grants_and_matches_a_fresh_install() {
    let (cluster, mut db, rows_before) = old_release("upgrade-0.4", "0.4.0");
    // enqueue gains a parameter, so it is a new function: what was granted on the old one
    // holds for the new one.
    db.batch_execute(
        "CREATE ROLE upgrade_ops;
         GRANT EXECUTE ON FUNCTION backfill.enqueue(text, text[], boolean) TO upgrade_ops WITH GRANT OPTION",
    )
    .unwrap();
    db.batch_execute("ALTER EXTENSION backfill UPDATE").unwrap();
    assert_eq!(version(&mut db), env!("CARGO_PKG_VERSION"));
    assert_eq!(
        one_text(
            &mut db,
            "SELECT has_function_privilege('upgrade_ops', 'backfill.enqueue(text, text[], boolean, timestamptz)', 'EXECUTE WITH GRANT OPTION')::text
                    || ' ' || has_function_privilege('public', 'backfill.enqueue(text, text[], boolean, timestamptz)', 'EXECUTE')::text"
        ),
        "true false"
    );
    db.batch_execute(
        "REVOKE ALL ON FUNCTION backfill.enqueue(text, text[], boolean, timestamptz) FROM upgrade_ops CASCADE",
    )
    .unwrap();
    // Jobs of 0.4.0 have no not_before: nothing holds them.
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.progress WHERE waiting_for IS NULL"
        ),
        2
    );
    jobs_complete_and_catalog_matches(&cluster, &mut db, rows_before);
}

#[test]
fn update_from_0_5_0_keeps_data_jobs_and_grants_and_matches_a_fresh_install() {
    let (cluster, mut db, rows_before) = old_release("upgrade-0.5", "0.5.0");
    // A count as 0.5.0 made it (it does not say whose it was; the library is the current one,
    // whose count needs the new recording function).
    db.batch_execute(
        "INSERT INTO backfill.coverage_count VALUES ('bulk/model', 'k', 1, 1, 1, now())",
    )
    .unwrap();
    db.batch_execute("ALTER EXTENSION backfill UPDATE").unwrap();
    assert_eq!(version(&mut db), env!("CARGO_PKG_VERSION"));
    assert_eq!(
        one_i64(&mut db, "SELECT count(*) FROM backfill.coverage_count"),
        0
    );
    // What was granted on the coverage view holds after it is replaced (in a database of its
    // own: a grant taken back leaves an ACL a fresh install does not have).
    let mut granted = cluster.create_db("granted");
    granted
        .batch_execute(
            "DROP EXTENSION backfill;
             CREATE EXTENSION backfill VERSION '0.5.0';
             CREATE ROLE upgrade_reader;
             GRANT SELECT ON backfill.coverage TO upgrade_reader;
             ALTER EXTENSION backfill UPDATE;",
        )
        .unwrap();
    assert_eq!(
        one_text(
            &mut granted,
            "SELECT has_table_privilege('upgrade_reader', 'backfill.coverage', 'SELECT')::text"
        ),
        "true"
    );
    jobs_complete_and_catalog_matches(&cluster, &mut db, rows_before);
}
