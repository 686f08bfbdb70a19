//! A server whose processes may take little memory (a container's limit: `prlimit --as` on
//! the postmaster) and a task document whose path reaches an array of 6,000,000 strings. 0.6.0
//! built all of it to render 255 characters, its allocation failed, Rust aborted and the
//! postmaster restarted every connection, again and again. Now a dotted path's value takes
//! what its 255 characters need, and what must be built whole (a JSONPath's document) fails
//! with 53200 in the one backend: the job ends, an instance's error counted, nobody else's
//! session is lost.

mod common;

use common::{add_path, bulk_sql, one_i64, one_text, sqlstate, wait_ended, wrong_rows, Cluster};

/// Items in the array the path reaches: 29 MB of text, under 1 MB stored.
const ITEMS: i64 = 6_000_000;
/// What the processes may take above what the postmaster has mapped (shared memory included).
const ROOM: u64 = 350 << 20;

/// Python's `str()` of ['1', '2', ..., '9', '0', '1', ...], cut to 255 characters.
fn expected() -> String {
    let items: Vec<String> = (1..=100).map(|i| format!("'{}'", i % 10)).collect();
    format!("[{}", items.join(", ")).chars().take(255).collect()
}

#[test]
fn a_huge_value_under_a_memory_limit_is_an_error_or_a_value_never_a_crash() {
    let cluster = Cluster::start("memory", &["backfill.workers_per_job = 1"]);
    let mut db = cluster.create_db("app");
    db.batch_execute(&bulk_sql(300)).unwrap();
    // The huge document: the latest completed task of instance 1, made before the limit.
    db.batch_execute(&format!(
        "INSERT INTO backfill.json_data
         SELECT 'huge', jsonb_build_object('invoice', jsonb_build_object('number',
                    (SELECT jsonb_agg((i % 10)::text) FROM generate_series(1, {ITEMS}) i)));
         INSERT INTO backfill.task (guid, process_instance_id, state, json_data_hash, end_in_seconds)
         VALUES (gen_random_uuid(), 1, 'COMPLETED', 'huge', 1e9);"
    ))
    .unwrap();
    let mut bystander = cluster.connect("app");
    cluster.limit_address_space(ROOM);

    // A client's calls: a value, or an ERROR in its own backend.
    let mut client = cluster.connect("app");
    assert_eq!(
        one_text(
            &mut client,
            "SELECT (backfill.extract_values(backfill.latest_task_data(1), ARRAY['invoice.number']))[1]"
        ),
        expected()
    );
    // The same document as json text, as SpiffWorkflow's json_data holds it: the backend's
    // peak resident memory grows by PostgreSQL's own copies of the text (the cast's), not by
    // a tree of six million values (0.6.0: 1.1 GB).
    let text_bytes = one_i64(
        &mut client,
        "SELECT octet_length(data::text)::bigint FROM backfill.json_data WHERE hash = 'huge'",
    );
    let pid = one_i64(&mut client, "SELECT pg_backend_pid()::bigint");
    let before = peak_resident(pid);
    assert_eq!(
        one_text(
            &mut client,
            "SELECT (backfill.extract_values(data::text::json, ARRAY['invoice.number']))[1]
               FROM backfill.json_data WHERE hash = 'huge'"
        ),
        expected()
    );
    let grown = peak_resident(pid) - before;
    println!(
        "json text of {} MB: the backend's peak resident memory grew by {} MB",
        text_bytes >> 20,
        grown >> 20
    );
    assert!(
        grown < 4 * text_bytes + (32 << 20),
        "grew by {grown} bytes for {text_bytes} bytes of text"
    );
    for query in [
        "SELECT backfill.extract_values(backfill.latest_task_data(1), ARRAY['$.invoice.number'])",
        "SELECT backfill.extract_values(data::text::json, ARRAY['$.invoice.number'])
           FROM backfill.json_data WHERE hash = 'huge'",
    ] {
        let e = client.batch_execute(query).unwrap_err();
        assert_eq!(sqlstate(&e), "53200", "{query}: {e}");
    }
    let previewed = one_text(
        &mut client,
        "SELECT value FROM backfill.preview('bulk/model',
                    '[{\"key\": \"n\", \"path\": \"invoice.number\"}]', 1000)
          WHERE process_instance_id = 1",
    );
    assert_eq!(previewed, expected());

    // Jobs: the dotted path fills every instance; the JSONPath counts the huge one as an
    // instance's error and fills the others.
    let dotted = add_path(&mut db, "bulk/model", "number", "invoice.number");
    assert_eq!(wait_ended(&cluster, "app", dotted), "succeeded");
    assert_eq!(
        wrong_rows(&mut db, "bulk/model", "number", "invoice.number"),
        0
    );
    assert_eq!(
        one_text(
            &mut db,
            "SELECT value FROM backfill.process_instance_metadata
              WHERE process_instance_id = 1 AND key = 'number'"
        ),
        expected()
    );
    let query = add_path(&mut db, "bulk/model", "status", "$.invoice.status");
    assert_eq!(wait_ended(&cluster, "app", query), "succeeded");
    assert_eq!(
        one_i64(
            &mut db,
            &format!("SELECT errors FROM backfill.job WHERE id = {query}")
        ),
        1
    );
    assert!(one_text(
        &mut db,
        &format!("SELECT last_error FROM backfill.job WHERE id = {query}")
    )
    .contains("(53200)"));
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata
              WHERE key = 'status' AND value IS NOT NULL"
        ),
        one_i64(
            &mut db,
            "SELECT count(*) - 1 FROM backfill.process_instance WHERE process_model_identifier = 'bulk/model'"
        )
    );

    // Nobody's session was lost: no process died.
    assert_eq!(one_i64(&mut bystander, "SELECT 1::bigint"), 1);
    let log = cluster.log();
    assert!(!log.contains("terminated by signal"), "{log}");
}

/// The peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_resident(pid: i64) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<i64>().ok())
        .expect("VmHWM")
        * 1024
}
