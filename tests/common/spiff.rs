//! A SpiffWorkflow database for the tests: its tables (tests/fixtures/spiffworkflow/schema.sql)
//! in schema `app` owned by role `spiff`, data as scripts/spiff_data.py writes it, the values
//! Python would store, and the live engine's own saves racing a job.

use super::{json_string, one_i64, paths_json, Cluster, SPIFF_GRANTS};
use postgres::Client;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SCHEMA_SQL: &str = include_str!("../fixtures/spiffworkflow/schema.sql");
pub const INVOICE: &str = "finance/invoice";

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Database `db` of `cluster` with the extension, role `spiff` owning the database (as
/// SpiffWorkflow's role usually does) and its schema `app` with
/// SpiffWorkflow's tables and `instances` instances of generated data; a connection as spiff.
pub fn spiff_database(cluster: &Cluster, db: &str, instances: usize) -> Client {
    cluster.create_db(db);
    let spiff = spiff_tables(cluster, db);
    cluster.psql("spiff", db, &generate(instances, 1));
    spiff
}

/// In database `db` (which has the extension): role `spiff` owning it, and its schema `app`
/// with SpiffWorkflow's tables, empty; a connection as spiff.
pub fn spiff_tables(cluster: &Cluster, db: &str) -> Client {
    cluster
        .connect(db)
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE spiff LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             ALTER DATABASE \"{db}\" OWNER TO spiff;
             CREATE SCHEMA app AUTHORIZATION spiff;
             {SPIFF_GRANTS}"
        ))
        .unwrap();
    let mut spiff = cluster.connect_as("spiff", db);
    spiff
        .batch_execute(&format!("SET search_path = app; {SCHEMA_SQL}"))
        .unwrap();
    spiff.batch_execute("RESET search_path").unwrap();
    spiff
}

/// The psql script of scripts/spiff_data.py for `instances` instances from id `first`.
pub fn generate(instances: usize, first: i64) -> String {
    generate_in("app", instances, first)
}

/// `generate`, into the tables of `schema`.
pub fn generate_in(schema: &str, instances: usize, first: i64) -> String {
    let out = Command::new("python3")
        .arg(repo().join("scripts/spiff_data.py"))
        .args([
            "generate",
            "--schema",
            schema,
            "--instances",
            &instances.to_string(),
        ])
        .args(["--first-id", &first.to_string()])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub type Rows = Vec<(i64, String, String)>;

/// What SpiffWorkflow would store for the model's instances with these paths, computed by
/// Python from the tables' raw content (scripts/spiff_data.py reference).
pub fn reference(db: &mut Client, model: &str, paths: &[(&str, &str)]) -> Rows {
    let instances: Vec<i64> = db
        .query(
            "SELECT id::bigint FROM app.process_instance WHERE process_model_identifier = $1",
            &[&model],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let tasks: Vec<serde_json::Value> = db
        .query(
            "SELECT t.process_instance_id::bigint, t.state::text, t.end_in_seconds::text,
                    t.guid::text, t.json_data_hash::text
               FROM app.task t JOIN app.process_instance i ON i.id = t.process_instance_id
              WHERE i.process_model_identifier = $1",
            &[&model],
        )
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::json!([
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, Option<String>>(2),
                r.get::<_, String>(3),
                r.get::<_, String>(4)
            ])
        })
        .collect();
    let data: serde_json::Map<String, serde_json::Value> = db
        .query("SELECT hash::text, data::text FROM app.json_data", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1).into()))
        .collect();
    let paths: Vec<serde_json::Value> = paths
        .iter()
        .map(|(key, path)| serde_json::json!({"key": key, "path": path}))
        .collect();
    let input =
        serde_json::json!({"tasks": tasks, "data": data, "instances": instances, "paths": paths});
    let mut child = Command::new("python3")
        .arg(repo().join("scripts/spiff_data.py"))
        .arg("reference")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The model's metadata rows for `keys`, as stored.
pub fn stored(db: &mut Client, model: &str, keys: &[&str]) -> Rows {
    let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    db.query(
        "SELECT m.process_instance_id::bigint, m.key::text, m.value::text
           FROM app.process_instance_metadata m
           JOIN app.process_instance i ON i.id = m.process_instance_id
          WHERE i.process_model_identifier = $1 AND m.key = ANY ($2)
          ORDER BY 1, 2",
        &[&model, &keys],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Rows compared as sets (and by count), so a failure shows the first differences, not two
/// long lists.
pub fn assert_rows_equal(actual: &Rows, expected: &Rows) {
    let have: std::collections::HashSet<&(i64, String, String)> = actual.iter().collect();
    let want: std::collections::HashSet<&(i64, String, String)> = expected.iter().collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|r| !have.contains(r))
        .take(5)
        .collect();
    let extra: Vec<_> = actual
        .iter()
        .filter(|r| !want.contains(r))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && actual.len() == expected.len(),
        "{} rows stored, {} expected; expected but not stored: {missing:#?}; stored but not expected: {extra:#?}",
        actual.len(),
        expected.len()
    );
}

/// sync_process_models for one model; returns its action.
pub fn sync_model(db: &mut Client, model: &str, paths: &[(&str, &str)]) -> String {
    let models = format!(
        "[{{\"id\": {}, \"display_name\": \"Invoice\", \"metadata_extraction_paths\": {}}}]",
        json_string(model),
        paths_json(paths)
    );
    db.query_one(
        "SELECT action FROM backfill.sync_process_models($1::text::jsonb)",
        &[&models],
    )
    .unwrap()
    .get(0)
}

/// The ids of the model's instances, in order.
pub fn model_instances(db: &mut Client) -> Vec<i32> {
    db.query(
        "SELECT id FROM app.process_instance WHERE process_model_identifier = $1 ORDER BY id",
        &[&INVOICE],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

pub fn newest_job(db: &mut Client) -> i64 {
    one_i64(
        db,
        "SELECT max(id) FROM backfill.job WHERE parent_id IS NULL",
    )
}

pub fn wait_done(db: &mut Client, job: i64) -> String {
    let state: String = db
        .query_one("SELECT backfill.wait($1, '120 s')", &[&job])
        .unwrap()
        .get(0);
    state
}

pub const PATHS: &[(&str, &str)] = &[
    ("number", "invoice.number"),
    ("total", "invoice.total"),
    ("amount", "amount"),
    ("big", "big"),
    ("approved", "approved"),
    ("nested", "nested"),
    ("city", "customer.address.city"),
    ("note", "note"),
    ("nul_list", "nul_list"),
    ("nothing", "nothing"),
];

pub fn keys<'a>(paths: &[(&'a str, &str)]) -> Vec<&'a str> {
    paths.iter().map(|(k, _)| *k).collect()
}

/// SpiffWorkflow's save of one instance, as its ORM does it: the instance row first, then the
/// metadata row looked up by (instance, key) and inserted when absent, without ON CONFLICT.
/// Returns the value it wrote.
pub fn spiffworkflow_save(db: &mut Client, instance: i32) -> Result<String, postgres::Error> {
    let mut tx = db.transaction()?;
    let version: i32 = tx
        .query_one(
            "UPDATE app.process_instance SET updated_at_in_seconds = updated_at_in_seconds + 1
              WHERE id = $1 RETURNING updated_at_in_seconds",
            &[&instance],
        )?
        .get(0);
    let value = format!("app-{version}");
    let found = tx.query_opt(
        "SELECT id FROM app.process_instance_metadata WHERE process_instance_id = $1 AND key = 'number'",
        &[&instance],
    )?;
    // The application's own work between its read and its write.
    std::thread::sleep(Duration::from_millis(2));
    match found {
        Some(row) => {
            let id: i32 = row.get(0);
            tx.execute(
                "UPDATE app.process_instance_metadata SET value = $2, updated_at_in_seconds = 1 WHERE id = $1",
                &[&id, &value],
            )?;
        }
        None => {
            tx.execute(
                "INSERT INTO app.process_instance_metadata
                        (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
                 VALUES ($1, 'number', $2, 1, 1)",
                &[&instance, &value],
            )?;
        }
    }
    tx.commit()?;
    Ok(value)
}

/// What the application clients of `race_the_job` did.
pub struct Race {
    pub failures: Vec<String>,
    /// The last value each saved instance got, with its version.
    pub written: HashMap<i32, (i32, String)>,
    pub saves: i64,
}

/// `clients` application clients (connections from `connect`) saving instances of `ids` just
/// ahead of the cursor of `job` (which fills `number`), until it ends; the job's final state
/// and what the clients did.
pub fn race_the_job(
    connect: impl Fn() -> Client,
    spiff: &mut Client,
    job: i64,
    ids: Vec<i32>,
    clients: u64,
) -> (String, Race) {
    let ids = Arc::new(ids);
    let done = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let written = Arc::new(Mutex::new(HashMap::<i32, (i32, String)>::new()));
    let saves = Arc::new(AtomicI64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|n| {
            let (ids, done, failures, written, saves) = (
                ids.clone(),
                done.clone(),
                failures.clone(),
                written.clone(),
                saves.clone(),
            );
            let mut app = connect();
            std::thread::spawn(move || {
                let mut state = 0x9e37_79b9_u64 + n;
                while !done.load(Ordering::Relaxed) {
                    // An instance just ahead of the job's cursor (of one of its parts, when it
                    // is split: the clients take turns).
                    let cursors: Vec<i64> = app
                        .query(
                            "SELECT coalesce(last_instance_id, 0) FROM backfill.job
                              WHERE (id = $1 AND parts IS NULL) OR parent_id = $1 ORDER BY id",
                            &[&job],
                        )
                        .unwrap()
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    let cursor = cursors[n as usize % cursors.len()];
                    let start = ids.partition_point(|&id| i64::from(id) <= cursor);
                    if start >= ids.len() {
                        break;
                    }
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let instance = ids[(start + (state % 60) as usize).min(ids.len() - 1)];
                    match spiffworkflow_save(&mut app, instance) {
                        Ok(value) => {
                            let version: i32 = value["app-".len()..].parse().unwrap();
                            let mut written = written.lock().unwrap();
                            let entry = written.entry(instance).or_insert((0, String::new()));
                            if version > entry.0 {
                                *entry = (version, value);
                            }
                            saves.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("instance {instance}: {e:?}")),
                    }
                }
            })
        })
        .collect();
    let state = wait_done(spiff, job);
    done.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let race = Race {
        failures: std::mem::take(&mut *failures.lock().unwrap()),
        written: std::mem::take(&mut *written.lock().unwrap()),
        saves: saves.load(Ordering::Relaxed),
    };
    (state, race)
}

/// No application transaction failed, enough of them ran, every value the application wrote
/// is there and every other instance has the job's value (`reference`).
pub fn assert_the_application_kept_its_values(spiff: &mut Client, race: &Race) {
    assert!(
        race.failures.is_empty(),
        "{} application transactions failed: {:#?}",
        race.failures.len(),
        &race.failures[..race.failures.len().min(5)]
    );
    assert!(
        race.saves >= 100,
        "only {} saves ran during the job",
        race.saves
    );
    let mut expected: Rows = reference(spiff, INVOICE, &[("number", "invoice.number")])
        .into_iter()
        .filter(|(id, _, _)| !race.written.contains_key(&(*id as i32)))
        .chain(
            race.written
                .iter()
                .map(|(id, (_, v))| (i64::from(*id), "number".to_owned(), v.clone())),
        )
        .collect();
    expected.sort();
    assert_rows_equal(&stored(spiff, INVOICE, &["number"]), &expected);
}
