//! `ALTER EXTENSION backfill UPDATE` from every earlier release keeps data, queued jobs and
//! jobs in progress, and leaves the same objects as a fresh install.
//!
//! The install scripts of 0.1.0 to 0.7.0 are frozen in tests/upgrade/ and copied next
//! to the current one by scripts/test; the library is the current one (it keeps every C
//! symbol their scripts name).

mod common;

use common::{add_path, bulk_sql, one_i64, one_text, wait_ended, wait_for, wrong_rows, Cluster};
use postgres::Client;
use std::collections::BTreeSet;
use std::time::Duration;

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
                backfill.extract_metadata(
                    (SELECT d.data FROM backfill.task t JOIN backfill.json_data d ON d.hash = t.json_data_hash
                      WHERE t.process_instance_id = i.id AND t.state = 'COMPLETED'
                      ORDER BY t.end_in_seconds DESC NULLS LAST, t.guid DESC LIMIT 1),
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
            "SELECT count(*) FROM backfill.job WHERE tables_schema <> 'backfill'"
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

#[test]
fn update_from_0_6_0_holds_schemas_by_name_keeps_grants_and_matches_a_fresh_install() {
    let (cluster, mut db, rows_before) = old_release("upgrade-0.6", "0.6.0");
    // A job on tables whose schema needs quoting, and one whose schema was dropped since.
    db.batch_execute(
        r#"CREATE SCHEMA "Odd ""App"".vx";
           CREATE SCHEMA gone;
           INSERT INTO backfill.job (process_model_identifier, paths, overwrite, origin, state,
                                     queued_by, tables_schema)
           VALUES ('x', '[]', false, 'manual', 'cancelled', 'postgres', '"Odd ""App"".vx"'::regnamespace),
                  ('y', '[]', false, 'manual', 'cancelled', 'postgres', 'gone'::regnamespace);
           DROP SCHEMA gone;
           INSERT INTO backfill.attachment (schema_name, attached_by)
           VALUES ('"Odd ""App"".vx"'::regnamespace, 'postgres');"#,
    )
    .unwrap();
    db.batch_execute("ALTER EXTENSION backfill UPDATE").unwrap();
    assert_eq!(version(&mut db), env!("CARGO_PKG_VERSION"));
    assert_eq!(
        one_text(
            &mut db,
            "SELECT string_agg(tables_schema, ' | ' ORDER BY id) FROM backfill.job WHERE id > 2"
        )
        .replace(|c: char| c.is_ascii_digit(), "N"),
        r#"Odd "App".vx | NNNNN"#
    );
    assert_eq!(
        one_text(&mut db, "SELECT schema_name::text FROM backfill.attachment"),
        r#"Odd "App".vx"#
    );
    // Nothing of the extension's is of a type pg_upgrade refuses.
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
              WHERE c.relnamespace = 'backfill'::regnamespace AND a.attnum > 0
                AND a.atttypid IN ('regcollation'::regtype, 'regconfig'::regtype,
                                   'regdictionary'::regtype, 'regnamespace'::regtype,
                                   'regoper'::regtype, 'regoperator'::regtype,
                                   'regproc'::regtype, 'regprocedure'::regtype)"
        ),
        0
    );
    db.batch_execute("DELETE FROM backfill.job WHERE id > 2; DELETE FROM backfill.attachment")
        .unwrap();
    // What was granted on the progress view, which the update makes again, holds (in a
    // database of its own: a grant taken back leaves an ACL a fresh install does not have).
    let mut granted = cluster.create_db("granted");
    granted
        .batch_execute(
            "DROP EXTENSION backfill;
             CREATE EXTENSION backfill VERSION '0.6.0';
             CREATE ROLE upgrade_watcher;
             CREATE ROLE upgrade_delegate;
             GRANT SELECT ON backfill.progress TO upgrade_watcher;
             GRANT SELECT ON backfill.progress TO upgrade_delegate WITH GRANT OPTION;
             ALTER EXTENSION backfill UPDATE;",
        )
        .unwrap();
    assert_eq!(
        one_text(
            &mut granted,
            "SELECT has_table_privilege('upgrade_watcher', 'backfill.progress', 'SELECT')::text
                    || ' ' || has_table_privilege('upgrade_delegate', 'backfill.progress', 'SELECT WITH GRANT OPTION')::text
                    || ' ' || has_table_privilege('upgrade_watcher', 'backfill.progress', 'SELECT WITH GRANT OPTION')::text"
        ),
        "true true false"
    );
    jobs_complete_and_catalog_matches(&cluster, &mut db, rows_before);
}

#[test]
fn update_from_0_7_0_catches_up_a_model_inserted_with_paths_and_matches_a_fresh_install() {
    let (cluster, mut db, rows_before) = old_release("upgrade-0.7", "0.7.0");
    let jobs = |db: &mut Client| one_i64(db, "SELECT count(*) FROM backfill.job");
    let before = jobs(&mut db);
    // A model inserted with paths while it has instances: 0.7.0 queues nothing.
    db.batch_execute(
        "INSERT INTO backfill.process_instance (id, process_model_identifier, status)
         VALUES (900001, 'late/model', 'complete');
         INSERT INTO backfill.process_model (id, metadata_extraction_paths)
         VALUES ('late/model', '[{\"key\": \"k\", \"path\": \"k\"}]')",
    )
    .unwrap();
    assert_eq!(jobs(&mut db), before);
    db.batch_execute("ALTER EXTENSION backfill UPDATE").unwrap();
    assert_eq!(version(&mut db), env!("CARGO_PKG_VERSION"));
    db.batch_execute(
        "INSERT INTO backfill.process_instance (id, process_model_identifier, status)
         VALUES (900002, 'later/model', 'complete');
         INSERT INTO backfill.process_model (id, metadata_extraction_paths)
         VALUES ('later/model', '[{\"key\": \"k\", \"path\": \"k\"}]')",
    )
    .unwrap();
    assert_eq!(
        one_text(
            &mut db,
            "SELECT process_model_identifier || ' ' || state FROM backfill.job ORDER BY id DESC LIMIT 1"
        ),
        "later/model queued"
    );
    db.batch_execute(
        "DELETE FROM backfill.job WHERE id > 2;
         DELETE FROM backfill.process_model WHERE id IN ('late/model', 'later/model');
         DELETE FROM backfill.process_instance WHERE id > 900000",
    )
    .unwrap();
    jobs_complete_and_catalog_matches(&cluster, &mut db, rows_before);
}

/// The package upgraded and the server restarted, `ALTER EXTENSION backfill UPDATE` not run
/// yet: this build's library on a database whose objects are 0.6.0's. The library says so, in
/// the log once, in check_worker and in every function's error, with what to run; the model
/// updates of the application still queue jobs, which wait for the update and then run.
#[test]
fn a_library_newer_than_the_objects_says_so_and_its_jobs_wait_for_the_update() {
    let cluster = Cluster::start("behind", &["log_min_messages = debug1"]);
    let (mut db, notices) = cluster.create_db_with_notices("old");
    db.batch_execute("DROP EXTENSION backfill; CREATE EXTENSION backfill VERSION '0.6.0'")
        .unwrap();
    db.batch_execute(&bulk_sql(300)).unwrap();
    let behind = format!(
        "database \"old\" has backfill 0.6.0; the server runs backfill {}",
        env!("CARGO_PKG_VERSION")
    );
    let hint = "Run ALTER EXTENSION backfill UPDATE in database \"old\"";

    notices.lock().unwrap().clear();
    assert!(!db
        .query_one("SELECT backfill.check_worker()", &[])
        .unwrap()
        .get::<_, bool>(0));
    let said = notices.lock().unwrap().join("\n");
    assert!(said.contains(&behind) && said.contains(hint), "{said}");

    for call in [
        "SELECT backfill.enqueue('bulk/model')",
        "SELECT backfill.wait(1)",
        "SELECT backfill.cancel(1)",
        "SELECT backfill.count_coverage()",
        "SELECT backfill.latest_task_data(1)",
        "SELECT * FROM backfill.preview('bulk/model', '[{\"key\": \"n\", \"path\": \"invoice.number\"}]')",
        "SELECT * FROM backfill.preview_summary('bulk/model', '[{\"key\": \"n\", \"path\": \"invoice.number\"}]')",
        "CALL backfill.run(1)",
        "SELECT backfill.attach('public')",
        "SELECT backfill.detach()",
    ] {
        let e = db.batch_execute(call).unwrap_err();
        let e = e.as_db_error().unwrap_or_else(|| panic!("{call}: {e}"));
        assert_eq!(e.code().code(), "55000", "{call}: {}", e.message());
        assert_eq!(e.message(), behind, "{call}");
        assert!(e.hint().unwrap_or_default().starts_with(hint), "{call}");
    }

    // The application's model updates work and queue jobs; each asks for a worker, which
    // leaves the database: the log says why once.
    let jobs: Vec<i64> = [
        ("n", "invoice.number"),
        ("s", "invoice.status"),
        ("t", "invoice.total"),
    ]
    .iter()
    .map(|(key, path)| add_path(&mut db, "bulk/model", key, path))
    .collect();
    let left = "backfill worker leaves database \"old\": its extension objects are not those of the library";
    wait_for(
        "three workers to come and leave",
        Duration::from_secs(120),
        || (cluster.log().matches(left).count() >= 3).then_some(()),
    );
    let log = cluster.log();
    assert_eq!(
        log.matches(&format!("LOG:  backfill worker: {behind}; its jobs wait."))
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.job WHERE state = 'queued'"
        ),
        3
    );

    // docs/operating.md's query for the databases still behind finds this one, and not
    // one up to date.
    let behind_query = behind_query();
    assert_eq!(
        one_text(&mut db, &format!("SELECT string_agg(concat_ws('|', current_database, extversion, default_version), ',') FROM ({behind_query}) AS q")),
        format!("old|0.6.0|{}", env!("CARGO_PKG_VERSION"))
    );
    let mut current = cluster.create_db("current");
    assert_eq!(
        one_i64(
            &mut current,
            &format!("SELECT count(*) FROM ({behind_query}) AS q")
        ),
        0
    );

    db.batch_execute("ALTER EXTENSION backfill UPDATE").unwrap();
    assert_eq!(
        one_i64(
            &mut db,
            &format!("SELECT count(*) FROM ({behind_query}) AS q")
        ),
        0
    );
    assert!(db
        .query_one("SELECT backfill.check_worker()", &[])
        .unwrap()
        .get::<_, bool>(0));
    for (job, (key, path)) in jobs.iter().zip([
        ("n", "invoice.number"),
        ("s", "invoice.status"),
        ("t", "invoice.total"),
    ]) {
        assert_eq!(wait_ended(&cluster, "old", *job), "succeeded");
        assert_eq!(wrong_rows(&mut db, "bulk/model", key, path), 0);
    }
}

/// The query docs/operating.md gives for "the databases still behind" (run in each database).
fn behind_query() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operating.md")).unwrap();
    let marker = "psql -XAt -d \"$db\" -c \"";
    let start = doc.find(marker).expect("docs/operating.md's query") + marker.len();
    let end = start + doc[start..].find('"').unwrap();
    doc[start..end].to_owned()
}
