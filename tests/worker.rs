//! The launcher and the workers: automatic backfill after a model update, a worker started on
//! commit, every database served without configuration, settings on reload, and recovery from
//! SIGTERM, kill -9 and immediate shutdown.

mod common;

use common::{
    add_path, bulk_sql, in_background, one_i64, one_text, start_app, throttle_of, wait_ended,
    wait_for, wrong_rows, Cluster,
};
use postgres::Client;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

const BULK: &str = "bulk/model";
const N: i64 = 10_000;

/// A server with database "app" and the bulk data loaded; its workers start when a job is
/// queued. Each job runs in one worker, its counters on its own row: tests/split.rs has the
/// same recoveries for a job split across workers.
fn start(name: &str, extra: &[&str]) -> (Cluster, Client) {
    let mut conf = vec!["backfill.workers_per_job = 1"];
    conf.extend_from_slice(extra);
    start_app(name, true, &conf, &bulk_sql(N))
}

fn wait_for_worker(cluster: &Cluster) -> i32 {
    wait_for_worker_other_than(cluster, None)
}

/// Waits for a worker whose pid is not `gone`: until the postmaster has reaped a stopped or
/// killed worker, a session can still read that worker's pid from shared memory.
fn wait_for_worker_other_than(cluster: &Cluster, gone: Option<i32>) -> i32 {
    wait_for(
        "the worker to serve database app",
        Duration::from_secs(30),
        || {
            let mut db = cluster.connect("app");
            let pid = db
                .query_one("SELECT backfill.worker_pid()", &[])
                .ok()?
                .get::<_, Option<i32>>(0)?;
            (Some(pid) != gone).then_some(pid)
        },
    )
}

fn processed(db: &mut Client, job: i64) -> i64 {
    counters(db, job).0
}

/// The job's instances processed, instances updated and errors.
fn counters(db: &mut Client, job: i64) -> (i64, i64, i64) {
    let row = db
        .query_one(
            "SELECT instances_processed, instances_updated, errors FROM backfill.job WHERE id = $1",
            &[&job],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Waits, at most `within`, until the job has processed at least `least` instances.
fn wait_until_processed(db: &mut Client, job: i64, least: i64, within: Duration) {
    wait_for(&format!("{least} instances processed"), within, || {
        (processed(db, job) >= least).then_some(())
    });
}

fn wait_done(cluster: &Cluster, job: i64) -> String {
    wait_ended(cluster, "app", job)
}

/// Every instance of the bulk model has exactly one row per key, equal to the extraction of
/// its latest completed task data, and the job processed each instance exactly once.
fn assert_complete(db: &mut Client, job: i64, keys: &[(&str, &str)]) {
    let row = db
        .query_one("SELECT state, instances_total, instances_processed, errors FROM backfill.job WHERE id = $1", &[&job])
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "succeeded");
    assert_eq!(row.get::<_, i64>(1), N);
    assert_eq!(
        row.get::<_, i64>(2),
        N,
        "processed counts every instance once"
    );
    assert_eq!(row.get::<_, i64>(3), 0);
    for (key, path) in keys {
        assert_eq!(wrong_rows(db, BULK, key, path), 0, "key {key}");
        assert_eq!(
            db.query_one(
                "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = $1",
                &[key]
            )
            .unwrap()
            .get::<_, i64>(0),
            N,
            "no row for another model, none twice"
        );
    }
}

#[test]
fn model_update_is_backfilled_without_any_call_and_wakes_the_worker_at_once() {
    // A long naptime: only the request at commit can start a worker within a second.
    let (cluster, mut db) = start("worker-auto", &["backfill.naptime = '30s'"]);
    wait_for("the launcher", Duration::from_secs(30), || {
        (one_i64(
            &mut db,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'backfill launcher'",
        ) == 1)
            .then_some(())
    });
    // No worker while the database has nothing to run.
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'backfill worker'"
        ),
        0
    );

    db.batch_execute("BEGIN").unwrap();
    db.batch_execute(
        r#"UPDATE backfill.process_model
              SET metadata_extraction_paths = metadata_extraction_paths
                  || '[{"key": "status", "path": "invoice.status"}, {"key": "tags", "path": "invoice.tags"}]'
            WHERE id = 'bulk/model'"#,
    )
    .unwrap();
    let job = one_i64(
        &mut db,
        "SELECT max(id) FROM backfill.job WHERE parent_id IS NULL",
    );
    db.batch_execute("COMMIT").unwrap();
    let committed = Instant::now();
    wait_until_processed(&mut db, job, 1, Duration::from_secs(10));
    let first_batch = committed.elapsed();
    assert!(
        first_batch < Duration::from_secs(1),
        "first batch {first_batch:?} after commit"
    );
    println!("commit to first committed batch: {first_batch:?}");

    assert_eq!(wait_done(&cluster, job), "succeeded");
    assert_complete(
        &mut db,
        job,
        &[("status", "invoice.status"), ("tags", "invoice.tags")],
    );
    let log = cluster.log();
    assert!(
        log.contains(&format!(
            "backfill: job {job} started for model bulk/model: keys status, tags; {N} instances"
        )),
        "{log}"
    );
    assert!(log.contains(&format!("backfill: job {job} succeeded for model bulk/model: {N} instances processed, {N} updated, 0 errors")), "{log}");
}

#[test]
fn kill_9_of_the_worker_mid_job_resumes_after_restart() {
    let (cluster, mut db) = start("worker-kill9", &["backfill.batch_delay = '10ms'"]);
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    let pid = wait_for_worker(&cluster);
    wait_until_processed(&mut db, job, 2000, Duration::from_secs(60));
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    drop(db); // the postmaster resets every connection after a crash

    wait_for_worker_other_than(&cluster, Some(pid));
    assert_eq!(wait_done(&cluster, job), "succeeded");
    let mut db = cluster.connect("app");
    assert_complete(&mut db, job, &[("number", "invoice.number")]);
    let log = cluster.log();
    assert!(
        log.contains(&format!("(PID {pid}) was terminated by signal 9")),
        "{log}"
    );
    assert!(resumed_after_some(&log, job), "{log}");
}

#[test]
fn immediate_shutdown_mid_job_resumes_at_the_cursor() {
    let (mut cluster, mut db) = start("worker-immediate", &["backfill.batch_delay = '10ms'"]);
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    wait_until_processed(&mut db, job, 2000, Duration::from_secs(60));
    drop(db);
    cluster.pg_stop("immediate");
    cluster.pg_start();
    assert_eq!(wait_done(&cluster, job), "succeeded");
    let mut db = cluster.connect("app");
    assert_complete(&mut db, job, &[("number", "invoice.number")]);
    let log = cluster.log();
    assert!(
        log.contains("database system was not properly shut down; automatic recovery in progress"),
        "{log}"
    );
    assert!(resumed_after_some(&log, job), "{log}");
}

/// The log shows the job resumed with instances already done: it did not start over.
fn resumed_after_some(log: &str, job: i64) -> bool {
    log.lines().any(|line| {
        line.split_once(&format!(
            "backfill: job {job} resumed for model bulk/model: keys number; "
        ))
        .and_then(|(_, rest)| rest.split(' ').next()?.parse::<i64>().ok())
        .is_some_and(|done| done > 0 && done < N)
    })
}

#[test]
fn sigterm_finishes_the_batch_exits_cleanly_and_the_job_completes() {
    let (cluster, mut db) = start("worker-sigterm", &["backfill.batch_delay = '10ms'"]);
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    let pid = wait_for_worker(&cluster);
    wait_until_processed(&mut db, job, 1000, Duration::from_secs(60));
    assert!(db
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap()
        .get::<_, bool>(0));
    wait_for_worker_other_than(&cluster, Some(pid));
    assert_eq!(wait_done(&cluster, job), "succeeded");
    assert_complete(&mut db, job, &[("number", "invoice.number")]);
    let log = cluster.log();
    assert!(
        log.contains(&format!(
            "backfill worker: stopping job {job} at a batch boundary on shutdown request"
        )),
        "{log}"
    );
    assert!(
        log.contains("backfill worker exiting on shutdown request"),
        "{log}"
    );
    assert!(
        !log.contains("terminated by signal"),
        "a clean exit, not a crash: {log}"
    );

    // A fast shutdown of the whole server stops the worker the same way.
    let job = add_path(&mut db, BULK, "total", "invoice.total");
    wait_until_processed(&mut db, job, 1000, Duration::from_secs(60));
    drop(db);
    let mut cluster = cluster;
    cluster.pg_stop("fast");
    assert!(
        cluster
            .log()
            .matches("backfill worker exiting on shutdown request")
            .count()
            >= 2
    );
    cluster.pg_start();
    assert_eq!(wait_done(&cluster, job), "succeeded");
    assert_complete(
        &mut cluster.connect("app"),
        job,
        &[("total", "invoice.total")],
    );
}

#[test]
fn reload_changes_the_batch_size_of_a_running_job() {
    let (cluster, mut db) = start("worker-reload", &["backfill.batch_delay = '50ms'"]);
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    let mut steps = Vec::new();
    let mut reloaded = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = processed(&mut db, job);
        if steps.last() != Some(&p) {
            steps.push(p);
        }
        if !reloaded && p >= 1000 {
            cluster.set_and_reload("backfill.batch_size", "1000");
            reloaded = true;
        }
        if p == N || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(3));
    }
    let deltas: Vec<i64> = steps.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        deltas.iter().take(5).all(|d| d % 100 == 0 && *d <= 300),
        "small batches first: {deltas:?}"
    );
    assert!(
        deltas.iter().filter(|d| **d == 1000).count() >= 2,
        "batches of 1000 after the reload: {deltas:?}"
    );
    assert!(
        deltas.iter().all(|d| *d <= 300 || d % 100 == 0),
        "whole batches only: {deltas:?}"
    );
    assert_eq!(wait_done(&cluster, job), "succeeded");
    assert_complete(&mut db, job, &[("number", "invoice.number")]);
    assert!(cluster
        .log()
        .contains("backfill worker: configuration reloaded"));
}

#[test]
fn concurrent_writers_are_neither_blocked_nor_overwritten() {
    let (cluster, mut db) = start("worker-concurrent", &["backfill.batch_delay = '20ms'"]);
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    wait_until_processed(&mut db, job, 1, Duration::from_secs(30));
    // The live engine writes the key for instances the job has not reached yet, and for some
    // it has, one transaction at a time.
    let mut engine = cluster.connect("app");
    let mut written = 0;
    for id in (1..12_500i64).step_by(97) {
        let n = engine
            .execute(
                "INSERT INTO backfill.process_instance_metadata
                        (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
                 SELECT id, 'number', 'from the engine', 1, 1 FROM backfill.process_instance
                  WHERE id = $1 AND process_model_identifier = 'bulk/model'
                 ON CONFLICT DO NOTHING",
                &[&id],
            )
            .unwrap();
        written += n as i64;
    }
    assert!(written > 50);
    assert_eq!(wait_done(&cluster, job), "succeeded");
    let (processed, updated, errors) = counters(&mut db, job);
    assert_eq!((processed, errors), (N, 0));
    let engine_rows = one_i64(
        &mut db,
        "SELECT count(*) FROM backfill.process_instance_metadata WHERE value = 'from the engine'",
    );
    assert_eq!(
        engine_rows, written,
        "the job did not overwrite the engine's rows"
    );
    assert_eq!(updated, N - written, "nor counted them as its own");
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'number'"
        ),
        N
    );
}

/// Whether the backend `waiter` waits for the transaction of the backend `holder`.
fn waits_for(db: &mut Client, waiter: i32, holder: i32) -> bool {
    db.query_one(
        "SELECT EXISTS (SELECT FROM pg_locks w
                          JOIN pg_locks h ON h.locktype = 'transactionid'
                                         AND h.transactionid = w.transactionid AND h.granted
                         WHERE w.pid = $1 AND NOT w.granted AND h.pid = $2)",
        &[&waiter, &holder],
    )
    .unwrap()
    .get(0)
}

#[test]
fn rows_inserted_behind_a_batchs_back_are_kept_and_the_batch_is_written_again() {
    // A batch inserts without ON CONFLICT while it can. Two writers that do not lock the
    // instance row first insert rows of the job's key for instances of its first batch and
    // keep their transactions open: the batch waits for the first, meets its row (23505), is
    // written again skipping the rows there, waits for the second, meets its row, and is
    // written a third time with ON CONFLICT. Nothing is counted as an error, both writers'
    // values stay, every other instance gets its row once.
    let (cluster, mut db) = start("worker-conflict", &[]);
    let mut writers: Vec<(Client, i32)> = [2i64, 3]
        .iter()
        .map(|id| {
            let mut writer = cluster.connect("app");
            writer.batch_execute("BEGIN").unwrap();
            writer
                .execute(
                    "INSERT INTO backfill.process_instance_metadata
                            (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
                     VALUES ($1, 'number', 'from a writer', 1, 1)",
                    &[id],
                )
                .unwrap();
            let pid = writer
                .query_one("SELECT pg_backend_pid()", &[])
                .unwrap()
                .get(0);
            (writer, pid)
        })
        .collect();
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    let worker = wait_for_worker(&cluster);
    for (writer, pid) in &mut writers {
        wait_for(
            "the batch to wait for a writer's insert",
            Duration::from_secs(30),
            || waits_for(&mut db, worker, *pid).then_some(()),
        );
        writer.batch_execute("COMMIT").unwrap();
    }
    assert_eq!(wait_done(&cluster, job), "succeeded");
    assert_eq!(counters(&mut db, job), (N, N - 2, 0));
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata
              WHERE key = 'number' AND value = 'from a writer' AND process_instance_id IN (2, 3)"
        ),
        2
    );
    assert_eq!(
        common::wrong_rows_where(
            &mut db,
            BULK,
            "number",
            "invoice.number",
            "i.id NOT IN (2, 3)"
        ),
        0
    );
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'number'"
        ),
        N
    );
}

/// Databases `names`, created now (after the server started) with the extension and `instances`
/// bulk instances each, and a job queued in each, close together; connections and job ids.
fn databases_with_a_job(
    cluster: &Cluster,
    names: &[&str],
    instances: i64,
) -> (Vec<Client>, Vec<i64>) {
    let mut dbs: Vec<Client> = names
        .iter()
        .map(|name| {
            let mut db = cluster.create_db(name);
            db.batch_execute(&bulk_sql(instances)).unwrap();
            db
        })
        .collect();
    let jobs = dbs
        .iter_mut()
        .map(|db| add_path(db, BULK, "number", "invoice.number"))
        .collect();
    (dbs, jobs)
}

#[test]
fn every_database_with_the_extension_is_served_without_configuration() {
    let cluster = Cluster::start("worker-databases", &["backfill.batch_delay = '20ms'"]);
    // Three databases created after the server started, each with the extension and a job,
    // queued close together: their workers run at the same time.
    let names = ["one", "two", "three"];
    let (mut dbs, jobs) = databases_with_a_job(&cluster, &names, 5_000);
    let mut spans = Vec::new();
    for ((name, db), job) in names.iter().zip(dbs.iter_mut()).zip(&jobs) {
        assert_eq!(wait_ended(&cluster, name, *job), "succeeded");
        assert_eq!(
            wrong_rows(db, BULK, "number", "invoice.number"),
            0,
            "{name}"
        );
        let row = db
            .query_one(
                "SELECT extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8
                   FROM backfill.job WHERE id = $1",
                &[job],
            )
            .unwrap();
        spans.push((row.get::<_, f64>(0), row.get::<_, f64>(1)));
    }
    let overlapping = spans
        .iter()
        .enumerate()
        .any(|(i, a)| spans[i + 1..].iter().any(|b| a.0 < b.1 && b.0 < a.1));
    assert!(
        overlapping,
        "jobs of different databases ran one after another: {spans:?}"
    );

    // Idle workers leave: DROP DATABASE (without FORCE) and DROP EXTENSION go through while
    // another database's job runs.
    let mut three = dbs.pop().unwrap();
    let running = add_path(&mut three, BULK, "total", "invoice.total");
    dbs.pop()
        .unwrap()
        .batch_execute("DROP EXTENSION backfill")
        .unwrap();
    drop(dbs);
    cluster
        .connect("postgres")
        .batch_execute("DROP DATABASE one")
        .unwrap();
    assert_eq!(wait_ended(&cluster, "three", running), "succeeded");
    assert_eq!(wrong_rows(&mut three, BULK, "total", "invoice.total"), 0);
    let log = cluster.log();
    for name in names {
        assert!(
            log.contains(&format!("backfill worker started for database \"{name}\"")),
            "{log}"
        );
    }
    assert!(!log.contains("FATAL"), "{log}");
}

#[test]
fn max_workers_bounds_the_workers_and_waiting_databases_get_their_turn() {
    let cluster = Cluster::start(
        "worker-max",
        &["backfill.max_workers = 1", "backfill.batch_delay = '10ms'"],
    );
    let names = ["first", "second"];
    let (mut dbs, jobs) = databases_with_a_job(&cluster, &names, 3_000);
    // Never more than one worker at a time, sampled while both jobs are unfinished.
    let mut admin = cluster.connect("postgres");
    let mut most = 0;
    while jobs.iter().zip(dbs.iter_mut()).any(|(job, db)| {
        let state = one_text(
            db,
            &format!("SELECT state FROM backfill.job WHERE id = {job}"),
        );
        state == "queued" || state == "running"
    }) {
        most = most.max(one_i64(
            &mut admin,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'backfill worker'",
        ));
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(most, 1, "workers at once");
    for (db, name) in dbs.iter_mut().zip(names) {
        assert_eq!(
            wrong_rows(db, BULK, "number", "invoice.number"),
            0,
            "{name}"
        );
    }
    let log = cluster.log();
    assert!(
        log.contains("all 1 workers are busy (backfill.max_workers)"),
        "{log}"
    );
}

#[test]
fn batches_reach_the_job_row_without_walking_its_versions() {
    // A snapshot held open for the whole job keeps every version of the job row alive. Each
    // batch must still reach the row directly (by its TID), not by id through the chain of
    // versions behind it: that cost would grow with every batch.
    let (cluster, mut db) = start(
        "worker-tid",
        &[
            "backfill.batch_size = 10",
            "shared_preload_libraries = 'backfill,pg_stat_statements'",
            "pg_stat_statements.track = all",
        ],
    );
    db.batch_execute("CREATE EXTENSION pg_stat_statements")
        .unwrap();
    let mut holder = cluster.connect("app");
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM backfill.job;")
        .unwrap();
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(wait_done(&cluster, job), "succeeded");
    holder.batch_execute("COMMIT").unwrap();
    assert_complete(&mut db, job, &[("number", "invoice.number")]);
    let calls = |db: &mut Client, condition: &str| {
        one_i64(
            db,
            &format!(
                "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
                  WHERE query LIKE '%FROM backfill.job WHERE {condition} FOR UPDATE%'"
            ),
        )
    };
    let batches = N / 10;
    assert_eq!(
        calls(&mut db, "id = $1"),
        2,
        "looked up by id to start and for the first batch"
    );
    assert_eq!(
        calls(&mut db, "ctid = $2 AND id = $1"),
        batches - 1,
        "then by TID"
    );
}

#[test]
fn the_code_on_the_tables_is_walked_once_a_process_not_once_a_batch() {
    // The walk that finds whose code runs on the tables (src/pg/table_code.rs) reads several
    // catalogs: a process does it when it first looks at the tables, and again only after an
    // invalidation of what it found; never per batch. (That an invalidation is seen:
    // tests/attacks.rs, a_trigger_function_given_away_during_a_job_never_runs_as_the_superuser.)
    let (cluster, mut db) = start(
        "worker-walk",
        &[
            "backfill.batch_size = 10",
            "shared_preload_libraries = 'backfill,pg_stat_statements'",
            "pg_stat_statements.track = all",
        ],
    );
    db.batch_execute(
        "CREATE EXTENSION pg_stat_statements;
         CREATE FUNCTION public.note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER note BEFORE INSERT ON backfill.process_instance_metadata
             FOR EACH ROW EXECUTE FUNCTION public.note();",
    )
    .unwrap();
    let walks = |db: &mut Client| {
        one_i64(
            db,
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
              WHERE query LIKE '%WITH RECURSIVE reached(classid, objid)%'",
        )
    };
    let before = walks(&mut db);
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(wait_done(&cluster, job), "succeeded");
    assert_complete(&mut db, job, &[("number", "invoice.number")]);
    // The session whose update queued the job (its warning check), and the worker.
    let once = walks(&mut db) - before;
    assert!(
        (1..=3).contains(&once),
        "{once} walks for a job of {} batches",
        N / 10
    );
}

/// Scans of process_instance's primary key: the foreign-key triggers make one per row.
fn instance_key_scans(db: &mut Client) -> i64 {
    one_i64(
        db,
        "SELECT coalesce(idx_scan, 0) FROM pg_stat_user_indexes WHERE indexrelname = 'process_instance_pkey'",
    )
}

#[test]
fn foreign_key_holds_with_concurrent_deletes_and_user_triggers_still_fire() {
    let (cluster, mut db) = start("worker-fk", &["backfill.batch_delay = '20ms'"]);
    // The worker meets the foreign key by locking its instances, not through the triggers.
    let scans_before = instance_key_scans(&mut db);
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    wait_until_processed(&mut db, job, 1, Duration::from_secs(30));
    // Meanwhile instances are deleted: behind the cursor, ahead of it, and in the batch in
    // flight. Each delete waits for the batch that holds its instance, then cascades.
    let mut deleter = cluster.connect("app");
    let mut deleted = 0;
    for id in (3..12_500i64).step_by(131) {
        deleted += deleter
            .execute("DELETE FROM backfill.process_instance WHERE id = $1 AND process_model_identifier = 'bulk/model'", &[&id])
            .unwrap() as i64;
    }
    assert!(deleted > 50);
    assert_eq!(wait_done(&cluster, job), "succeeded");
    let orphans = one_i64(
        &mut db,
        "SELECT count(*) FROM backfill.process_instance_metadata m
          WHERE NOT EXISTS (SELECT 1 FROM backfill.process_instance i WHERE i.id = m.process_instance_id)",
    );
    assert_eq!(orphans, 0);
    assert_eq!(
        wrong_rows(&mut db, BULK, "number", "invoice.number"),
        0,
        "every remaining instance has its row"
    );
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'number'"
        ),
        N - deleted
    );
    thread::sleep(Duration::from_millis(1500)); // the idle worker reports its statistics
    let fast_scans = instance_key_scans(&mut db) - scans_before;
    assert!(
        fast_scans < N / 10,
        "{fast_scans} primary-key scans: the triggers ran"
    );

    // With a trigger of the user's on the table, the worker goes through the triggers, and
    // the user's trigger fires for every row. (In the worker, user code sees the worker's
    // search path, pg_catalog and pg_temp: the function names its table with its schema.)
    db.batch_execute(
        "CREATE TABLE audit (n bigint NOT NULL DEFAULT 0);
         INSERT INTO audit VALUES (0);
         CREATE FUNCTION count_rows() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN UPDATE public.audit SET n = n + 1; RETURN NULL; END $$;
         CREATE TRIGGER count_rows AFTER INSERT ON backfill.process_instance_metadata
             FOR EACH ROW EXECUTE FUNCTION count_rows();",
    )
    .unwrap();
    let scans_before = instance_key_scans(&mut db);
    let job = add_path(&mut db, BULK, "total", "invoice.total");
    assert_eq!(wait_done(&cluster, job), "succeeded");
    assert_eq!(one_i64(&mut db, "SELECT n FROM audit"), N - deleted);
    thread::sleep(Duration::from_millis(1500));
    let checked_scans = instance_key_scans(&mut db) - scans_before;
    assert!(
        checked_scans >= N - deleted,
        "{checked_scans} primary-key scans for {} rows",
        N - deleted
    );
}

#[test]
fn a_job_stuck_behind_a_lock_waits_and_the_worker_goes_on_meanwhile() {
    let (cluster, mut db) = start("worker-stuck", &["lock_timeout = '100ms'"]);
    // Someone holds the first instance of the model: every batch of its job waits for that
    // row, times out, and the job waits (it never fails for a lock) while other jobs go on.
    let mut blocker = cluster.connect("app");
    blocker
        .batch_execute("BEGIN; SELECT * FROM backfill.process_instance WHERE id = 1 FOR UPDATE")
        .unwrap();
    let holder: i32 = blocker
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let stuck = add_path(&mut db, BULK, "number", "invoice.number");
    db.batch_execute(
        r#"UPDATE backfill.process_model SET metadata_extraction_paths = '[{"key": "step", "path": "step"}]'
            WHERE id = 'other/model'"#,
    )
    .unwrap();
    let next = one_i64(
        &mut db,
        "SELECT max(id) FROM backfill.job WHERE parent_id IS NULL",
    );
    // The worker went on to the next job.
    assert_eq!(wait_done(&cluster, next), "succeeded");
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'step'"
        ),
        N / 4
    );
    let said = format!("job {stuck} waits for a lock");
    wait_for(
        "the worker to say what it waits for",
        Duration::from_secs(30),
        || {
            cluster
                .log()
                .lines()
                .any(|line| line.contains(&said) && line.contains(&format!("process {holder}")))
                .then_some(())
        },
    );
    assert_eq!(
        one_text(
            &mut db,
            &format!("SELECT state FROM backfill.job WHERE id = {stuck}")
        ),
        "running"
    );
    // Once the lock is gone, the job goes on by itself.
    blocker.batch_execute("ROLLBACK").unwrap();
    assert_eq!(wait_done(&cluster, stuck), "succeeded");
    assert_complete(&mut db, stuck, &[("number", "invoice.number")]);
}

#[test]
fn without_lock_timeout_a_worker_batch_waits_ten_seconds_for_a_lock_then_again() {
    // No lock_timeout configured: the worker must not sit for ever behind a forgotten
    // transaction (other jobs wait for it), and must not give up on the job either.
    let (cluster, mut db) = start("worker-lockwait", &[]);
    let mut blocker = cluster.connect("app");
    blocker
        .batch_execute("BEGIN; SELECT * FROM backfill.process_instance WHERE id = 1 FOR UPDATE")
        .unwrap();
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    let enqueued = Instant::now();
    let said = format!("job {job} waits for a lock");
    wait_for(
        "the first wait to time out",
        Duration::from_secs(30),
        || cluster.log().contains(&said).then_some(()),
    );
    let waited = enqueued.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "the batch gave up waiting after {waited:?}"
    );
    assert_eq!(processed(&mut db, job), 0);
    // The lock goes away while the job waits: it goes through and completes.
    blocker.batch_execute("ROLLBACK").unwrap();
    assert_eq!(wait_done(&cluster, job), "succeeded");
    assert_complete(&mut db, job, &[("number", "invoice.number")]);
}

#[test]
fn the_throttle_yields_to_working_sessions_not_to_sleeping_ones() {
    let (cluster, mut db) = start("worker-throttle", &[]);
    // An operator waiting for the job and a session in pg_sleep are no load: the job is
    // hardly paused (a sample can still catch the waiter between two looks at the job).
    let sleeper = in_background(&cluster, "sleeper", "SELECT pg_sleep(600)");
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    let state: String = cluster
        .connect("app")
        .query_one("SELECT backfill.wait($1, '2 min')", &[&job])
        .unwrap()
        .get(0);
    assert_eq!(state, "succeeded");
    let (working, paused) = throttle_of(&cluster, job);
    assert!(
        paused < 0.25 * working,
        "paused {paused} s after batches of {working} s with only sleeping sessions"
    );

    // A session keeping a CPU busy is load: on two CPUs the pauses are about 1.5 times the
    // batches' time (a share of 1/2 times 3).
    let busy = in_background(
        &cluster,
        "busy",
        "DO $$ BEGIN LOOP PERFORM 1; END LOOP; END $$",
    );
    let job = add_path(&mut db, BULK, "status", "invoice.status");
    assert_eq!(wait_done(&cluster, job), "succeeded");
    let (working, paused) = throttle_of(&cluster, job);
    assert!(
        paused > 0.5 * working,
        "paused only {paused} s after batches of {working} s while a session kept a CPU busy"
    );

    db.batch_execute(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name IN ('sleeper', 'busy')",
    )
    .unwrap();
    sleeper.join().unwrap();
    busy.join().unwrap();
    assert_complete(
        &mut db,
        job,
        &[("number", "invoice.number"), ("status", "invoice.status")],
    );
}

#[test]
fn a_session_idle_in_a_transaction_is_no_load() {
    let (cluster, mut db) = start("worker-idle", &[]);
    // Two sessions idle in a transaction, one of them holding an old REPEATABLE READ
    // snapshot: neither uses a CPU (on this two-CPU machine, counted as load they made the
    // throttle pause three times the batches' time).
    let mut idle = cluster.connect("app");
    idle.batch_execute("BEGIN; SELECT 1").unwrap();
    let mut snapshot = cluster.connect("app");
    snapshot
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM backfill.job")
        .unwrap();
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(wait_done(&cluster, job), "succeeded");
    let (working, paused) = throttle_of(&cluster, job);
    assert!(
        paused < 0.25 * working,
        "paused {paused} s after batches of {working} s with only idle sessions"
    );
    idle.batch_execute("ROLLBACK").unwrap();
    snapshot.batch_execute("ROLLBACK").unwrap();
    assert_complete(&mut db, job, &[("number", "invoice.number")]);
}
