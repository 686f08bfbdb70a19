//! One job split across workers (backfill.workers_per_job): the parts run at the same time and
//! write exactly what one worker writes; a crash of one of them, an immediate shutdown, a
//! cancel and a failed part leave every counter exact, and the job resumes where each part
//! stopped.

mod common;

use common::{bulk_sql, in_background, one_i64, start_app, wait_for, wrong_rows, Cluster};
use postgres::Client;
use std::time::Duration;

const BULK: &str = "bulk/model";
const N: i64 = 20_000;
const KEYS: [(&str, &str); 2] = [("number", "invoice.number"), ("total", "invoice.total")];

fn start(name: &str, extra: &[&str]) -> (Cluster, Client) {
    start_app(name, true, extra, &bulk_sql(N))
}

/// Adds both keys to the bulk model in one update: the job it queued.
fn add_keys(db: &mut Client) -> i64 {
    db.batch_execute(
        r#"UPDATE backfill.process_model
              SET metadata_extraction_paths = '[{"key": "number", "path": "invoice.number"},
                                                {"key": "total", "path": "invoice.total"}]'
            WHERE id = 'bulk/model'"#,
    )
    .unwrap();
    one_i64(
        db,
        "SELECT max(id) FROM backfill.job WHERE parent_id IS NULL",
    )
}

/// The job as the progress view shows it: state, total, processed, updated, errors, parts.
#[derive(Debug, PartialEq, Eq)]
struct Progress {
    state: String,
    total: Option<i64>,
    processed: i64,
    updated: i64,
    errors: i64,
    parts: Option<i32>,
}

fn progress(db: &mut Client, job: i64) -> Progress {
    let row = db
        .query_one(
            "SELECT state, total, processed, updated, errors, parts FROM backfill.progress WHERE id = $1",
            &[&job],
        )
        .unwrap();
    Progress {
        state: row.get(0),
        total: row.get(1),
        processed: row.get(2),
        updated: row.get(3),
        errors: row.get(4),
        parts: row.get(5),
    }
}

/// Each part's (state, total, processed, updated), in id order.
fn parts(db: &mut Client, job: i64) -> Vec<(String, i64, i64, i64)> {
    db.query(
        "SELECT state, instances_total, instances_processed, instances_updated
           FROM backfill.job WHERE parent_id = $1 ORDER BY id",
        &[&job],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

fn wait_ended(cluster: &Cluster, job: i64) -> String {
    wait_for("the job to end", Duration::from_secs(180), || {
        let mut db = cluster.connect("app");
        let state: String = db
            .query_one("SELECT state FROM backfill.progress WHERE id = $1", &[&job])
            .ok()?
            .get(0);
        (state != "queued" && state != "running").then_some(state)
    })
}

/// Waits until both parts have committed batches, and returns the pids of the workers in
/// database app. The batches commit asynchronously: a checkpoint makes those committed so far
/// survive a crash, so that both parts have progress to resume from.
fn wait_both_parts_running(db: &mut Client, job: i64) -> Vec<i32> {
    wait_for(
        "both parts to have committed batches",
        Duration::from_secs(60),
        || {
            let started = one_i64(
                db,
                &format!(
                    "SELECT count(*) FROM backfill.job
                      WHERE parent_id = {job} AND state = 'running' AND instances_processed > 0"
                ),
            );
            (started == 2).then_some(())
        },
    );
    db.batch_execute("CHECKPOINT").unwrap();
    db.query(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'backfill worker' AND datname = 'app'",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The metadata rows, in order: what a backfill wrote.
fn rows(db: &mut Client) -> Vec<(i64, String, Option<String>)> {
    db.query(
        "SELECT process_instance_id, key, value FROM backfill.process_instance_metadata
          ORDER BY process_instance_id, key",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// The job succeeded with every counter exact: each instance processed once, in one of two
/// parts that each did exactly their share; every row right and none twice.
fn assert_complete(db: &mut Client, job: i64) {
    assert_eq!(
        progress(db, job),
        Progress {
            state: "succeeded".into(),
            total: Some(N),
            processed: N,
            updated: N,
            errors: 0,
            parts: Some(2),
        }
    );
    // The job's own row says the same, as a job that was not split does, its cursor at the
    // end of its range.
    let row = db
        .query_one(
            "SELECT instances_processed, instances_updated, errors,
                    last_instance_id IS NOT DISTINCT FROM max_instance_id AND last_instance_id IS NOT NULL
               FROM backfill.job WHERE id = $1",
            &[&job],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, bool>(3)
        ),
        (N, N, 0, true),
        "backfill.job's own row of split job {job}"
    );
    for (state, total, processed, updated) in parts(db, job) {
        assert_eq!(state, "succeeded");
        assert_eq!(total, N / 2);
        assert_eq!(processed, total, "each part processed its share once");
        assert_eq!(updated, total);
    }
    for (key, path) in KEYS {
        assert_eq!(wrong_rows(db, BULK, key, path), 0, "key {key}");
    }
    assert_eq!(
        one_i64(
            db,
            "SELECT count(*) FROM backfill.process_instance_metadata"
        ),
        2 * N
    );
}

/// How many parts of `job` the log shows resumed with some of their instances done (they did
/// not start over).
fn parts_resumed_after_some(log: &str, job: i64) -> usize {
    let mut parts: Vec<&str> = log
        .lines()
        .filter_map(|line| {
            let (before, rest) = line.split_once(&format!(
                " (a part of job {job}) resumed for model bulk/model: keys number, total; "
            ))?;
            let done = rest.split(' ').next()?.parse::<i64>().ok()?;
            let part = before.rsplit("backfill: job ").next()?;
            (done > 0 && done < N / 2).then_some(part)
        })
        .collect();
    parts.sort_unstable();
    parts.dedup();
    parts.len()
}

#[test]
fn a_split_job_runs_in_two_workers_at_once_and_writes_what_one_worker_writes() {
    let (cluster, mut db) = start("split-equal", &["backfill.batch_delay = '5ms'"]);
    let job = add_keys(&mut db);
    assert_eq!(wait_ended(&cluster, job), "succeeded");
    assert_complete(&mut db, job);
    // The two parts ran at the same time: each started before the other ended.
    assert!(
        one_i64(
            &mut db,
            &format!(
                "SELECT count(*) FROM backfill.job a JOIN backfill.job b ON a.parent_id = b.parent_id
                  WHERE a.parent_id = {job} AND a.id <> b.id AND a.started_at < b.finished_at"
            )
        ) == 2,
        "parts ran one after the other: {:?}",
        db.query(
            &format!(
                "SELECT id, started_at::text, finished_at::text FROM backfill.job WHERE parent_id = {job}"
            ),
            &[]
        )
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, String>(2)))
        .collect::<Vec<_>>()
    );
    let log = cluster.log();
    assert!(
        log.contains(&format!(
            "backfill: job {job} started for model bulk/model: keys number, total; {N} instances"
        )) && log.contains(&format!(
            "split into 2 parts of {}, {} instances",
            N / 2,
            N / 2
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "backfill: job {job} succeeded: {N} of {N} instances processed"
        )),
        "{log}"
    );
    let split_rows = rows(&mut db);

    // The same job in one worker, from scratch.
    db.batch_execute("DELETE FROM backfill.process_instance_metadata")
        .unwrap();
    cluster.set_and_reload("backfill.workers_per_job", "1");
    let whole = one_i64(&mut db, "SELECT backfill.enqueue('bulk/model')");
    assert_eq!(wait_ended(&cluster, whole), "succeeded");
    let whole_progress = progress(&mut db, whole);
    assert_eq!(
        whole_progress.parts, None,
        "workers_per_job = 1 does not split"
    );
    assert_eq!(whole_progress.processed, N);
    assert_eq!(
        one_i64(
            &mut db,
            &format!("SELECT count(*) FROM backfill.job WHERE parent_id = {whole}")
        ),
        0
    );
    assert!(
        rows(&mut db) == split_rows,
        "two workers wrote other rows than one"
    );
}

#[test]
fn kill_9_of_one_of_its_workers_loses_nothing_and_duplicates_nothing() {
    let (cluster, mut db) = start("split-kill9", &["backfill.batch_delay = '10ms'"]);
    let job = add_keys(&mut db);
    let workers = wait_both_parts_running(&mut db, job);
    assert_eq!(workers.len(), 2, "two workers run the job: {workers:?}");
    let victim = workers[1];
    drop(db); // the postmaster resets every connection after a crash
    cluster.kill_9(victim);

    assert_eq!(wait_ended(&cluster, job), "succeeded");
    let mut db = cluster.connect("app");
    assert_complete(&mut db, job);
    let log = cluster.log();
    assert!(
        log.contains(&format!("(PID {victim}) was terminated by signal 9")),
        "{log}"
    );
    // The killed worker's part, and the other one (the crash restarts every process).
    assert_eq!(parts_resumed_after_some(&log, job), 2, "{log}");
}

#[test]
fn immediate_shutdown_with_two_workers_then_every_part_resumes() {
    let (mut cluster, mut db) = start("split-immediate", &["backfill.batch_delay = '10ms'"]);
    let job = add_keys(&mut db);
    wait_both_parts_running(&mut db, job);
    drop(db);
    cluster.pg_stop("immediate");
    cluster.pg_start();
    assert_eq!(wait_ended(&cluster, job), "succeeded");
    let mut db = cluster.connect("app");
    assert_complete(&mut db, job);
    let log = cluster.log();
    assert!(
        log.contains("database system was not properly shut down; automatic recovery in progress"),
        "{log}"
    );
    // Both parts were half-done when the server stopped, and both went on from there.
    assert_eq!(parts_resumed_after_some(&log, job), 2, "{log}");
}

#[test]
fn cancel_of_a_split_job_stops_every_part_with_exact_counters() {
    let (cluster, mut db) = start("split-cancel", &["backfill.batch_delay = '20ms'"]);
    let job = add_keys(&mut db);
    wait_both_parts_running(&mut db, job);
    assert!(db
        .query_one("SELECT backfill.cancel($1)", &[&job])
        .unwrap()
        .get::<_, bool>(0));
    assert_eq!(wait_ended(&cluster, job), "cancelled");
    // Every part stopped, and no worker holds one any more.
    wait_for("the parts to be let go", Duration::from_secs(30), || {
        (one_i64(
            &mut db,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2",
        ) == 0)
            .then_some(())
    });
    let stopped = progress(&mut db, job);
    let parts = parts(&mut db, job);
    assert!(parts.iter().all(|p| p.0 == "cancelled"), "{parts:?}");
    assert!(
        stopped.processed > 0 && stopped.processed < N,
        "{stopped:?}"
    );
    assert_eq!(stopped.processed, parts.iter().map(|p| p.2).sum::<i64>());
    // What was committed is exactly what the counters say: a row per key for each instance
    // processed, nothing for the others.
    assert_eq!(stopped.updated, stopped.processed);
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata"
        ),
        2 * stopped.processed
    );
    assert_eq!(
        one_i64(
            &mut db,
            &format!("SELECT count(*) FROM backfill.job WHERE parent_id = {job} AND state IN ('queued', 'running')")
        ),
        0
    );
    // Nothing more is written once the cancel has returned and the workers let go.
    assert_eq!(progress(&mut db, job), stopped);
}

#[test]
fn a_failed_part_fails_the_job_with_its_error_and_run_resumes_every_part() {
    let (cluster, mut db) = start("split-fail", &["backfill.batch_delay = '5ms'"]);
    // A failure no retry cures, in the second part's range only.
    db.batch_execute(&format!(
        "CREATE FUNCTION refuse_late() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.process_instance_id > {late} THEN
                 RAISE EXCEPTION 'instance % refused', NEW.process_instance_id USING ERRCODE = '42501';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_late BEFORE INSERT ON backfill.process_instance_metadata
             FOR EACH ROW EXECUTE FUNCTION refuse_late();",
        late = N + N / 4 - 1000
    ))
    .unwrap();
    let job = add_keys(&mut db);
    assert_eq!(wait_ended(&cluster, job), "failed");
    let failed: String = db
        .query_one(
            "SELECT last_error FROM backfill.progress WHERE id = $1",
            &[&job],
        )
        .unwrap()
        .get(0);
    assert!(
        failed.starts_with("part ") && failed.contains("refused"),
        "{failed}"
    );
    // The other part stops at its next batch, saying why.
    wait_for("the other part to stop", Duration::from_secs(60), || {
        (one_i64(
            &mut db,
            &format!("SELECT count(*) FROM backfill.job WHERE parent_id = {job} AND state IN ('queued', 'running')"),
        ) == 0)
            .then_some(())
    });
    let states: Vec<String> = db
        .query(
            "SELECT state || ': ' || coalesce(last_error, '') FROM backfill.job WHERE parent_id = $1 ORDER BY id",
            &[&job],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        states[1].starts_with("failed: ") && states[1].contains("refused"),
        "{states:?}"
    );
    assert!(
        states[0] == "succeeded: "
            || states[0] == format!("cancelled: stopped: job {job} is failed"),
        "{states:?}"
    );

    // Fixed, and run again by hand: every part continues from its cursor, in this session.
    db.batch_execute("DROP TRIGGER refuse_late ON backfill.process_instance_metadata")
        .unwrap();
    db.batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    assert_complete(&mut db, job);
}

/// Pairs of batch statements of different workers that ran at the same moment, as the
/// metadata table's statement triggers recorded them in public.span.
fn overlapping_batches(db: &mut Client) -> i64 {
    one_i64(
        db,
        "SELECT count(*) FROM public.span a JOIN public.span b
             ON a.pid < b.pid AND a.started < b.ended AND b.started < a.ended",
    )
}

/// How often the worker of one batch statement is not that of the one before it.
fn worker_switches(db: &mut Client) -> i64 {
    one_i64(
        db,
        "SELECT count(*) FROM (SELECT pid, lag(pid) OVER (ORDER BY started) AS before FROM public.span) s
          WHERE pid <> before",
    )
}

/// Batch statements that started sooner after the one before them (of any worker) ended than
/// that one took.
fn crowded_batches(db: &mut Client) -> i64 {
    one_i64(
        db,
        "SELECT count(*) FROM (SELECT started, ended, lag(started) OVER w AS before_started,
                                      lag(ended) OVER w AS before_ended
                                 FROM public.span WINDOW w AS (ORDER BY started)) s
          WHERE started - before_ended < before_ended - before_started",
    )
}

#[test]
fn under_load_the_parts_of_a_split_job_run_one_after_another_and_otherwise_together() {
    let (cluster, mut db) = start("split-turns", &["backfill.batch_size = 20"]);
    // Each batch statement's start and end, with its worker's pid.
    db.batch_execute(
        "CREATE TABLE public.span (pid int, started timestamptz, ended timestamptz);
         CREATE FUNCTION public.span_start() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.span VALUES (pg_backend_pid(), clock_timestamp(), NULL); RETURN NULL; END $$;
         CREATE FUNCTION public.span_end() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN UPDATE public.span SET ended = clock_timestamp() WHERE pid = pg_backend_pid() AND ended IS NULL;
               RETURN NULL; END $$;
         CREATE TRIGGER span_start BEFORE INSERT ON backfill.process_instance_metadata
             FOR EACH STATEMENT EXECUTE FUNCTION public.span_start();
         CREATE TRIGGER span_end AFTER INSERT ON backfill.process_instance_metadata
             FOR EACH STATEMENT EXECUTE FUNCTION public.span_end();",
    )
    .unwrap();
    // Nothing else running: the two parts' batches run at the same time.
    let job = add_keys(&mut db);
    assert_eq!(wait_ended(&cluster, job), "succeeded");
    assert_eq!(
        one_i64(&mut db, "SELECT count(DISTINCT pid) FROM public.span"),
        2
    );
    assert!(
        overlapping_batches(&mut db) > 0,
        "the parts never ran at once"
    );
    assert!(worker_switches(&mut db) > 1);

    // Sessions keeping both CPUs busy: one batch at a time, both workers still working.
    db.batch_execute(
        "DELETE FROM public.span;
         DELETE FROM backfill.process_instance_metadata;",
    )
    .unwrap();
    let busy: Vec<_> = ["busy1", "busy2"]
        .iter()
        .map(|name| {
            in_background(
                &cluster,
                name,
                "DO $$ BEGIN LOOP PERFORM 1; END LOOP; END $$",
            )
        })
        .collect();
    db.batch_execute(
        "UPDATE backfill.process_model SET metadata_extraction_paths = '[]' WHERE id = 'bulk/model'",
    )
    .unwrap();
    let job = add_keys(&mut db);
    assert_eq!(wait_ended(&cluster, job), "succeeded");
    db.batch_execute(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'busy_'",
    )
    .unwrap();
    for session in busy {
        session.join().unwrap();
    }
    assert_eq!(
        one_i64(&mut db, "SELECT count(DISTINCT pid) FROM public.span"),
        2
    );
    assert_eq!(overlapping_batches(&mut db), 0);
    // The parts one after another, each in one process, rather than alternating.
    assert_eq!(worker_switches(&mut db), 1);
    // Spaced out, too: after each batch the next one (of either worker) waits the pause one
    // worker alone would take, three times the batch at this load, rather than following it
    // at once whenever the other worker's own pause happens to end during it.
    assert_eq!(
        crowded_batches(&mut db),
        0,
        "of {} batches",
        one_i64(&mut db, "SELECT count(*) FROM public.span")
    );
    for (key, path) in KEYS {
        assert_eq!(wrong_rows(&mut db, BULK, key, path), 0, "key {key}");
    }
}
