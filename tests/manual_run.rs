//! The model-update trigger, the job queue and `CALL backfill.run`, with real commits. The
//! worker of these servers serves another database, so every job here runs only when a test
//! runs it.

mod common;

use common::{
    add_path, one_i64, one_text, start_app, wrong_rows, wrong_rows_where, Cluster, SAMPLE_SQL,
};
use postgres::Client;
use std::thread;
use std::time::{Duration, Instant};

const INVOICE: &str = "finance/invoice";
const INVOICES: i64 = 3000;

/// A server whose worker serves another database, with the sample loaded in "app".
fn start(name: &str, extra: &[&str]) -> (Cluster, Client) {
    start_app(name, false, extra, SAMPLE_SQL)
}

fn job_row(db: &mut Client, id: i64) -> (String, i64, i64, i64, i64, Option<i64>) {
    let row = db
        .query_one(
            "SELECT state, instances_total, instances_processed, instances_updated, errors, last_instance_id
               FROM backfill.job WHERE id = $1",
            &[&id],
        )
        .unwrap();
    (
        row.get(0),
        row.get::<_, Option<i64>>(1).unwrap_or(0),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    )
}

#[test]
fn model_update_then_run_fills_every_instance_exactly() {
    let (cluster, mut db) = start("run-exact", &[]);
    // Rows the live engine already wrote for the key about to be added: the backfill must
    // leave them alone.
    db.batch_execute(
        "INSERT INTO backfill.process_instance_metadata
                (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
         SELECT id, 'invoice_status', 'live engine value', 1, 1
           FROM backfill.process_instance
          WHERE process_model_identifier = 'finance/invoice' AND id % 7 = 0",
    )
    .unwrap();
    let preexisting = one_i64(
        &mut db,
        "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'invoice_status'",
    );
    assert!(preexisting > 100);

    let (mut session, notices) = cluster.connect_with_notices("app");
    session
        .batch_execute(
            r#"UPDATE backfill.process_model
                  SET metadata_extraction_paths = metadata_extraction_paths
                      || '[{"key": "invoice_status", "path": "invoice.status"}]'::jsonb
                WHERE id = 'finance/invoice'"#,
        )
        .unwrap();
    let job = one_i64(&mut db, "SELECT id FROM backfill.job");
    let notice = notices.lock().unwrap().join("\n");
    assert!(
        notice.contains(&format!(
            "backfill job {job} queued for finance/invoice: invoice_status"
        )),
        "{notice}"
    );
    assert!(
        notice.contains(
            "will wait: backfill.max_workers is 0, so no background worker runs backfill jobs"
        ),
        "{notice}"
    );
    assert_eq!(
        one_text(&mut db, "SELECT state || ' ' || origin || ' ' || overwrite || ' ' || paths::text FROM backfill.job"),
        r#"queued model_update false [{"key": "invoice_status", "path": "invoice.status", "overwrite": false}]"#
    );

    session
        .batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    let summary = notices.lock().unwrap().last().cloned().unwrap();
    assert!(
        summary.contains(&format!(
            "backfill job {job} succeeded: {INVOICES} of {INVOICES} instances processed"
        )),
        "{summary}"
    );

    let (state, total, processed, updated, errors, cursor) = job_row(&mut db, job);
    assert_eq!(
        (state.as_str(), total, processed, errors),
        ("succeeded", INVOICES, INVOICES, 0)
    );
    assert_eq!(
        updated,
        INVOICES - preexisting,
        "only instances without a row were written"
    );
    assert_eq!(cursor, Some(one_i64(&mut db, "SELECT max(id) FROM backfill.process_instance WHERE process_model_identifier = 'finance/invoice'")));
    // Every instance has exactly one row; rows the engine wrote are untouched, all others
    // equal extract_metadata of the latest completed task data.
    assert_eq!(
        one_i64(&mut db, "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'invoice_status' AND value = 'live engine value'"),
        preexisting
    );
    assert_eq!(
        wrong_rows_where(
            &mut db,
            INVOICE,
            "invoice_status",
            "invoice.status",
            "i.id % 7 <> 0"
        ),
        0
    );
    // No other model got the key; instances without a completed task got NULL.
    assert_eq!(one_i64(&mut db, "SELECT count(*) FROM backfill.process_instance_metadata m JOIN backfill.process_instance i ON i.id = m.process_instance_id WHERE m.key = 'invoice_status' AND i.process_model_identifier <> 'finance/invoice'"), 0);
    assert_eq!(one_i64(&mut db, "SELECT count(*) FROM backfill.process_instance_metadata m JOIN backfill.process_instance i ON i.id = m.process_instance_id WHERE m.key = 'invoice_status' AND m.value IS NULL"), 200 - one_i64(&mut db, "SELECT count(*) FROM backfill.process_instance WHERE process_model_identifier = 'finance/invoice' AND id % 7 = 0 AND status = 'running'"));
    // The latest task decides, not the last created: the sample's end times are out of order.
    assert!(one_i64(&mut db, "SELECT count(DISTINCT value) FROM backfill.process_instance_metadata WHERE key = 'invoice_status'") >= 3);
    // created/updated timestamps are epoch seconds of the write.
    assert_eq!(one_i64(&mut db, "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'invoice_status' AND process_instance_id % 7 <> 0 AND (created_at_in_seconds < extract(epoch FROM now()) - 600 OR updated_at_in_seconds > extract(epoch FROM now()) + 1 OR created_at_in_seconds <> updated_at_in_seconds)"), 0);

    // The progress view reports the finished job.
    let row = db
        .query_one("SELECT model, state, processed, total, percent::text, errors, keys FROM backfill.progress WHERE id = $1", &[&job])
        .unwrap();
    assert_eq!(row.get::<_, String>(0), INVOICE);
    assert_eq!(row.get::<_, String>(1), "succeeded");
    assert_eq!(
        (row.get::<_, i64>(2), row.get::<_, i64>(3)),
        (INVOICES, INVOICES)
    );
    assert_eq!(row.get::<_, String>(4), "100.0");
    assert_eq!(row.get::<_, Vec<String>>(6), ["invoice_status"]);

    let log = cluster.log();
    assert!(log.contains(&format!("backfill: job {job} started for model finance/invoice: keys invoice_status; {INVOICES} instances")), "{log}");
    assert!(log.contains(&format!("backfill: job {job} succeeded for model finance/invoice: {INVOICES} instances processed")), "{log}");

    // Running it again has nothing to do.
    session
        .batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    assert!(notices
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .contains("is succeeded: nothing to run"));
}

#[test]
fn create_extension_warns_when_no_worker_will_serve_the_database() {
    let cluster = Cluster::start("run-warn", &["backfill.max_workers = 0"]);
    let (mut db, notices) = cluster.create_db_with_notices("other");
    let said = notices.lock().unwrap().join("\n");
    assert!(
        said.contains(
            "WARNING: backfill.max_workers is 0, so no background worker runs backfill jobs \
                       (HINT: Set backfill.max_workers in postgresql.conf and restart PostgreSQL, \
                       or run jobs with CALL backfill.run(job_id).)"
        ),
        "{said}"
    );
    assert!(!db
        .query_one("SELECT backfill.check_worker()", &[])
        .unwrap()
        .get::<_, bool>(0));
    assert_eq!(
        db.query_one("SELECT backfill.worker_pid()", &[])
            .unwrap()
            .get::<_, Option<i32>>(0),
        None
    );
}

#[test]
fn trigger_detects_added_changed_and_removed_keys() {
    let (cluster, mut db) = start("run-trigger", &[]);
    let jobs = |db: &mut Client| one_i64(db, "SELECT count(*) FROM backfill.job");
    // Two keys in one UPDATE: one job with both.
    db.batch_execute(
        r#"UPDATE backfill.process_model SET metadata_extraction_paths = metadata_extraction_paths
               || '[{"key": "number", "path": "invoice.number"}, {"key": "total", "path": "invoice.total"}]'
            WHERE id = 'finance/invoice'"#,
    )
    .unwrap();
    assert_eq!(jobs(&mut db), 1);
    assert_eq!(
        one_text(&mut db, "SELECT string_agg(p->>'key' || ':' || (p->>'overwrite'), ',') FROM backfill.job, jsonb_array_elements(paths) p"),
        "number:false,total:false"
    );
    // A changed path: an overwrite job for that key alone; the unchanged keys are not in it.
    db.batch_execute(
        r#"UPDATE backfill.process_model
              SET metadata_extraction_paths = '[{"key": "customer_id", "path": "customer.name"},
                                                {"key": "number", "path": "invoice.number"},
                                                {"key": "total", "path": "invoice.total"}]'
            WHERE id = 'finance/invoice'"#,
    )
    .unwrap();
    assert_eq!(jobs(&mut db), 2);
    assert_eq!(
        one_text(
            &mut db,
            "SELECT overwrite || ' ' || paths::text FROM backfill.job ORDER BY id DESC LIMIT 1"
        ),
        r#"true [{"key": "customer_id", "path": "customer.name", "overwrite": true}]"#
    );
    // Removing a key queues nothing and deletes nothing.
    let customer_rows_sql =
        "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'customer_id'";
    let customer_rows = one_i64(&mut db, customer_rows_sql);
    assert!(customer_rows > 0);
    db.batch_execute(
        r#"UPDATE backfill.process_model
              SET metadata_extraction_paths = '[{"key": "number", "path": "invoice.number"}, {"key": "total", "path": "invoice.total"}]'
            WHERE id = 'finance/invoice'"#,
    )
    .unwrap();
    assert_eq!(jobs(&mut db), 2);
    assert_eq!(one_i64(&mut db, customer_rows_sql), customer_rows);
    // Reordering, an unrelated column, or the same value: nothing.
    db.batch_execute(
        r#"UPDATE backfill.process_model
              SET metadata_extraction_paths = '[{"key": "total", "path": "invoice.total"}, {"key": "number", "path": "invoice.number"}]'
            WHERE id = 'finance/invoice';
           UPDATE backfill.process_model SET display_name = 'Invoices' WHERE id = 'finance/invoice';
           UPDATE backfill.process_model SET metadata_extraction_paths = metadata_extraction_paths WHERE id = 'finance/invoice';"#,
    )
    .unwrap();
    assert_eq!(jobs(&mut db), 2);
    // A rolled-back UPDATE enqueues nothing.
    db.batch_execute(
        r#"BEGIN;
           UPDATE backfill.process_model SET metadata_extraction_paths = metadata_extraction_paths
               || '[{"key": "step", "path": "step"}]' WHERE id = 'finance/invoice';
           ROLLBACK;"#,
    )
    .unwrap();
    assert_eq!(jobs(&mut db), 2);
    // Invalid paths: 22023, no job, the row unchanged.
    let err = db
        .batch_execute(r#"UPDATE backfill.process_model SET metadata_extraction_paths = '[{"key": "step"}]' WHERE id = 'finance/invoice'"#)
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22023");
    assert_eq!(jobs(&mut db), 2);
    // Several models in one statement: one job each.
    db.batch_execute(
        r#"UPDATE backfill.process_model SET metadata_extraction_paths = metadata_extraction_paths
               || '[{"key": "step", "path": "step"}]' WHERE id IN ('hr/onboarding', 'ops/incident')"#,
    )
    .unwrap();
    assert_eq!(one_text(&mut db, "SELECT string_agg(process_model_identifier, ',' ORDER BY process_model_identifier) FROM backfill.job WHERE id > 2"), "hr/onboarding,ops/incident");

    // backfill.enabled = off (a sighup setting): a NOTICE, no job; back on, jobs again.
    cluster.set_and_reload("backfill.enabled", "off");
    let (mut session, notices) = cluster.connect_with_notices("app");
    session
        .batch_execute(r#"UPDATE backfill.process_model SET metadata_extraction_paths = metadata_extraction_paths || '[{"key": "lines", "path": "invoice.lines"}]' WHERE id = 'finance/invoice'"#)
        .unwrap();
    assert_eq!(jobs(&mut db), 4);
    let said = notices.lock().unwrap().join("\n");
    assert!(
        said.contains(
            "backfill.enabled is off: no backfill job queued for finance/invoice (keys lines)"
        ),
        "{said}"
    );
    cluster.set_and_reload("backfill.enabled", "on");
    let mut session = cluster.connect("app");
    session
        .batch_execute(r#"UPDATE backfill.process_model SET metadata_extraction_paths = metadata_extraction_paths || '[{"key": "approved", "path": "invoice.approved"}]' WHERE id = 'finance/invoice'"#)
        .unwrap();
    assert_eq!(jobs(&mut db), 5);
}

#[test]
fn run_commits_after_every_batch() {
    let (cluster, mut db) = start("run-commits", &["backfill.batch_delay = '20ms'"]);
    let job = add_path(&mut db, INVOICE, "number", "invoice.number");
    let runner = {
        let mut session = cluster.connect("app");
        thread::spawn(move || session.batch_execute(&format!("CALL backfill.run({job})")))
    };
    // From another connection the cursor and counters move batch by batch.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (state, _, processed, ..) = job_row(&mut db, job);
        if seen.last() != Some(&processed) {
            seen.push(processed);
        }
        if state == "succeeded" {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    runner.join().unwrap().unwrap();
    let steps: Vec<i64> = seen
        .iter()
        .copied()
        .filter(|p| *p > 0 && *p < INVOICES)
        .collect();
    assert!(
        steps.len() >= 5,
        "expected to see many committed batches, saw {seen:?}"
    );
    assert!(
        steps.iter().all(|p| p % 100 == 0),
        "each commit covers whole batches of 100: {seen:?}"
    );
    assert_eq!(wrong_rows(&mut db, INVOICE, "number", "invoice.number"), 0);
}

/// Interrupts a running `CALL backfill.run` with `how` (a server function taking the pid),
/// then runs the job again from a fresh session and checks nothing was skipped or repeated.
fn interrupt_and_resume(name: &str, how: &str) {
    let (cluster, mut db) = start(name, &["backfill.batch_delay = '20ms'"]);
    let job = add_path(&mut db, INVOICE, "number", "invoice.number");
    let mut session = cluster.connect("app");
    let pid: i32 = session
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let runner = thread::spawn(move || {
        let result = session.batch_execute(&format!("CALL backfill.run({job})"));
        (session, result)
    });
    common::wait_for("a few batches", Duration::from_secs(60), || {
        (job_row(&mut db, job).2 >= 700).then_some(())
    });
    db.execute(&format!("SELECT {how}($1)"), &[&pid]).unwrap();
    let (interrupted, result) = runner.join().unwrap();
    let err = result.unwrap_err();
    let expected = if how == "pg_cancel_backend" {
        "57014"
    } else {
        "57P01"
    };
    // A terminated session may also just see its connection close before the message arrives.
    let closed = how == "pg_terminate_backend" && err.is_closed();
    assert!(
        closed || err.code().map(|c| c.code()) == Some(expected),
        "{err}"
    );

    let (state, total, processed, updated, _, cursor) = job_row(&mut db, job);
    assert_eq!(
        state, "running",
        "an interrupted job keeps its state and cursor"
    );
    assert!(processed >= 700 && processed < total, "{processed}");
    assert_eq!(updated, processed);
    let rows = one_i64(
        &mut db,
        "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'number'",
    );
    assert_eq!(rows, processed, "rows and cursor were committed together");
    assert_eq!(
        one_i64(&mut db, &format!("SELECT count(*) FROM backfill.process_instance WHERE process_model_identifier = 'finance/invoice' AND id <= {}", cursor.unwrap())),
        processed
    );

    // Another session can take the job over at once, while the interrupted session (when it
    // survived a cancel) is still connected: the interrupted run let go of it.
    let mut again = cluster.connect("app");
    again
        .batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    drop(interrupted);
    let (state, total, processed, updated, errors, _) = job_row(&mut db, job);
    assert_eq!(
        (state.as_str(), processed, updated, errors),
        ("succeeded", total, total, 0)
    );
    assert_eq!(total, INVOICES);
    assert_eq!(wrong_rows(&mut db, INVOICE, "number", "invoice.number"), 0);
    assert!(cluster.log().contains(&format!(
        "backfill: job {job} resumed for model finance/invoice"
    )));
}

#[test]
fn cancelled_run_resumes_at_its_cursor() {
    interrupt_and_resume("run-cancel", "pg_cancel_backend");
}

#[test]
fn terminated_run_resumes_at_its_cursor() {
    interrupt_and_resume("run-terminate", "pg_terminate_backend");
}

#[test]
fn one_runner_per_job_cancel_and_wait() {
    let (cluster, mut db) = start("run-exclusive", &["backfill.batch_delay = '20ms'"]);
    let job = add_path(&mut db, INVOICE, "number", "invoice.number");
    let mut first = cluster.connect("app");
    let runner = thread::spawn(move || first.batch_execute(&format!("CALL backfill.run({job})")));
    common::wait_for("the first runner to start", Duration::from_secs(30), || {
        (job_row(&mut db, job).2 > 0).then_some(())
    });
    let err = cluster
        .connect("app")
        .batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap_err();
    let db_err = err.as_db_error().unwrap();
    assert_eq!(db_err.code().code(), "55P03");
    assert!(
        db_err
            .message()
            .contains(&format!("backfill job {job} is being run by process")),
        "{}",
        db_err.message()
    );

    // wait() with a short timeout returns the current state; cancel stops the runner at a
    // batch boundary and wait() then returns 'cancelled'.
    assert_eq!(
        one_text(&mut db, &format!("SELECT backfill.wait({job}, '10 ms')")),
        "running"
    );
    assert!(db
        .query_one(&format!("SELECT backfill.cancel({job})"), &[])
        .unwrap()
        .get::<_, bool>(0));
    assert_eq!(
        one_text(&mut db, &format!("SELECT backfill.wait({job})")),
        "cancelled"
    );
    runner.join().unwrap().unwrap();
    let (_, total, processed, ..) = job_row(&mut db, job);
    assert!(processed < total);
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'number'"
        ),
        processed
    );
    assert!(!db
        .query_one(&format!("SELECT backfill.cancel({job})"), &[])
        .unwrap()
        .get::<_, bool>(0));
    let err = db
        .batch_execute("SELECT backfill.cancel(999999)")
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22023");
    let err = db
        .batch_execute("SELECT backfill.wait(999999)")
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22023");

    // A deliberate CALL run continues a cancelled job from its cursor.
    db.batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    assert_eq!(
        one_text(&mut db, &format!("SELECT backfill.wait({job}, '0 s')")),
        "succeeded"
    );
    assert_eq!(job_row(&mut db, job).2, INVOICES);
    assert_eq!(wrong_rows(&mut db, INVOICE, "number", "invoice.number"), 0);

    // CALL inside a transaction block cannot commit per batch: refused before touching the job.
    let queued = add_path(&mut db, INVOICE, "total", "invoice.total");
    let err = db
        .batch_execute(&format!("BEGIN; CALL backfill.run({queued}); COMMIT;"))
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "2D000", "{err}");
    db.batch_execute("ROLLBACK").unwrap();
    assert_eq!(job_row(&mut db, queued).0, "queued");
}

#[test]
fn enqueue_existing_keys_with_and_without_overwrite() {
    let (cluster, mut db) = start("run-enqueue", &[]);
    // The sample's engine rows for customer_id are current. Make the data disagree with some.
    db.batch_execute(
        "UPDATE backfill.process_instance_metadata SET value = 'stale' WHERE key = 'customer_id' AND process_instance_id % 5 = 0;
         DELETE FROM backfill.process_instance_metadata WHERE key = 'customer_id' AND process_instance_id % 5 = 1;",
    )
    .unwrap();
    let stale = one_i64(
        &mut db,
        "SELECT count(*) FROM backfill.process_instance_metadata WHERE value = 'stale'",
    );
    let missing = INVOICES
        - one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'customer_id'",
        );
    let (mut session, notices) = cluster.connect_with_notices("app");

    // Without overwrite: fills what is missing, leaves the stale values.
    let fill: i64 = session
        .query_one("SELECT backfill.enqueue('finance/invoice')", &[])
        .unwrap()
        .get(0);
    assert!(notices.lock().unwrap().iter().any(|n| n.contains(&format!(
        "backfill job {fill} queued for finance/invoice: customer_id"
    ))));
    assert_eq!(
        one_text(
            &mut db,
            &format!("SELECT origin || ' ' || overwrite FROM backfill.job WHERE id = {fill}")
        ),
        "manual false"
    );
    session
        .batch_execute(&format!("CALL backfill.run({fill})"))
        .unwrap();
    let (_, _, processed, updated, ..) = job_row(&mut db, fill);
    assert_eq!((processed, updated), (INVOICES, missing));
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata WHERE value = 'stale'"
        ),
        stale
    );

    // With overwrite: replaces the values that differ, and only those.
    let over: i64 = session
        .query_one(
            "SELECT backfill.enqueue('finance/invoice', ARRAY['customer_id'], overwrite => true)",
            &[],
        )
        .unwrap()
        .get(0);
    session
        .batch_execute(&format!("CALL backfill.run({over})"))
        .unwrap();
    let (_, _, processed, updated, ..) = job_row(&mut db, over);
    assert_eq!((processed, updated), (INVOICES, stale));
    assert_eq!(
        wrong_rows(&mut db, INVOICE, "customer_id", "customer.id"),
        0
    );

    // Unknown model or key: 22023, nothing queued.
    let jobs = one_i64(&mut db, "SELECT count(*) FROM backfill.job");
    for (sql, fragment) in [
        (
            "SELECT backfill.enqueue('no/such/model')",
            "process model \"no/such/model\" does not exist",
        ),
        (
            "SELECT backfill.enqueue('finance/invoice', ARRAY['nope'])",
            "has no metadata extraction path with key \"nope\" (its keys: customer_id)",
        ),
    ] {
        let err = db.batch_execute(sql).unwrap_err();
        let db_err = err.as_db_error().unwrap();
        assert_eq!(db_err.code().code(), "22023");
        assert!(db_err.message().contains(fragment), "{}", db_err.message());
    }
    assert_eq!(one_i64(&mut db, "SELECT count(*) FROM backfill.job"), jobs);
}

#[test]
fn instance_errors_are_counted_and_batch_failures_fail_the_job() {
    let (cluster, mut db) = start("run-errors", &[]);
    // A user trigger that refuses the rows of two instances, as a data problem would.
    db.batch_execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.process_instance_id IN (1, 2994) AND NEW.key = 'number' THEN
             RAISE EXCEPTION 'instance % refused', NEW.process_instance_id USING ERRCODE = 'check_violation';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON backfill.process_instance_metadata
             FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .unwrap();
    let job = add_path(&mut db, INVOICE, "number", "invoice.number");
    db.batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    let (state, total, processed, updated, errors, _) = job_row(&mut db, job);
    assert_eq!(
        (state.as_str(), processed, updated, errors),
        ("succeeded", total, total - 2, 2)
    );
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'number'"
        ),
        total - 2
    );
    assert_eq!(one_i64(&mut db, "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'number' AND process_instance_id IN (1, 2994)"), 0);
    let log = cluster.log();
    assert!(
        log.contains(&format!(
            "backfill: job {job}: instance 1 failed and is skipped: instance 1 refused (23514)"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "backfill: job {job}: instance 2994 failed and is skipped"
        )),
        "{log}"
    );

    // A failure of the whole batch (a lock it cannot get) is retried, then fails the job.
    let second = add_path(&mut db, INVOICE, "total", "invoice.total");
    let mut blocker = cluster.connect("app");
    blocker
        .batch_execute(
            "BEGIN; LOCK TABLE backfill.process_instance_metadata IN ACCESS EXCLUSIVE MODE",
        )
        .unwrap();
    let mut runner = cluster.connect("app");
    let started = Instant::now();
    runner.batch_execute("SET lock_timeout = '50ms'").unwrap();
    runner
        .batch_execute(&format!("CALL backfill.run({second})"))
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(200 + 400 + 800 + 1600),
        "backs off between attempts"
    );
    let (state, ..) = job_row(&mut db, second);
    assert_eq!(state, "failed");
    let last_error = one_text(
        &mut db,
        &format!("SELECT last_error FROM backfill.job WHERE id = {second}"),
    );
    assert!(
        last_error.contains("lock timeout") && last_error.contains("55P03"),
        "{last_error}"
    );
    assert!(cluster
        .log()
        .contains("(attempt 4 of 5), retrying in 1.6 s"));

    // Running a failed job again continues from its cursor once the cause is gone.
    blocker.batch_execute("ROLLBACK").unwrap();
    runner
        .batch_execute(&format!("CALL backfill.run({second})"))
        .unwrap();
    let (state, total, processed, ..) = job_row(&mut db, second);
    assert_eq!((state.as_str(), processed), ("succeeded", total));
    assert_eq!(wrong_rows(&mut db, INVOICE, "total", "invoice.total"), 0);
}

#[test]
fn without_the_preload_create_extension_warns_and_call_run_still_works() {
    let cluster = Cluster::start("run-no-preload", &["shared_preload_libraries = ''"]);
    let (mut db, notices) = cluster.create_db_with_notices("plain");
    let said = notices.lock().unwrap().join("\n");
    assert!(
        said.contains(
            "WARNING: backfill is not in shared_preload_libraries, so no background worker runs backfill jobs \
             (HINT: Add shared_preload_libraries = 'backfill' to postgresql.conf and restart PostgreSQL"
        ),
        "{said}"
    );
    db.batch_execute(SAMPLE_SQL).unwrap();
    let job = add_path(&mut db, INVOICE, "number", "invoice.number");
    assert!(notices.lock().unwrap().iter().any(|n| n.contains(&format!(
        "backfill job {job} will wait: backfill is not in shared_preload_libraries"
    ))));
    db.batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    assert_eq!(job_row(&mut db, job).0, "succeeded");
    assert_eq!(wrong_rows(&mut db, INVOICE, "number", "invoice.number"), 0);
}
