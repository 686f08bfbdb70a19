//! An operator's tools around a backfill: preview of paths on real data, the off-peak window
//! (backfill.active_hours) and enqueue's not_before, and the coverage view.

mod common;

use common::{
    add_path, bulk_sql, one_i64, one_text, sqlstate, start_app, wait_ended, wait_for, wrong_rows,
    Cluster,
};
use postgres::Client;
use std::collections::HashMap;
use std::time::Duration;

const BULK: &str = "bulk/model";
const N: i64 = 3_000;
/// status is read with JSONPath, which builds the whole document: the one deeper than Python's
/// json.loads goes (instance 1) is an error.
const PATHS: &str = r#"[{"key": "status", "path": "$.invoice.status"}, {"key": "number", "path": "invoice.number"}]"#;

/// Bulk data with the three cases a backfill meets besides a plain value: instances without a
/// completed task (every seventh: a NULL value), rows the application wrote already (every
/// eleventh, key status), and one instance whose document Python cannot read (instance 1:
/// nested 10,002 levels, deeper than the 9,998 of Python 3.13's json.loads; an instance error).
/// (Parsing it as jsonb needs more than PostgreSQL's default max_stack_depth.)
fn start(name: &str, extra: &[&str]) -> (Cluster, Client) {
    let mut conf = vec!["backfill.workers_per_job = 1"];
    conf.extend_from_slice(extra);
    let (cluster, mut db) = start_app(name, true, &conf, &bulk_sql(N));
    db.batch_execute(
        r#"DELETE FROM backfill.task WHERE process_instance_id % 7 = 0;
           INSERT INTO backfill.process_instance_metadata
                  (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
           SELECT id, 'status', 'app-' || id, 1, 1 FROM backfill.process_instance
            WHERE process_model_identifier = 'bulk/model' AND id % 11 = 0;
           SET max_stack_depth = '7MB';
           INSERT INTO backfill.json_data
           SELECT 'deep', ('{"invoice": {"number": "deep", "status": ' || repeat('[', 10000) || repeat(']', 10000) || '}}')::jsonb;
           RESET max_stack_depth;
           UPDATE backfill.task SET json_data_hash = 'deep' WHERE process_instance_id = 1;"#,
    )
    .unwrap();
    (cluster, db)
}

/// Sets the bulk model's paths to PATHS: the job the update queued.
fn set_paths(db: &mut Client) -> i64 {
    db.batch_execute(&format!(
        "UPDATE backfill.process_model SET metadata_extraction_paths = '{PATHS}' WHERE id = '{BULK}'"
    ))
    .unwrap();
    one_i64(
        db,
        "SELECT max(id) FROM backfill.job WHERE parent_id IS NULL",
    )
}

struct Previewed {
    instance: i64,
    key: String,
    value: Option<String>,
    value_now: Option<String>,
    outcome: String,
}

fn preview(db: &mut Client, sample: i32) -> Vec<Previewed> {
    db.query(
        "SELECT process_instance_id, key, value, value_now, outcome
           FROM backfill.preview($1, $2::text::jsonb, $3)",
        &[&BULK, &PATHS, &sample],
    )
    .unwrap()
    .iter()
    .map(|r| Previewed {
        instance: r.get(0),
        key: r.get(1),
        value: r.get(2),
        value_now: r.get(3),
        outcome: r.get(4),
    })
    .collect()
}

/// Everything the extension's tables hold, as one text: what "writes nothing" compares.
fn snapshot(db: &mut Client) -> String {
    one_text(
        db,
        "SELECT (SELECT count(*) FROM backfill.process_instance_metadata)::text || '/'
                || (SELECT coalesce(sum(hashtext(m::text)), 0) FROM backfill.process_instance_metadata m)::text || '/'
                || (SELECT count(*) FROM backfill.job)::text || '/'
                || (SELECT count(*) FROM backfill.coverage_count)::text",
    )
}

#[test]
fn preview_shows_what_the_job_then_writes_spread_over_the_ids_and_writes_nothing() {
    let (cluster, mut db) = start("operate-preview", &[]);
    let before = snapshot(&mut db);
    let sample = 40;
    let rows = preview(&mut db, sample);
    assert_eq!(snapshot(&mut db), before, "the preview wrote something");

    // Spread over the model's whole id range, two rows (keys) per instance.
    let mut ids: Vec<i64> = rows.iter().map(|r| r.instance).collect();
    ids.dedup();
    assert_eq!(rows.len(), 2 * ids.len());
    assert!(ids.len() >= 38 && ids.len() <= 40, "{ids:?}");
    let (lo, hi) = (
        one_i64(&mut db, "SELECT min(id) FROM backfill.process_instance WHERE process_model_identifier = 'bulk/model'"),
        one_i64(&mut db, "SELECT max(id) FROM backfill.process_instance WHERE process_model_identifier = 'bulk/model'"),
    );
    assert_eq!(ids[0], lo);
    assert!(
        *ids.last().unwrap() > hi - 2 * (hi - lo) / i64::from(sample),
        "{ids:?}"
    );
    let widest = ids.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        widest <= 3 * (hi - lo) / i64::from(sample),
        "gap of {widest}: {ids:?}"
    );

    // Every outcome is there: the error of instance 1, rows kept, NULL values, inserts.
    let outcome = |instance: i64, key: &str| {
        rows.iter()
            .find(|r| r.instance == instance && r.key == key)
            .map(|r| r.outcome.as_str())
    };
    assert_eq!(outcome(1, "status"), Some("error"));
    assert_eq!(outcome(1, "number"), Some("error"));
    for r in &rows {
        let expected = if r.instance == 1 {
            "error"
        } else if r.key == "status" && r.instance % 11 == 0 {
            "keep"
        } else {
            "insert"
        };
        assert_eq!(r.outcome, expected, "instance {} key {}", r.instance, r.key);
        if r.instance % 7 == 0 {
            assert_eq!(r.value, None, "no completed task: nothing found");
        }
    }
    assert!(rows
        .iter()
        .any(|r| r.outcome == "keep"
            && r.value_now.as_deref() == Some(&format!("app-{}", r.instance))));
    assert!(rows
        .iter()
        .any(|r| r.outcome == "insert" && r.value.is_none()));

    // The job then writes exactly what the preview said, for every sampled instance.
    let job = set_paths(&mut db);
    assert_eq!(wait_ended(&cluster, "app", job), "succeeded");
    assert_eq!(
        one_i64(
            &mut db,
            &format!("SELECT errors FROM backfill.progress WHERE id = {job}")
        ),
        1
    );
    let written: HashMap<(i64, String), Option<String>> = db
        .query(
            "SELECT process_instance_id, key::text, value::text FROM backfill.process_instance_metadata
              WHERE process_instance_id = ANY ($1)",
            &[&ids],
        )
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    for r in &rows {
        let now = written.get(&(r.instance, r.key.clone()));
        match r.outcome.as_str() {
            "insert" => assert_eq!(now, Some(&r.value), "instance {} key {}", r.instance, r.key),
            "keep" => assert_eq!(
                now,
                Some(&r.value_now),
                "instance {} key {}",
                r.instance,
                r.key
            ),
            "error" => assert_eq!(now, None, "instance {} key {}", r.instance, r.key),
            other => panic!("outcome {other}"),
        }
    }
    // A key whose path changes would be replaced where the value differs.
    let changed = r#"[{"key": "status", "path": "invoice.number"}]"#;
    for row in db
        .query(
            &format!("SELECT process_instance_id, outcome, value = value_now FROM backfill.preview('{BULK}', '{changed}', 10)"),
            &[],
        )
        .unwrap()
    {
        let instance: i64 = row.get(0);
        let expected = match instance {
            // Its job failed on it (JSONPath), so it has no row; this dotted path reads it.
            1 => "insert",
            // Nothing found: an overwrite never replaces a value with nothing.
            i if i % 7 == 0 => "keep",
            _ => "replace",
        };
        assert_eq!(row.get::<_, String>(1), expected, "instance {instance}");
        assert_ne!(row.get::<_, Option<bool>>(2), Some(true), "instance {instance}");
    }
}

#[test]
fn preview_summary_counts_the_sample_and_estimates_the_model() {
    let (_cluster, mut db) = start("operate-summary", &["backfill.max_workers = 0"]);
    let before = snapshot(&mut db);
    let rows = db
        .query(
            "SELECT key, sampled, with_value, without_value, errors, instances, estimated_with_value
               FROM backfill.preview_summary($1, $2::text::jsonb, 600) ORDER BY key",
            &[&BULK, &PATHS],
        )
        .unwrap();
    assert_eq!(snapshot(&mut db), before);
    let instances = one_i64(&mut db, "SELECT count(*) FROM backfill.process_instance WHERE process_model_identifier = 'bulk/model'");
    // The same sample through preview, counted here.
    let sampled: Vec<(String, Option<String>, String)> = db
        .query(
            "SELECT key, value, outcome FROM backfill.preview($1, $2::text::jsonb, 600)",
            &[&BULK, &PATHS],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let key: String = row.get(0);
        let of_key: Vec<_> = sampled.iter().filter(|s| s.0 == key).collect();
        let errors = of_key.iter().filter(|s| s.2 == "error").count() as i64;
        let with_value = of_key
            .iter()
            .filter(|s| s.2 != "error" && s.1.is_some())
            .count() as i64;
        let n = of_key.len() as i64;
        assert_eq!(
            (
                row.get::<_, i64>(1),
                row.get::<_, i64>(2),
                row.get::<_, i64>(3),
                row.get::<_, i64>(4),
                row.get::<_, i64>(5)
            ),
            (n, with_value, n - with_value - errors, errors, instances),
            "key {key}"
        );
        assert_eq!(errors, 1, "instance 1 is sampled and fails");
        assert_eq!(
            row.get::<_, i64>(6),
            (with_value as f64 * instances as f64 / n as f64).round() as i64
        );
        // About six instances in seven have a value.
        let share = with_value as f64 / n as f64;
        assert!((0.8..0.9).contains(&share), "{share}");
    }
}

#[test]
fn preview_refuses_what_the_model_update_would_refuse() {
    let (_cluster, mut db) = start("operate-refusals", &["backfill.max_workers = 0"]);
    for (call, code) in [
        (format!("SELECT * FROM backfill.preview('{BULK}', '[{{\"key\": \"x\"}}]')"), "22023"),
        (format!("SELECT * FROM backfill.preview('{BULK}', '[{{\"key\": 1, \"path\": \"a\"}}]')"), "22023"),
        (format!("SELECT * FROM backfill.preview('{BULK}', '{{\"key\": \"x\"}}')"), "22023"),
        (format!("SELECT * FROM backfill.preview('{BULK}', '[{{\"key\": \"x\", \"path\": \"a\"}}, {{\"key\": \"x\", \"path\": \"b\"}}]')"), "22023"),
        (format!("SELECT * FROM backfill.preview('{BULK}', '{PATHS}', 0)"), "22023"),
        (format!("SELECT * FROM backfill.preview_summary('{BULK}', '[{{\"path\": \"a\"}}]')"), "22023"),
        (format!("SELECT * FROM backfill.preview('no/model', '{PATHS}')"), "22023"),
        (format!("SELECT * FROM backfill.preview(NULL, '{PATHS}')"), "22004"),
        (format!("SELECT * FROM backfill.preview('{BULK}', NULL)"), "22004"),
    ] {
        let error = db.batch_execute(&call).expect_err(&call);
        assert_eq!(sqlstate(&error), code, "{call}");
    }
    // The same paths are refused by the model's validation with the same code.
    let error = db
        .batch_execute(&format!(
            "UPDATE backfill.process_model SET metadata_extraction_paths = '[{{\"key\": \"x\"}}]' WHERE id = '{BULK}'"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&error), "22023");
}

/// A window of the day that does not hold the server's time now (it opens in two hours), and
/// one that does.
fn window(db: &mut Client, open_now: bool) -> String {
    let (from, to) = if open_now {
        ("-1 hour", "1 hour")
    } else {
        ("2 hours", "3 hours")
    };
    one_text(
        db,
        &format!(
            "SELECT to_char(localtimestamp + interval '{from}', 'HH24:MI') || '-'
                    || to_char(localtimestamp + interval '{to}', 'HH24:MI')"
        ),
    )
}

fn processed(db: &mut Client, job: i64) -> i64 {
    one_i64(
        db,
        &format!("SELECT processed FROM backfill.progress WHERE id = {job}"),
    )
}

#[test]
fn active_hours_hold_jobs_outside_the_window_and_stop_running_ones_at_a_batch() {
    let (cluster, mut db) = start("operate-window", &["backfill.batch_delay = '50ms'"]);
    let closed = window(&mut db, false);
    cluster.set_and_reload("backfill.active_hours", &closed);

    // Queued outside the window: not started; the progress view and the log say why.
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    wait_for("the log to say jobs wait", Duration::from_secs(30), || {
        cluster
            .log()
            .contains(&format!("jobs wait for backfill.active_hours '{closed}'"))
            .then_some(())
    });
    // The window is the server's, whatever time zone a session reads it in.
    db.batch_execute("SET TimeZone = 'Pacific/Kiritimati'")
        .unwrap();
    let row = db
        .query_one(
            "SELECT state, processed, waiting_for,
                    abs(extract(epoch FROM resumes_at - date_trunc('minute', now() + interval '2 hours'))) <= 60
               FROM backfill.progress WHERE id = $1",
            &[&job],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, Option<String>>(2),
            row.get::<_, bool>(3)
        ),
        (
            "queued".to_owned(),
            0,
            Some("active_hours".to_owned()),
            true
        )
    );

    // The window opens: the job runs; it closes: the job stops at a batch boundary.
    db.batch_execute("RESET TimeZone").unwrap();
    let open = window(&mut db, true);
    cluster.set_and_reload("backfill.active_hours", &open);
    wait_for("some batches", Duration::from_secs(60), || {
        (processed(&mut db, job) >= 500).then_some(())
    });
    cluster.set_and_reload("backfill.active_hours", &closed);
    wait_for(
        "the job to stop at a batch",
        Duration::from_secs(30),
        || {
            cluster
                .log()
                .contains(&format!(
                    "job {job} stops at a batch boundary outside backfill.active_hours '{closed}'"
                ))
                .then_some(())
        },
    );
    let stopped_at = processed(&mut db, job);
    assert!(stopped_at < 2_999, "stopped at {stopped_at}");
    assert_eq!(stopped_at % 100, 0, "whole batches");
    assert_eq!(
        one_text(
            &mut db,
            &format!("SELECT state || ' ' || waiting_for FROM backfill.progress WHERE id = {job}")
        ),
        "running active_hours"
    );
    // Nothing runs while it is closed, and no worker stays connected waiting for the window
    // (DROP DATABASE would wait for it): it leaves, and the launcher starts one when the
    // window opens or the setting changes.
    worker_leaves(&mut db);
    assert_eq!(processed(&mut db, job), stopped_at);

    // The window opens again: the job continues at its cursor and completes exactly.
    cluster.set_and_reload("backfill.active_hours", &open);
    assert_eq!(wait_ended(&cluster, "app", job), "succeeded");
    assert_eq!(
        one_i64(
            &mut db,
            &format!("SELECT processed FROM backfill.progress WHERE id = {job}")
        ),
        3_000
    );
    assert_eq!(wrong_rows(&mut db, BULK, "number", "invoice.number"), 0);

    // A malformed window is refused, naming what is wrong.
    let error = db
        .batch_execute("ALTER SYSTEM SET backfill.active_hours = '22:00-25:00'")
        .unwrap_err();
    let message = format!("{:?}", error.as_db_error().unwrap());
    assert_eq!(sqlstate(&error), "22023");
    assert!(message.contains("25:00"), "{message}");
}

/// Waits until no worker serves the database.
fn worker_leaves(db: &mut Client) {
    wait_for("the worker to leave", Duration::from_secs(30), || {
        db.query_one("SELECT backfill.worker_pid() IS NULL", &[])
            .unwrap()
            .get::<_, bool>(0)
            .then_some(())
    });
}

#[test]
fn not_before_holds_a_job_until_its_time() {
    let (cluster, mut db) = start("operate-not-before", &[]);
    db.batch_execute(&format!(
        "UPDATE backfill.process_model SET metadata_extraction_paths = '{PATHS}' WHERE id = '{BULK}';
         SELECT backfill.cancel(max(id)) FROM backfill.job;"
    ))
    .unwrap();
    let starts = |cluster: &Cluster| {
        cluster
            .log()
            .matches("backfill worker started for database \"app\"")
            .count()
    };
    let before = starts(&cluster);
    let job = one_i64(
        &mut db,
        &format!(
            "SELECT backfill.enqueue('{BULK}', ARRAY['number'], false, now() + interval '6 s')"
        ),
    );
    assert_eq!(
        one_text(
            &mut db,
            &format!("SELECT state || ' ' || waiting_for FROM backfill.progress WHERE id = {job}")
        ),
        "queued not_before"
    );
    // The enqueue starts a worker, which finds nothing to run yet and does not wait
    // connected; the launcher starts one when the job's time comes.
    wait_for("a worker to start", Duration::from_secs(30), || {
        (starts(&cluster) > before).then_some(())
    });
    worker_leaves(&mut db);
    assert_eq!(
        one_text(
            &mut db,
            &format!("SELECT state FROM backfill.job WHERE id = {job}")
        ),
        "queued"
    );
    assert_eq!(wait_ended(&cluster, "app", job), "succeeded");
    assert!(
        db.query_one(
            "SELECT started_at >= not_before FROM backfill.job WHERE id = $1",
            &[&job]
        )
        .unwrap()
        .get::<_, bool>(0),
        "started before not_before"
    );
}

/// Instances, instances with a row, with a value, for a key of a model: counted here, from
/// the tables.
fn counted_here(db: &mut Client, model: &str, key: &str) -> (i64, i64, i64) {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM backfill.process_instance WHERE process_model_identifier = $1),
                    count(m.id), count(m.value)
               FROM backfill.process_instance i
               JOIN backfill.process_instance_metadata m ON m.process_instance_id = i.id AND m.key = $2
              WHERE i.process_model_identifier = $1",
            &[&model, &key],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// The coverage view's counts for a key of a model, after checking its percent.
fn in_view(db: &mut Client, model: &str, key: &str) -> (i64, i64, i64) {
    let row = db
        .query_one(
            "SELECT instances, with_row, with_value,
                    percent = CASE WHEN instances = 0 THEN 100.0 ELSE round(100.0 * with_value / instances, 1) END
                    AND counted_at IS NOT NULL
               FROM backfill.coverage WHERE model = $1 AND key = $2",
            &[&model, &key],
        )
        .unwrap();
    assert!(row.get::<_, bool>(3));
    (row.get(0), row.get(1), row.get(2))
}

/// Waits until the coverage of every key of the bulk model was counted after job `job` ended.
fn wait_for_count(db: &mut Client, job: i64) {
    wait_for(
        "the job's keys to be counted",
        Duration::from_secs(60),
        || {
            (one_i64(
                db,
                &format!(
                    "SELECT count(*) FROM backfill.coverage c, backfill.job j
                      WHERE j.id = {job} AND c.model = '{BULK}'
                        AND (c.counted_at IS NULL OR c.counted_at < j.finished_at)"
                ),
            ) == 0)
                .then_some(())
        },
    );
}

/// A connection holding a lock on the table coverage counts are recorded in, in a transaction
/// left open: a count waits behind it until it commits or goes.
fn hold_coverage_counts(cluster: &Cluster) -> Client {
    let mut holder = cluster.connect("app");
    holder
        .batch_execute("BEGIN; LOCK TABLE backfill.coverage_count IN SHARE MODE")
        .unwrap();
    holder
}

/// Waits until a coverage count waits for the lock `hold_coverage_counts` holds.
fn until_the_count_waits_for_the_lock(db: &mut Client) {
    wait_for(
        "the count to wait for the lock",
        Duration::from_secs(30),
        || {
            (one_i64(
                db,
                "SELECT count(*) FROM pg_locks
                  WHERE relation = 'backfill.coverage_count'::regclass AND NOT granted",
            ) > 0)
                .then_some(())
        },
    );
}

#[test]
fn a_job_commits_its_rows_and_success_before_counting_its_coverage() {
    // The coverage count comes after the job's last transaction, in one of its own: while it
    // is held up (here behind a lock on the table it records into), the job has succeeded,
    // all its rows are there, and the application can save the instances of its last batch.
    let (cluster, mut db) = start("operate-count-after", &[]);
    let mut holder = hold_coverage_counts(&cluster);
    let job = set_paths(&mut db);
    assert_eq!(wait_ended(&cluster, "app", job), "succeeded");
    until_the_count_waits_for_the_lock(&mut db);
    // Every instance but the one whose document is an error (instance 1).
    assert_eq!(
        common::wrong_rows_where(&mut db, BULK, "number", "invoice.number", "i.id <> 1"),
        0
    );
    db.batch_execute(&format!(
        "SET lock_timeout = '2s';
         UPDATE backfill.process_instance SET status = 'saved'
          WHERE id = (SELECT max(id) FROM backfill.process_instance WHERE process_model_identifier = '{BULK}');
         RESET lock_timeout;"
    ))
    .unwrap();
    holder.batch_execute("COMMIT").unwrap();
    wait_for_count(&mut db, job);
    assert_eq!(
        in_view(&mut db, BULK, "number"),
        counted_here(&mut db, BULK, "number")
    );
}

/// wait() returns after the count, however long it is held up (here behind a lock on the table
/// it records into): until then a wait times out, and the view says the count is pending.
#[test]
fn wait_returns_after_a_held_up_count() {
    let (mut cluster, mut db) = start("operate-wait-held", &[]);
    let mut holder = hold_coverage_counts(&cluster);
    let job = set_paths(&mut db);
    let waiter = {
        let mut db = cluster.connect("app");
        std::thread::spawn(move || {
            one_text(&mut db, &format!("SELECT backfill.wait({job}, '300 s')"))
        })
    };
    assert_eq!(wait_ended(&cluster, "app", job), "succeeded");
    until_the_count_waits_for_the_lock(&mut db);
    let started = std::time::Instant::now();
    assert_eq!(
        one_text(&mut db, &format!("SELECT backfill.wait({job}, '0.3 s')")),
        "succeeded"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "wait returned before the count, after {:?}",
        started.elapsed()
    );
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FILTER (WHERE count_pending) FROM backfill.coverage WHERE model = 'bulk/model'"
        ),
        2
    );
    assert!(!waiter.is_finished());
    holder.batch_execute("COMMIT").unwrap();
    assert_eq!(waiter.join().unwrap(), "succeeded");
    for key in ["status", "number"] {
        assert_eq!(
            in_view(&mut db, BULK, key),
            counted_here(&mut db, BULK, key),
            "key {key}"
        );
    }
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FILTER (WHERE count_pending) FROM backfill.coverage"
        ),
        0
    );

    // A crash between a job's success and its count: the count is owed still, and a worker
    // with nothing else to do counts it after the restart.
    let holder = hold_coverage_counts(&cluster);
    let job = common::add_path(&mut db, BULK, "again", "invoice.number");
    assert_eq!(wait_ended(&cluster, "app", job), "succeeded");
    until_the_count_waits_for_the_lock(&mut db);
    // A job's last transaction commits asynchronously, as its batches do: a synchronous
    // commit after it makes it durable before the crash.
    db.batch_execute("CREATE TABLE flushed ()").unwrap();
    // The job owes the count when the server crashes (nothing else clears it but a count).
    let owed = one_text(
        &mut db,
        &format!("SELECT coverage_due::text FROM backfill.job WHERE id = {job}"),
    );
    assert_eq!(owed, "true");
    // The holder stays connected until the server is down: its disconnect would let the
    // count through.
    cluster.pg_stop("immediate");
    drop((holder, db));
    cluster.pg_start();
    let mut db = cluster.connect("app");
    assert_eq!(
        one_text(&mut db, &format!("SELECT backfill.wait({job}, '120 s')")),
        "succeeded"
    );
    assert_eq!(
        in_view(&mut db, BULK, "again"),
        counted_here(&mut db, BULK, "again")
    );
}

/// `UPDATE ...; SELECT backfill.wait(job); SELECT ... FROM backfill.coverage`, as a script
/// verifying a backfill runs it: the coverage is there, exact, every time. (The count comes in
/// a transaction after the job's last; wait returns only after it.)
#[test]
fn coverage_is_counted_when_wait_returns() {
    let (_cluster, mut db) = start("operate-wait-coverage", &[]);
    // 300 instances, so that 50 jobs take seconds, not minutes.
    db.batch_execute(&format!(
        "UPDATE backfill.process_instance SET process_model_identifier = 'other/model'
          WHERE process_model_identifier = '{BULK}' AND id > 300"
    ))
    .unwrap();
    for round in 0..50 {
        let key = format!("k{round}");
        let paths = format!(
            r#"[{{"key": "number", "path": "invoice.number"}}, {{"key": "{key}", "path": "invoice.number"}}]"#
        );
        db.execute(
            "UPDATE backfill.process_model SET metadata_extraction_paths = $1::text::jsonb WHERE id = $2",
            &[&paths, &BULK],
        )
        .unwrap();
        let job = one_i64(
            &mut db,
            "SELECT max(id) FROM backfill.job WHERE parent_id IS NULL",
        );
        assert_eq!(
            one_text(&mut db, &format!("SELECT backfill.wait({job}, '60 s')")),
            "succeeded"
        );
        let row = db
            .query_one(
                "SELECT count_pending FROM backfill.coverage WHERE model = $1 AND key = $2",
                &[&BULK, &key],
            )
            .unwrap();
        assert!(
            !row.get::<_, bool>(0),
            "round {round}: the count is pending"
        );
        assert_eq!(
            in_view(&mut db, BULK, &key),
            counted_here(&mut db, BULK, &key),
            "round {round}"
        );
    }
}

#[test]
fn coverage_equals_independent_counts_after_a_backfill_with_missing_values_and_errors() {
    let (cluster, mut db) = start("operate-coverage", &[]);
    let job = set_paths(&mut db);
    assert_eq!(wait_ended(&cluster, "app", job), "succeeded");
    // The job's worker counts its keys right after it succeeded.
    wait_for_count(&mut db, job);
    for key in ["status", "number"] {
        let here = counted_here(&mut db, BULK, key);
        assert_eq!(in_view(&mut db, BULK, key), here, "key {key}");
        assert_eq!(here.0, N);
        assert!(
            here.1 < N && here.2 < here.1,
            "an error and NULL values: {here:?}"
        );
    }
    // Rows written afterwards show after a count on request.
    db.batch_execute(
        "DELETE FROM backfill.process_instance_metadata WHERE key = 'number' AND process_instance_id % 13 = 0",
    )
    .unwrap();
    assert_ne!(
        in_view(&mut db, BULK, "number"),
        counted_here(&mut db, BULK, "number")
    );
    assert_eq!(
        one_i64(&mut db, "SELECT backfill.count_coverage('bulk/model')"),
        2
    );
    assert_eq!(
        in_view(&mut db, BULK, "number"),
        counted_here(&mut db, BULK, "number")
    );

    // A model whose paths no job has filled yet has no counts until asked; then every model.
    db.batch_execute(
        r#"INSERT INTO backfill.process_model VALUES ('empty/model', 'Empty', '[{"key": "number", "path": "invoice.number"}]')"#,
    )
    .unwrap();
    assert_eq!(
        one_text(&mut db, "SELECT coalesce(instances::text, 'never counted') FROM backfill.coverage WHERE model = 'empty/model'"),
        "never counted"
    );
    assert_eq!(one_i64(&mut db, "SELECT backfill.count_coverage()"), 3);
    assert_eq!(in_view(&mut db, "empty/model", "number"), (0, 0, 0));
    for key in ["status", "number"] {
        assert_eq!(
            in_view(&mut db, BULK, key),
            counted_here(&mut db, BULK, key),
            "key {key}"
        );
    }
    let error = db
        .batch_execute("SELECT backfill.count_coverage('no/model')")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "22023");
}

#[test]
fn preview_and_counts_read_with_the_callers_privileges() {
    let (cluster, mut db) = start("operate-privileges", &["backfill.max_workers = 0"]);
    // Everything an operator is granted (docs/security.md) except reading the task data.
    db.batch_execute(
        "CREATE ROLE peek LOGIN;
         GRANT USAGE ON SCHEMA backfill TO peek;
         GRANT SELECT ON backfill.process_model, backfill.coverage, backfill.process_instance,
                         backfill.process_instance_metadata TO peek;
         GRANT EXECUTE ON FUNCTION backfill.preview(text, jsonb, integer),
                                   backfill.preview_summary(text, jsonb, integer),
                                   backfill.count_coverage(text) TO peek;",
    )
    .unwrap();
    let mut peek = cluster.connect_as("peek", "app");
    for call in [
        format!("SELECT * FROM backfill.preview('{BULK}', '{PATHS}')"),
        format!("SELECT * FROM backfill.preview_summary('{BULK}', '{PATHS}')"),
    ] {
        let error = peek.batch_execute(&call).expect_err(&call);
        assert_eq!(sqlstate(&error), "42501", "{call}");
    }
    // Counting needs only what it reads; what it records is no more than the role can see.
    db.batch_execute("ALTER TABLE backfill.process_instance_metadata ENABLE ROW LEVEL SECURITY;
                      CREATE POLICY peek_sees_little ON backfill.process_instance_metadata TO peek
                          USING (process_instance_id < 100);
                      UPDATE backfill.process_model SET metadata_extraction_paths = '[{\"key\": \"status\", \"path\": \"invoice.status\"}]'
                       WHERE id = 'bulk/model';",
    )
    .unwrap();
    // The job (queued by the superuser) never ran: no workers. The app rows are there.
    assert_eq!(
        one_i64(&mut peek, "SELECT backfill.count_coverage('bulk/model')"),
        1
    );
    let seen = one_i64(
        &mut peek,
        "SELECT with_row FROM backfill.coverage WHERE model = 'bulk/model'",
    );
    assert_eq!(
        seen,
        one_i64(
            &mut peek,
            "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'status'"
        )
    );
    assert!(
        seen < one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'status'"
        )
    );
    // Nothing else of the extension's is open to it.
    for denied in [
        "SELECT * FROM backfill.coverage_count",
        "SELECT backfill.coverage_record('bulk/model', '{status}', '{1}', '{1}', '{1}', 'peek')",
        "SELECT backfill.job_hold(1, now())",
    ] {
        let error = peek.batch_execute(denied).expect_err(denied);
        assert_eq!(sqlstate(&error), "42501", "{denied}");
    }
}

/// The queries of docs/operating.md's "Alerting", in order: a failed job, a stalled one, a
/// database behind the library.
fn alert_queries() -> Vec<String> {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operating.md")).unwrap();
    let section = &page[page.find("## Alerting").expect("operating.md has Alerting")..];
    let block = section
        .split("```sql\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("Alerting has an sql block");
    let queries: Vec<String> = block.split("\n\n").map(|q| q.trim().to_owned()).collect();
    assert_eq!(queries.len(), 3, "{block}");
    queries
}

fn alerted(db: &mut Client, query: &str) -> Vec<String> {
    db.simple_query(query)
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_alerting_queries_find_a_failed_job_a_stalled_one_and_a_database_behind() {
    let (cluster, mut db) = start_app("alerts", true, &[], &bulk_sql(1_000));
    let queries = alert_queries();
    let (failed, stalled, behind) = (
        &queries[0],
        &queries[1].replace("10 minutes", "2 seconds"),
        &queries[2],
    );
    assert!(stalled.contains("2 seconds"), "{stalled}");
    let fine = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(wait_ended(&cluster, "app", fine), "succeeded");
    for query in [failed, stalled, behind] {
        assert_eq!(alerted(&mut db, query), Vec::<String>::new(), "{query}");
    }

    // Stalled: its batches wait for a lock the application holds.
    let mut blocker = cluster.connect("app");
    blocker
        .batch_execute(
            "BEGIN; LOCK TABLE backfill.process_instance_metadata IN ACCESS EXCLUSIVE MODE",
        )
        .unwrap();
    let waits = add_path(&mut db, BULK, "status", "invoice.status");
    wait_for(
        "the stalled job to be alerted",
        Duration::from_secs(60),
        || (alerted(&mut db, stalled) == vec![waits.to_string()]).then_some(()),
    );
    blocker.batch_execute("COMMIT").unwrap();
    assert_eq!(wait_ended(&cluster, "app", waits), "succeeded");
    assert_eq!(alerted(&mut db, stalled), Vec::<String>::new());

    // Failed: recording its first batch fails, every attempt.
    db.batch_execute(
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'the auditors refuse'; END $$;
         CREATE TRIGGER refuse BEFORE UPDATE ON backfill.job FOR EACH ROW
             WHEN (NEW.instances_processed > 0) EXECUTE FUNCTION public.refuse();",
    )
    .unwrap();
    let refused = add_path(&mut db, BULK, "total", "invoice.total");
    assert_eq!(wait_ended(&cluster, "app", refused), "failed");
    assert_eq!(alerted(&mut db, failed), vec![refused.to_string()]);
    db.batch_execute("DROP TRIGGER refuse ON backfill.job")
        .unwrap();

    // Behind: a database whose objects are an older release's.
    let mut old = cluster.create_db("old");
    old.batch_execute("DROP EXTENSION backfill; CREATE EXTENSION backfill VERSION '0.7.0'")
        .unwrap();
    assert_eq!(alerted(&mut old, behind), vec!["0.7.0".to_owned()]);
    assert_eq!(alerted(&mut db, behind), Vec::<String>::new());
}
