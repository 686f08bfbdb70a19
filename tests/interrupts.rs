//! `CALL backfill.run` interrupted at any moment, NULL job ids, and documents of any depth,
//! with real commits. The worker of these servers serves another database.

mod common;

use common::{
    add_path, bulk_sql, one_i64, one_text, start_app, wait_for, wrong_rows, wrong_rows_where,
};
use postgres::Client;
use std::thread;
use std::time::{Duration, Instant};

const BULK: &str = "bulk/model";

fn state(db: &mut Client, job: i64) -> String {
    one_text(
        db,
        &format!("SELECT state FROM backfill.job WHERE id = {job}"),
    )
}

fn pid_of(session: &mut Client) -> i32 {
    session
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0)
}

/// A small deterministic generator for the moments of the interrupts.
struct Moments(u64);

impl Moments {
    fn next_micros(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// Another session can take `job` within a second and runs one batch of it. (Not at once: a
/// backend sends its error to the client before it aborts the transaction, and the abort is
/// what lets the job go.)
fn another_session_takes_the_job(other: &mut Client, job: i64) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let begun: bool = loop {
        match other.query_one("SELECT backfill.run_begin($1)", &[&job]) {
            Ok(row) => break row.get(0),
            Err(e) if e.code().map(|c| c.code()) == Some("55P03") && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("job {job} was not free: {e:?}"),
        }
    };
    if begun {
        other
            .query_one("SELECT backfill.run_batch($1)", &[&job])
            .unwrap();
    }
    other
        .execute("SELECT backfill.run_end($1)", &[&job])
        .unwrap();
}

#[test]
fn interrupted_at_any_moment_a_run_lets_its_job_go_at_once() {
    let (cluster, mut db) = start_app(
        "run-cancels",
        false,
        &["backfill.batch_size = 5"],
        &bulk_sql(10_000),
    );
    let mut runner = cluster.connect("app");
    let runner_pid = pid_of(&mut runner);
    let mut other = cluster.connect("app");
    let mut moments = Moments(0x5eed);
    let mut keys = vec!["k0".to_owned()];
    let mut job = add_path(&mut db, BULK, "k0", "invoice.number");
    let mut cancelled = 0;
    for round in 0..200 {
        if state(&mut db, job) == "succeeded" {
            let key = format!("k{round}");
            job = add_path(&mut db, BULK, &key, "invoice.number");
            keys.push(key);
        }
        let call = format!("CALL backfill.run({job})");
        let handle = thread::spawn(move || {
            let result = runner.batch_execute(&call);
            (runner, result)
        });
        // The moment: anywhere from the procedure's start to a few dozen batches in.
        thread::sleep(Duration::from_micros(1 + moments.next_micros(30_000)));
        db.execute("SELECT pg_cancel_backend($1)", &[&runner_pid])
            .unwrap();
        let (back, result) = handle.join().unwrap();
        runner = back;
        if let Err(err) = result {
            assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
            cancelled += 1;
        }
        another_session_takes_the_job(&mut other, job);
    }
    assert!(
        cancelled >= 150,
        "only {cancelled} of 200 runs were interrupted"
    );

    // Waiting for the job row, held by someone else's open transaction.
    let mut locker = cluster.connect("app");
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM backfill.job WHERE id = {job} FOR UPDATE"
        ))
        .unwrap();
    let call = format!("CALL backfill.run({job})");
    let handle = thread::spawn(move || {
        let result = runner.batch_execute(&call);
        (runner, result)
    });
    wait_for(
        "the run to wait for the job row",
        Duration::from_secs(30),
        || {
            let waiting: bool = db
                .query_one(
                    "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1",
                    &[&runner_pid],
                )
                .unwrap()
                .get(0);
            waiting.then_some(())
        },
    );
    db.execute("SELECT pg_cancel_backend($1)", &[&runner_pid])
        .unwrap();
    let (_runner, result) = handle.join().unwrap();
    assert_eq!(result.unwrap_err().code().map(|c| c.code()), Some("57014"));
    locker.batch_execute("ROLLBACK").unwrap();
    another_session_takes_the_job(&mut other, job);

    // Every job runs to its end, and every key is exact: nothing skipped, nothing twice.
    other
        .batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    for key in &keys {
        assert_eq!(wrong_rows(&mut db, BULK, key, "invoice.number"), 0, "{key}");
    }
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.job WHERE state <> 'succeeded'"
        ),
        0
    );
}

#[test]
fn a_null_job_id_is_refused_not_looped_on() {
    let (_cluster, mut db) = start_app("run-null", false, &[], &bulk_sql(10));
    db.batch_execute("SET statement_timeout = '20s'").unwrap();
    let err = db.batch_execute("CALL backfill.run(NULL)").unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22004"), "{err}");
}

#[test]
fn documents_of_any_depth_among_ordinary_ones() {
    // 60 instances: every tenth one's task data 200 levels deep, instance 25's 1,500 (Python
    // reads and prints it), instance 45's 10,001 (deeper than Python 3.13's json.loads goes).
    let nested =
        |depth: &str| format!("repeat('{{\"a\": ', {depth}) || '\"x\"' || repeat('}}', {depth})");
    let data = format!(
        "SET max_stack_depth = '7MB';
         INSERT INTO backfill.process_model (id, metadata_extraction_paths) VALUES ('deep/model', '[]');
         INSERT INTO backfill.process_instance (id, process_model_identifier)
         SELECT i, 'deep/model' FROM generate_series(1, 60) i;
         INSERT INTO backfill.json_data (hash, data)
         SELECT 'h' || i, ('{{\"n\": ' || i || ', \"deep\": ' ||
                CASE WHEN i = 25 THEN {}
                     WHEN i = 45 THEN {}
                     WHEN i % 10 = 0 THEN {}
                     ELSE '{{\"a\": {{\"a\": \"shallow\"}}}}' END || '}}')::jsonb
           FROM generate_series(1, 60) i;
         INSERT INTO backfill.task (guid, process_instance_id, state, json_data_hash, end_in_seconds)
         SELECT md5('t' || i)::uuid, i, 'COMPLETED', 'h' || i, i FROM generate_series(1, 60) i;",
        nested("1500"),
        nested("10000"),
        nested("200")
    );
    let (_cluster, mut db) = start_app("run-deep", false, &[], &data);
    db.execute(
        "UPDATE backfill.process_model
            SET metadata_extraction_paths =
                '[{\"key\": \"inner\", \"path\": \"deep.a\"}, {\"key\": \"n\", \"path\": \"$.n\"}]'
          WHERE id = 'deep/model'",
        &[],
    )
    .unwrap();
    let job = one_i64(
        &mut db,
        "SELECT max(id) FROM backfill.job WHERE parent_id IS NULL",
    );
    db.batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    let row = db
        .query_one(
            "SELECT state, instances_processed, errors, last_error FROM backfill.job WHERE id = $1",
            &[&job],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "succeeded");
    assert_eq!(row.get::<_, i64>(1), 60);
    // Only the document deeper than Python reads is an error, counted and skipped.
    assert_eq!(row.get::<_, i64>(2), 1);
    let last_error: String = row.get(3);
    assert!(
        last_error.starts_with("instance 45:")
            && last_error.contains("nested more than 9998 levels")
            && last_error.contains("(54000)"),
        "{last_error}"
    );
    for (key, path) in [("inner", "deep.a"), ("n", "$.n")] {
        assert_eq!(
            wrong_rows_where(&mut db, "deep/model", key, path, "i.id <> 45"),
            0,
            "{key}"
        );
    }
    // Python's str() of the 199 levels below "deep.a", cut to 255 characters.
    let python: String = "{'a': ".repeat(199).chars().take(255).collect();
    assert_eq!(
        one_text(
            &mut db,
            "SELECT value FROM backfill.process_instance_metadata WHERE process_instance_id = 30 AND key = 'inner'"
        ),
        python
    );
    // The 1,500-level document through JSONPath and the dotted path, as Python gives them.
    assert_eq!(
        one_text(
            &mut db,
            "SELECT string_agg(key || '=' || left(value, 11), ' ' ORDER BY key)
               FROM backfill.process_instance_metadata WHERE process_instance_id = 25"
        ),
        "inner={'a': {'a': n=25"
    );
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata WHERE process_instance_id = 45"
        ),
        0
    );
}
