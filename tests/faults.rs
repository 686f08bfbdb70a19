//! Faults an operator meets, each reproduced: a database restored from a dump taken mid-job,
//! the launcher terminated, every lock that conflicts with a batch held a minute, two parts of a job ending at
//! the same moment, calls on a hot standby, and too few background worker processes. Each of
//! these tests failed on 0.6.0 before the fix it comes with.

mod common;

use common::{
    add_path, bulk_sql, ended, one_i64, one_text, sqlstate, start_app, wait_for, wrong_rows,
};
use postgres::Client;
use std::thread;
use std::time::{Duration, Instant};

const BULK: &str = "bulk/model";

fn processed(db: &mut Client, job: i64) -> i64 {
    one_i64(
        db,
        &format!("SELECT coalesce(processed, 0) FROM backfill.progress WHERE id = {job}"),
    )
}

fn launcher_pid(db: &mut Client) -> Option<i32> {
    db.query_opt(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'backfill launcher'",
        &[],
    )
    .unwrap()
    .map(|row| row.get(0))
}

#[test]
fn a_restored_job_resumes_by_itself_and_its_dump_warns_of_nothing() {
    let (cluster, mut db) = start_app(
        "fault-restore",
        true,
        &["backfill.batch_delay = '30ms'"],
        &bulk_sql(4_000),
    );
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    wait_for("the job to be under way", Duration::from_secs(60), || {
        (processed(&mut db, job) >= 500).then_some(())
    });
    let dump = cluster.dir.join("app.dump");
    let port = cluster.port.to_string();
    let out = cluster.tool(
        "pg_dump",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-Fc",
            "-f",
            dump.to_str().unwrap(),
            "app",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "pg_dump warned");
    // The job was caught half done, as the dump shows it.
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE restored")
        .unwrap();
    let out = cluster.tool(
        "pg_restore",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "restored",
            dump.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let mut restored = cluster.connect("restored");
    assert_eq!(
        ended(&mut restored, job, Duration::from_secs(60)),
        "succeeded"
    );
    assert_eq!(
        wrong_rows(&mut restored, BULK, "number", "invoice.number"),
        0
    );
    // Restoring queues nothing of its own: the model rows it loads (which have paths and
    // instances) are no first sync. By pg_restore (COPY) above, and here by psql from a plain
    // dump of INSERTs.
    let jobs =
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM backfill.job WHERE parent_id IS NULL";
    assert_eq!(one_text(&mut restored, jobs), job.to_string());
    let plain = cluster.dir.join("app.sql");
    let out = cluster.tool(
        "pg_dump",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "--inserts",
            "-f",
            plain.to_str().unwrap(),
            "app",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE restored_plain")
        .unwrap();
    cluster.psql(
        "postgres",
        "restored_plain",
        &std::fs::read_to_string(&plain).unwrap(),
    );
    let mut restored_plain = cluster.connect("restored_plain");
    assert_eq!(one_text(&mut restored_plain, jobs), job.to_string());
    assert_eq!(ended(&mut db, job, Duration::from_secs(60)), "succeeded");
}

#[test]
fn a_terminated_launcher_comes_back() {
    let (cluster, mut db) = start_app("fault-launcher", true, &[], &bulk_sql(500));
    let first = wait_for("the launcher", Duration::from_secs(30), || {
        launcher_pid(&mut db)
    });
    db.execute("SELECT pg_terminate_backend($1)", &[&first])
        .unwrap();
    let second = wait_for(
        "the launcher to start again",
        Duration::from_secs(30),
        || launcher_pid(&mut db).filter(|&pid| pid != first),
    );
    assert_ne!(first, second);
    assert_eq!(
        one_text(&mut db, "SELECT backfill.check_worker()::text"),
        "true"
    );
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(ended(&mut db, job, Duration::from_secs(60)), "succeeded");
    assert_eq!(wrong_rows(&mut db, BULK, "number", "invoice.number"), 0);
    assert!(cluster
        .log()
        .contains("backfill launcher exiting on shutdown request"));
}

/// A DBA's lock that conflicts with what a batch takes, held a minute: the metadata table's
/// SHARE (CREATE INDEX), SHARE ROW EXCLUSIVE (CREATE TRIGGER, ADD FOREIGN KEY), EXCLUSIVE and
/// ACCESS EXCLUSIVE (VACUUM FULL, ALTER TABLE); the instances' EXCLUSIVE (which their row
/// locks conflict with) and the tasks' ACCESS EXCLUSIVE. Each in a database of its own, all at
/// once. The job waits for as long as the lock is held, using no attempt, says on what, and
/// ends exactly; it holds no instance's row while it waits, so the application's UPDATE of an
/// instance waits at most for a batch. On 0.6.0 a SHARE lock failed the job within 35 s (three
/// attempts at a lock timeout) while the application's UPDATEs waited 9-10 s each.
#[test]
fn a_job_waits_out_every_lock_that_conflicts_with_a_batch() {
    const HELD: Duration = Duration::from_secs(60);
    // (database, table, mode, whether the application's UPDATE of an instance is measured:
    // not where the DBA's lock itself holds it).
    let cases = [
        ("share", "process_instance_metadata", "SHARE", true),
        (
            "share_row_excl",
            "process_instance_metadata",
            "SHARE ROW EXCLUSIVE",
            true,
        ),
        ("exclusive", "process_instance_metadata", "EXCLUSIVE", true),
        (
            "access_excl",
            "process_instance_metadata",
            "ACCESS EXCLUSIVE",
            true,
        ),
        ("instances_excl", "process_instance", "EXCLUSIVE", false),
        ("tasks_access_excl", "task", "ACCESS EXCLUSIVE", false),
    ];
    let cluster = common::Cluster::start("fault-locks", &["backfill.batch_delay = '20ms'"]);
    let mut jobs = Vec::new();
    for (database, table, mode, _) in cases {
        let mut db = cluster.create_db(database);
        db.batch_execute(&bulk_sql(3_000)).unwrap();
        let job = add_path(&mut db, BULK, "number", "invoice.number");
        wait_for("the job to be under way", Duration::from_secs(60), || {
            (processed(&mut db, job) >= 300).then_some(())
        });
        // Where the application's UPDATEs start: past every instance done so far.
        let cursor = one_i64(
            &mut db,
            "SELECT coalesce(max(process_instance_id), 0) FROM backfill.process_instance_metadata",
        );
        let mut blocker = cluster.connect(database);
        blocker
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE backfill.{table} IN {mode} MODE"
            ))
            .unwrap();
        let holder: i32 = blocker
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        jobs.push((database, job, db, blocker, holder, cursor));
    }
    let locked_at = Instant::now();
    // The application updates instances the job has yet to reach, as SpiffWorkflow saves an
    // instance; the longest wait of each database's.
    let applications: Vec<_> = cases
        .iter()
        .zip(&jobs)
        .filter(|((_, _, _, measured), _)| *measured)
        .map(|((database, ..), (_, _, _, _, _, cursor))| {
            let cursor = *cursor;
            let mut app = cluster.connect(database);
            let database = database.to_string();
            thread::spawn(move || {
                let mut longest = Duration::ZERO;
                let mut id = cursor;
                while locked_at.elapsed() < HELD {
                    id += 1;
                    let started = Instant::now();
                    app.execute(
                        "UPDATE backfill.process_instance
                            SET updated_at_in_seconds = coalesce(updated_at_in_seconds, 0) + 1
                          WHERE id = $1",
                        &[&id],
                    )
                    .unwrap();
                    longest = longest.max(started.elapsed());
                    thread::sleep(Duration::from_millis(100));
                }
                (database, longest)
            })
        })
        .collect();
    for (_, job, _, _, holder, _) in &jobs {
        let said = format!("held by process {holder}");
        wait_for("the worker to say what it waits for", HELD, || {
            cluster
                .log()
                .lines()
                .any(|line| {
                    line.contains(&format!("job {job}"))
                        && line.contains("waits for a lock")
                        && line.contains(&said)
                })
                .then_some(())
        });
    }
    // Each job waits for as long as its lock is held; none fails.
    while locked_at.elapsed() < HELD {
        for (database, job, db, _, _, _) in &mut jobs {
            let state = one_text(
                db,
                &format!("SELECT state FROM backfill.job WHERE id = {job}"),
            );
            assert_eq!(
                state,
                "running",
                "{database} after {:?}",
                locked_at.elapsed()
            );
        }
        thread::sleep(Duration::from_secs(1));
    }
    for application in applications {
        let (database, longest) = application.join().unwrap();
        println!("{database}: the application's longest UPDATE took {longest:?}");
        // A batch takes milliseconds; 0.6.0 held instances for the whole wait.
        assert!(
            longest < Duration::from_secs(3),
            "{database}: an application UPDATE waited {longest:?}"
        );
    }
    for (database, job, mut db, mut blocker, _, _) in jobs {
        blocker.batch_execute("ROLLBACK").unwrap();
        assert_eq!(
            ended(&mut db, job, Duration::from_secs(120)),
            "succeeded",
            "{database}"
        );
        assert_eq!(
            wrong_rows(&mut db, BULK, "number", "invoice.number"),
            0,
            "{database}"
        );
        assert_eq!(
            one_i64(
                &mut db,
                &format!("SELECT errors FROM backfill.progress WHERE id = {job}")
            ),
            0
        );
    }
    let log = cluster.log();
    assert!(!log.contains("attempt 1 of"), "an attempt was used:\n{log}");
}

#[test]
fn two_parts_ending_together_take_turns_without_a_deadlock() {
    let (cluster, mut db) = start_app("fault-settle", false, &[], &bulk_sql(400));
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    // The job split into two parts by hand (as a worker splits it), each then run to its
    // last batch by a session of its own: its cursor advanced and the part finished in one
    // transaction, and the job settled in the same one, as the engine does.
    db.batch_execute(&format!(
        "SELECT backfill.job_split({job}, 400, 500, ARRAY[250, 500]::bigint[], ARRAY[200, 200]::bigint[])"
    ))
    .unwrap();
    let parts: Vec<i64> = db
        .query(
            "SELECT id FROM backfill.job WHERE parent_id = $1 ORDER BY id",
            &[&job],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(parts.len(), 2);
    let mut sessions: Vec<Client> = parts.iter().map(|_| cluster.connect("app")).collect();
    for (session, part) in sessions.iter_mut().zip(&parts) {
        session
            .batch_execute(&format!(
                "BEGIN;
                 UPDATE backfill.job SET state = 'running', last_instance_id = max_instance_id,
                        instances_processed = instances_total
                  WHERE id = {part};
                 SELECT backfill.job_finish({part});"
            ))
            .unwrap();
    }
    let settled: Vec<_> = sessions
        .into_iter()
        .zip(parts.clone())
        .map(|(mut session, part)| {
            let handle = thread::spawn(move || {
                let settled: bool = session
                    .query_one("SELECT backfill.job_settle($1)", &[&part])?
                    .get(0);
                session.batch_execute("COMMIT")?;
                Ok::<bool, postgres::Error>(settled)
            });
            // The second part settles while the first one's transaction is still open.
            thread::sleep(Duration::from_millis(200));
            handle
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect();
    for result in &settled {
        if let Err(e) = result {
            panic!("a part could not settle: {} ({e})", sqlstate(e));
        }
    }
    let settled: Vec<bool> = settled.into_iter().map(Result::unwrap).collect();
    assert_eq!(settled.iter().filter(|&&s| s).count(), 1, "{settled:?}");
    assert_eq!(
        one_text(
            &mut db,
            &format!("SELECT state FROM backfill.job WHERE id = {job}")
        ),
        "succeeded"
    );
}

#[test]
fn on_a_hot_standby_the_functions_say_it_is_read_only() {
    let (cluster, mut db) = start_app("fault-standby", true, &[], &bulk_sql(300));
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(ended(&mut db, job, Duration::from_secs(60)), "succeeded");
    let standby = cluster.standby("fault-standby-replica");
    let mut replica = standby.connect("app");
    wait_for(
        "the standby to replay the job",
        Duration::from_secs(60),
        || (one_i64(&mut replica, "SELECT count(*) FROM backfill.job") > 0).then_some(()),
    );
    for call in [
        "SELECT backfill.enqueue('bulk/model')".to_owned(),
        format!("CALL backfill.run({job})"),
        format!("SELECT backfill.cancel({job})"),
        "SELECT backfill.count_coverage()".to_owned(),
        "SELECT backfill.attach('backfill')".to_owned(),
        "SELECT backfill.detach()".to_owned(),
    ] {
        let e = replica.batch_execute(&call).unwrap_err();
        assert_eq!(sqlstate(&e), "25006", "{call}: {e}");
        let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or_default();
        assert!(hint.contains("primary"), "{call}: {hint}");
    }
    // What only reads works there.
    assert_eq!(
        one_text(&mut replica, &format!("SELECT backfill.wait({job}, '1 s')")),
        "succeeded"
    );
    assert_eq!(
        one_i64(
            &mut replica,
            "SELECT count(*) FROM backfill.latest_task_data(1) AS d"
        ),
        1
    );
    let log = standby.log();
    assert!(
        !log.contains("backtrace") && !log.contains("panicked") && !log.contains("XX000"),
        "{log}"
    );
}

#[test]
fn a_database_that_waits_for_a_worker_process_is_named() {
    // PostgreSQL's logical replication launcher and backfill's take both processes: none is
    // left for a worker.
    let (cluster, mut db) = start_app(
        "fault-processes",
        true,
        &["max_worker_processes = 2"],
        &bulk_sql(200),
    );
    add_path(&mut db, BULK, "number", "invoice.number");
    wait_for(
        "the launcher to say which database waits",
        Duration::from_secs(30),
        || {
            cluster
                .log()
                .contains("no free background worker process (max_worker_processes); database \"app\" waits for one")
                .then_some(())
        },
    );
    let (mut session, said) = cluster.connect_with_notices("app");
    assert_eq!(
        one_text(&mut session, "SELECT backfill.check_worker()::text"),
        "false"
    );
    assert!(
        said.lock()
            .unwrap()
            .iter()
            .any(|n| n.starts_with("WARNING") && n.contains("max_worker_processes")),
        "{:?}",
        said.lock().unwrap()
    );
}

#[test]
fn a_promoted_standby_finishes_the_running_job_exactly() {
    let (mut cluster, mut db) = start_app(
        "fault-failover",
        true,
        &["backfill.batch_delay = '300ms'"],
        &bulk_sql(4_000),
    );
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    wait_for("the job to be under way", Duration::from_secs(60), || {
        (processed(&mut db, job) >= 300).then_some(())
    });
    // A standby made while the job runs, caught up with some more of its batches; then the
    // primary fails and the standby takes over.
    let standby = cluster.standby("fault-failover-replica");
    let mut replica = standby.connect("app");
    let seen = processed(&mut db, job);
    wait_for(
        "the standby to replay more batches",
        Duration::from_secs(60),
        || (processed(&mut replica, job) > seen).then_some(()),
    );
    drop((db, replica));
    cluster.pg_stop("immediate");
    standby.promote();
    let mut promoted = standby.connect("app");
    assert_eq!(
        ended(&mut promoted, job, Duration::from_secs(120)),
        "succeeded"
    );
    assert_eq!(
        wrong_rows(&mut promoted, BULK, "number", "invoice.number"),
        0
    );
    assert_eq!(
        one_i64(
            &mut promoted,
            &format!("SELECT processed - total FROM backfill.progress WHERE id = {job}")
        ),
        0
    );
}

#[test]
fn a_job_runs_while_every_connection_slot_is_taken() {
    let (cluster, db) = start_app(
        "fault-slots",
        true,
        &["backfill.batch_delay = '20ms'", "max_connections = 10"],
        &bulk_sql(2_000),
    );
    // Every client slot taken (superusers' reserved ones too), the last by the session that
    // queues the job and watches it.
    let mut held = Vec::new();
    while let Ok(client) = postgres::Client::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=app",
            cluster.port
        ),
        postgres::NoTls,
    ) {
        held.push(client);
    }
    let refused = postgres::Client::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=app",
            cluster.port
        ),
        postgres::NoTls,
    );
    assert!(refused.is_err(), "a slot was left");
    let watcher = held.last_mut().unwrap();
    let job = add_path(watcher, BULK, "number", "invoice.number");
    assert_eq!(ended(watcher, job, Duration::from_secs(60)), "succeeded");
    assert_eq!(wrong_rows(watcher, BULK, "number", "invoice.number"), 0);
    drop(held);
    drop(db);
}
