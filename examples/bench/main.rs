//! Backfill throughput against the set-based SQL limit, the cost of the model update, and the
//! worker's memory. Run through `scripts/bench`, which builds the extension and starts the
//! server this connects to.
//!
//! Variants, on the same data, same server, alternating, each repeated, data reset between runs:
//! - L, the limit: one hand-written INSERT ... SELECT with a LATERAL latest-task lookup and
//!   jsonb operators, ON CONFLICT DO NOTHING, one transaction;
//! - D, what a DBA would write: a PL/pgSQL procedure doing the same INSERT per keyset batch of
//!   100 instances with a COMMIT after each, run as is and with synchronous_commit = off (Da);
//! - P, the product: the UPDATE of metadata_extraction_paths adding the keys, until the job
//!   has succeeded (worker, default batch size, a commit per batch), in one worker
//!   (backfill.workers_per_job = 1) and split across two (P2, workers_per_job = 2, the
//!   default).
//!
//! Every run's rows are compared with the first run of L, row for row, before anything is
//! printed. Then the same comparison on SpiffWorkflow's own tables, json task data of about
//! 30 KB (spiff.rs).

mod compare;
mod live;
mod spiff;

use compare::{first_difference, Row};
use postgres::{Client, NoTls};
use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const MODEL: &str = "bench/model";
/// The keys the benchmark backfills: two the data has, one it lacks.
const NEW_KEYS: [(&str, &str); 3] = [
    ("invoice_number", "invoice.number"),
    ("customer_id", "invoice.customer.id"),
    ("po_number", "invoice.po_number"),
];
/// The paths the model has before the benchmark adds NEW_KEYS; their rows exist.
const EXISTING_PATHS: &str = r#"[{"key": "currency", "path": "invoice.currency"}, {"key": "approved_by", "path": "approval.by"}]"#;

struct Options {
    port: u16,
    instances: i64,
    runs: usize,
    scale_instances: i64,
    json: bool,
    spiff_instances: i64,
    spiff_runs: usize,
    spiff_only: bool,
    live_seconds: u64,
    live_rounds: usize,
    live_runs: usize,
    live_only: bool,
    /// The server with default settings the live load runs on (scripts/bench starts it).
    live_port: Option<u16>,
    /// Instances of the model for the live load: on the extension's tables (a third as many
    /// of another model besides) and on SpiffWorkflow's (a quarter as many besides).
    live_instances: i64,
    live_spiff_instances: i64,
    /// The coordinator of a Citus cluster (scripts/citus) to run P on beside the plain server.
    citus_port: Option<u16>,
}

fn parse_options() -> Options {
    let mut options = Options {
        port: 55433,
        instances: 100_000,
        runs: 5,
        scale_instances: 1_000_000,
        json: false,
        // 100,000 of them are instances of the model the benchmark fills.
        spiff_instances: 125_000,
        spiff_runs: 3,
        spiff_only: false,
        live_seconds: 10,
        live_rounds: 3,
        live_runs: 1,
        live_only: false,
        live_port: None,
        live_instances: 75_000,
        live_spiff_instances: 20_000,
        citus_port: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or_else(|| usage(&format!("{name} needs a number")))
        };
        match arg.as_str() {
            "--port" => options.port = value("--port") as u16,
            "--instances" => options.instances = value("--instances"),
            "--runs" => options.runs = value("--runs") as usize,
            "--scale-instances" => options.scale_instances = value("--scale-instances"),
            "--json" => options.json = true,
            "--spiff-instances" => options.spiff_instances = value("--spiff-instances"),
            "--spiff-runs" => options.spiff_runs = value("--spiff-runs") as usize,
            "--spiff-only" => options.spiff_only = true,
            "--live-seconds" => options.live_seconds = value("--live-seconds") as u64,
            "--live-rounds" => options.live_rounds = value("--live-rounds").max(1) as usize,
            "--live-runs" => options.live_runs = value("--live-runs").max(1) as usize,
            "--live-only" => options.live_only = true,
            "--live-port" => options.live_port = Some(value("--live-port") as u16),
            "--live-instances" => options.live_instances = value("--live-instances"),
            "--live-spiff-instances" => {
                options.live_spiff_instances = value("--live-spiff-instances")
            }
            "--citus-port" => options.citus_port = Some(value("--citus-port") as u16),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if options.instances < 1000 || options.runs < 3 {
        usage("--instances must be at least 1000 and --runs at least 3");
    }
    options
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: scripts/bench [--instances N (100000)] [--runs R (5, at least 3)] \
         [--scale-instances M (1000000; 0 skips the scale check)] [--json] \
         [--spiff-instances N (125000, 100000 of the model; 0 skips SpiffWorkflow's tables)] [--spiff-runs R (3; 0: only the cost of reading json text)] [--spiff-only] \
         [--live-seconds S (10, each segment; 0 skips the live application load)] [--live-rounds R (3)] [--live-runs N (1)] [--live-only] \
         [--live-port PORT (the server with default settings for the live load)] [--live-instances N (75000)] [--live-spiff-instances N (20000; 0 skips)] \
         [--citus-port PORT (a Citus coordinator: P on SpiffWorkflow's tables there too)]"
    );
    std::process::exit(2)
}

fn connect(port: u16) -> Client {
    Client::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        NoTls,
    )
    .unwrap_or_else(|e| panic!("cannot connect to the benchmark server on port {port}: {e}"))
}

fn progress(text: &str) {
    eprintln!("bench: {text}");
}

/// Appends instances `from..=to` (in id order; one in four belongs to another model),
/// each with five tasks: four COMPLETED with distinct end times in shuffled order and one
/// READY. Task data is about 1 KB of nested JSON, content-addressed in json_data: the first
/// two tasks share one document, the last three another.
fn load_instances(db: &mut Client, from: i64, to: i64) {
    db.batch_execute(&format!(
        r#"
INSERT INTO backfill.process_instance (id, process_model_identifier, status, created_at_in_seconds, updated_at_in_seconds)
SELECT i, CASE WHEN i % 4 = 3 THEN 'bench/other' ELSE 'bench/model' END, 'complete', 1700000000 + i, 1700000000 + i
  FROM generate_series({from}, {to}) i;
CREATE TEMP TABLE doc AS
SELECT i, v, jsonb_build_object(
  'invoice', jsonb_build_object(
     'number', 'INV-' || i || '-' || v,
     'currency', (ARRAY['EUR', 'USD', 'GBP'])[1 + i % 3],
     'total', round((i % 10000) * 1.37 + v, 2),
     'customer', jsonb_build_object('id', 100000 + i % 50000, 'name', 'Customer ' || (i % 50000),
                  'address', jsonb_build_object('street', (i % 999) || ' Main Street', 'city', 'Springfield',
                                                'zip', lpad((i % 99999)::text, 5, '0'))),
     'lines', jsonb_build_array(
        jsonb_build_object('sku', 'SKU-' || (i % 977), 'qty', 1 + i % 7, 'price', round((i % 500) * 0.99, 2), 'description', 'First item of invoice ' || i),
        jsonb_build_object('sku', 'SKU-' || ((i + 1) % 977), 'qty', 1 + (i + 1) % 7, 'price', round(((i * 2) % 500) * 0.99, 2), 'description', 'Second item of invoice ' || i),
        jsonb_build_object('sku', 'SKU-' || ((i + 2) % 977), 'qty', 1 + (i + 2) % 7, 'price', round(((i * 3) % 500) * 0.99, 2), 'description', 'Third item of invoice ' || i),
        jsonb_build_object('sku', 'SKU-' || ((i + 3) % 977), 'qty', 1 + (i + 3) % 7, 'price', round(((i * 4) % 500) * 0.99, 2), 'description', 'Fourth item of invoice ' || i)),
     'notes', repeat('Lorem ipsum dolor sit amet. ', 6)),
  'approval', jsonb_build_object('approved', v = 2, 'by', 'approver' || (i % 37), 'at', '2026-01-' || lpad((1 + i % 28)::text, 2, '0')),
  'step', v) AS data
FROM generate_series({from}, {to}) i, generate_series(1, 2) v;
INSERT INTO backfill.json_data SELECT md5(data::text), data FROM doc;
INSERT INTO backfill.task (guid, process_instance_id, state, json_data_hash, start_in_seconds, end_in_seconds)
SELECT md5(d.i || '/' || k)::uuid, d.i, CASE WHEN k = 5 THEN 'READY' ELSE 'COMPLETED' END,
       md5(d.data::text), 1700000000 + d.i * 10,
       CASE WHEN k = 5 THEN NULL ELSE 1700000000 + d.i * 10 + ((k * 7 + d.i * 13) % 4) + 1 END
  FROM doc d JOIN generate_series(1, 5) k ON d.v = CASE WHEN k <= 2 THEN 1 ELSE 2 END
 ORDER BY d.i, k;
DROP TABLE doc;
-- The rows the live engine wrote for the model's existing paths.
INSERT INTO backfill.process_instance_metadata (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
SELECT i.id, k.key, d.data #>> k.path, 1700000000, 1700000000
  FROM backfill.process_instance i
  LEFT JOIN LATERAL (SELECT t.json_data_hash FROM backfill.task t
                      WHERE t.process_instance_id = i.id AND t.state = 'COMPLETED'
                      ORDER BY t.end_in_seconds DESC NULLS LAST, t.guid DESC LIMIT 1) lt ON true
  LEFT JOIN backfill.json_data d ON d.hash = lt.json_data_hash
 CROSS JOIN (VALUES ('currency', '{{invoice,currency}}'::text[]), ('approved_by', '{{approval,by}}'::text[])) k(key, path)
 WHERE i.process_model_identifier = 'bench/model' AND i.id BETWEEN {from} AND {to};
"#
    ))
    .expect("loading the workload");
}

fn setup(db: &mut Client, instances: i64) -> i64 {
    // instances of the model are three in four ids
    let last_id = instances * 4 / 3;
    db.batch_execute(&format!(
        "DROP EXTENSION IF EXISTS backfill CASCADE;
         DROP TABLE IF EXISTS bench_base;
         CREATE EXTENSION backfill;
         INSERT INTO backfill.process_model VALUES ('{MODEL}', 'Benchmark', '{EXISTING_PATHS}'), ('bench/other', 'Other', '[]');"
    ))
    .unwrap();
    load_instances(db, 1, last_id);
    db.batch_execute("VACUUM ANALYZE").unwrap();
    prepare_variants(db);
    last_id
}

/// The PL/pgSQL procedure of variant D and the base rows a reset restores.
fn prepare_variants(db: &mut Client) {
    let insert = set_based_insert("batch b", "b.id", "");
    db.batch_execute(&format!(
        r#"
CREATE OR REPLACE PROCEDURE public.bench_dba(model text) LANGUAGE plpgsql AS $$
DECLARE
  cursor_id bigint := -9223372036854775808;
  max_id bigint;
  n bigint;
  last_id bigint;
BEGIN
  SELECT max(id) INTO max_id FROM backfill.process_instance WHERE process_model_identifier = model;
  LOOP
    WITH batch AS MATERIALIZED (
      SELECT i.id FROM backfill.process_instance i
       WHERE i.process_model_identifier = model AND i.id > cursor_id AND i.id <= max_id
       ORDER BY i.id LIMIT 100
    ), ins AS (
      {insert}
    )
    SELECT count(*), max(id) INTO n, last_id FROM batch;
    COMMIT;
    EXIT WHEN n < 100;
    cursor_id := last_id;
  END LOOP;
END $$;
DROP TABLE IF EXISTS bench_base;
CREATE TABLE bench_base AS SELECT * FROM backfill.process_instance_metadata;
"#
    ))
    .unwrap();
}

/// The INSERT of L and D: instances from `source` (with id column `id`, rows chosen by
/// `filter`), their latest completed task's data, NEW_KEYS read with jsonb operators.
fn set_based_insert(source: &str, id: &str, filter: &str) -> String {
    let keys = NEW_KEYS
        .iter()
        .map(|(key, path)| format!("('{key}', '{{{}}}'::text[])", path.replace('.', ",")))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO backfill.process_instance_metadata
                (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
         SELECT {id}, k.key, d.data #>> k.path, extract(epoch FROM now())::bigint, extract(epoch FROM now())::bigint
           FROM {source}
           LEFT JOIN LATERAL (SELECT t.json_data_hash FROM backfill.task t
                               WHERE t.process_instance_id = {id} AND t.state = 'COMPLETED'
                               ORDER BY t.end_in_seconds DESC NULLS LAST, t.guid DESC LIMIT 1) lt ON true
           LEFT JOIN backfill.json_data d ON d.hash = lt.json_data_hash
          CROSS JOIN (VALUES {keys}) AS k(key, path)
          {filter}
         ON CONFLICT (process_instance_id, key) DO NOTHING"
    )
}

/// Back to the state before a run: the model without NEW_KEYS, the metadata table holding
/// only the base rows, vacuumed, analyzed and checkpointed.
fn reset(db: &mut Client) {
    db.batch_execute(&format!(
        "UPDATE backfill.process_model SET metadata_extraction_paths = '{EXISTING_PATHS}' WHERE id = '{MODEL}';
         TRUNCATE backfill.process_instance_metadata;
         INSERT INTO backfill.process_instance_metadata SELECT * FROM bench_base ORDER BY process_instance_id, key;"
    ))
    .unwrap();
    // Each on its own: VACUUM cannot run in the implicit transaction of a multi-statement query.
    db.batch_execute("VACUUM ANALYZE backfill.process_instance_metadata, backfill.job")
        .unwrap();
    db.batch_execute("CHECKPOINT").unwrap();
}

fn result_rows(db: &mut Client) -> Vec<Row> {
    let keys: Vec<&str> = NEW_KEYS.iter().map(|(k, _)| *k).collect();
    db.query(
        "SELECT process_instance_id, key::text, value::text FROM backfill.process_instance_metadata
          WHERE key = ANY($1) ORDER BY process_instance_id, key",
        &[&keys],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Variant {
    L,
    D,
    Da,
    P,
    P2,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::L => "L  one set-based statement",
            Variant::D => "D  PL/pgSQL, batches of 100, COMMIT each",
            Variant::Da => "D  same, synchronous_commit = off",
            Variant::P => "P  backfill (model UPDATE -> worker)",
            Variant::P2 => "P2 backfill, workers_per_job = 2",
        }
    }
}

/// What one run of P measured besides its time.
struct ProductRun {
    seconds: f64,
    update_ms: f64,
    memory: WorkerMemory,
}

fn run_l(db: &mut Client) -> f64 {
    let sql = set_based_insert(
        "backfill.process_instance i",
        "i.id",
        &format!("WHERE i.process_model_identifier = '{MODEL}'"),
    );
    let started = Instant::now();
    db.batch_execute(&sql).unwrap();
    started.elapsed().as_secs_f64()
}

fn run_d(port: u16, synchronous_commit: bool) -> f64 {
    let mut session = connect(port);
    if !synchronous_commit {
        session
            .batch_execute("SET synchronous_commit = off")
            .unwrap();
    }
    let started = Instant::now();
    session
        .batch_execute(&format!("CALL public.bench_dba('{MODEL}')"))
        .unwrap();
    started.elapsed().as_secs_f64()
}

/// Sets backfill.workers_per_job for the workers started from now on.
pub fn set_workers_per_job(db: &mut Client, port: u16, workers: u32) {
    set_setting(db, port, "backfill.workers_per_job", &workers.to_string());
}

/// Sets a sighup parameter with ALTER SYSTEM, reloads, and waits until a new process sees it
/// (workers are forked by the postmaster once it has reloaded; running ones read it at their
/// next batch).
pub fn set_setting(db: &mut Client, port: u16, name: &str, value: &str) {
    // Each on its own: ALTER SYSTEM cannot run in a multi-statement query's transaction.
    db.batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown: String = connect(port)
            .query_one(&format!("SHOW {name}"), &[])
            .unwrap()
            .get(0);
        if shown == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the reload of {name} did not take"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The UPDATE adding NEW_KEYS, then the job until it succeeded, with `workers_per_job`.
/// Timed on the server clock: from the UPDATE (its RETURNING is evaluated just before its
/// commit) to the job's finished_at.
fn run_p(db: &mut Client, port: u16, workers_per_job: u32) -> ProductRun {
    wait_for_no_worker(db);
    set_workers_per_job(db, port, workers_per_job);
    let paths = NEW_KEYS
        .iter()
        .map(|(key, path)| format!(r#"{{"key": "{key}", "path": "{path}"}}"#))
        .collect::<Vec<_>>()
        .join(", ");
    let started = Instant::now();
    let row = db
        .query_one(
            &format!(
                "UPDATE backfill.process_model
                    SET metadata_extraction_paths = metadata_extraction_paths || '[{paths}]'
                  WHERE id = '{MODEL}'
              RETURNING clock_timestamp()::text"
            ),
            &[],
        )
        .unwrap();
    let update_ms = started.elapsed().as_secs_f64() * 1000.0;
    let sampler = MemorySampler::start(wait_for_worker_pid(port));
    let updated_at: String = row.get(0);
    let job = wait_for_job(port);
    let seconds: f64 = db
        .query_one(
            "SELECT extract(epoch FROM finished_at - $1::text::timestamptz)::float8 FROM backfill.job WHERE id = $2",
            &[&updated_at, &job],
        )
        .unwrap()
        .get(0);
    ProductRun {
        seconds,
        update_ms,
        memory: sampler.stop(),
    }
}

/// Polls (every 20 ms, one short transaction each, so no snapshot stays open) until the
/// latest job has succeeded; returns its id.
fn wait_for_job(port: u16) -> i64 {
    let mut watcher = connect(port);
    loop {
        let row = watcher
            .query_one(
                "SELECT id, state FROM backfill.job WHERE parent_id IS NULL ORDER BY id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        let state: String = row.get(1);
        match state.as_str() {
            "succeeded" => return row.get(0),
            "queued" | "running" => thread::sleep(Duration::from_millis(20)),
            other => panic!("the benchmark job ended {other}"),
        }
    }
}

/// Waits until no worker is connected to this database (the last run's leaves once idle), so
/// that the next run's worker is a new process whose memory is its own.
fn wait_for_no_worker(db: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE backend_type = 'backfill worker' AND datname = current_database()",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "the last run's worker did not leave"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of the worker the launcher started for this database.
fn wait_for_worker_pid(port: u16) -> i32 {
    let mut watcher = connect(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pid: Option<i32> = watcher
            .query_one(
                "SELECT max(pid) FROM pg_stat_activity
                  WHERE backend_type = 'backfill worker' AND datname = current_database()",
                &[],
            )
            .unwrap()
            .get(0);
        if let Some(pid) = pid {
            return pid;
        }
        assert!(Instant::now() < deadline, "no worker started");
        thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Clone, Copy, Default, Debug)]
struct WorkerMemory {
    /// Peak resident set (VmHWM), shared buffers the process touched included.
    peak_resident_kb: u64,
    /// Peak private (anonymous) resident memory, sampled: the worker's own allocations.
    peak_private_kb: u64,
}

struct MemorySampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<WorkerMemory>,
}

impl MemorySampler {
    fn start(pid: i32) -> MemorySampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut memory = WorkerMemory::default();
            let status = format!("/proc/{pid}/status");
            while !flag.load(Ordering::Relaxed) {
                if let Ok(text) = fs::read_to_string(&status) {
                    for line in text.lines() {
                        let kb = || {
                            line.split_whitespace()
                                .nth(1)
                                .and_then(|v| v.parse::<u64>().ok())
                                .unwrap_or(0)
                        };
                        if line.starts_with("VmHWM:") {
                            memory.peak_resident_kb = memory.peak_resident_kb.max(kb());
                        } else if line.starts_with("RssAnon:") {
                            memory.peak_private_kb = memory.peak_private_kb.max(kb());
                        }
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
            memory
        });
        MemorySampler { stop, handle }
    }

    fn stop(self) -> WorkerMemory {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// UPDATE latency alone, `samples` times: the update queues a job, which is cancelled at once
/// and its few rows removed.
fn update_latencies(db: &mut Client, samples: usize) -> Vec<f64> {
    (0..samples)
        .map(|_| {
            reset_paths(db);
            let started = Instant::now();
            db.batch_execute(&format!(
                r#"UPDATE backfill.process_model
                      SET metadata_extraction_paths = metadata_extraction_paths || '[{{"key": "latency_probe", "path": "invoice.number"}}]'
                    WHERE id = '{MODEL}'"#
            ))
            .unwrap();
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            db.batch_execute(
                "SELECT backfill.cancel(max(id)) FROM backfill.job;
                 SELECT pg_sleep(0.2);
                 DELETE FROM backfill.process_instance_metadata WHERE key = 'latency_probe';",
            )
            .unwrap();
            ms
        })
        .collect()
}

fn reset_paths(db: &mut Client) {
    db.batch_execute(&format!(
        "UPDATE backfill.process_model SET metadata_extraction_paths = '{EXISTING_PATHS}' WHERE id = '{MODEL}'"
    ))
    .unwrap();
}

struct Scale {
    instances: i64,
    /// L's time at this size, when it was run here (the grown size).
    limit_seconds: Option<f64>,
    update_ms: f64,
    /// The same round trip and commit for an UPDATE that queues nothing (display_name).
    plain_update_ms: f64,
    memory: WorkerMemory,
    product_seconds: f64,
    tools: OperatorTools,
}

/// The operator's tools on the model after its job, in milliseconds (medians).
struct OperatorTools {
    /// backfill.preview of the benchmark's keys, default sample (20).
    preview_ms: f64,
    /// backfill.preview_summary, default sample (1,000).
    summary_ms: f64,
    /// SELECT * FROM backfill.coverage.
    coverage_view_ms: f64,
    /// backfill.count_coverage of the model (every key, exact).
    count_coverage_ms: f64,
}

fn time_ms(db: &mut Client, sql: &str, runs: usize) -> f64 {
    median(
        &(0..runs)
            .map(|_| {
                let started = Instant::now();
                db.batch_execute(sql).unwrap();
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect::<Vec<_>>(),
    )
}

fn operator_tools(db: &mut Client) -> OperatorTools {
    let paths = format!(
        "[{}]",
        NEW_KEYS
            .iter()
            .map(|(k, p)| format!(r#"{{"key": "{k}", "path": "{p}"}}"#))
            .collect::<Vec<_>>()
            .join(", ")
    );
    OperatorTools {
        preview_ms: time_ms(
            db,
            &format!("SELECT count(*) FROM backfill.preview('{MODEL}', '{paths}')"),
            5,
        ),
        summary_ms: time_ms(
            db,
            &format!("SELECT count(*) FROM backfill.preview_summary('{MODEL}', '{paths}')"),
            5,
        ),
        coverage_view_ms: time_ms(
            db,
            "SELECT count(*) FROM (SELECT * FROM backfill.coverage) c",
            5,
        ),
        count_coverage_ms: time_ms(db, &format!("SELECT backfill.count_coverage('{MODEL}')"), 3),
    }
}

/// UPDATE latency and the worker's memory during a whole job, at `instances`; the job's rows
/// are checked against `reference` (the rows of L at this size).
fn measure_scale(db: &mut Client, port: u16, instances: i64, reference: &[Row]) -> Scale {
    reset(db);
    let update_ms = median(&update_latencies(db, 7));
    let plain_update_ms = median(
        &(0..7)
            .map(|_| {
                let started = Instant::now();
                db.batch_execute(&format!(
                    "UPDATE backfill.process_model SET display_name = display_name WHERE id = '{MODEL}'"
                ))
                .unwrap();
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect::<Vec<_>>(),
    );
    reset(db);
    let run = run_p(db, port, 2);
    check(
        &result_rows(db),
        reference,
        &format!("P at {instances} instances"),
    );
    Scale {
        instances,
        limit_seconds: None,
        update_ms,
        plain_update_ms,
        memory: run.memory,
        product_seconds: run.seconds,
        tools: operator_tools(db),
    }
}

fn check(got: &[Row], reference: &[Row], what: &str) {
    if let Some(difference) = first_difference(reference, got) {
        eprintln!("bench: {what} does not produce the reference rows: {difference}");
        std::process::exit(1);
    }
}

/// The live load's runs (live.rs), each on freshly loaded tables of the server with default
/// settings: the extension's, then SpiffWorkflow's.
/// `shown` is called with each run as it ends.
fn live_measure(options: &Options, shown: &mut dyn FnMut(&live::Run)) -> Vec<live::Run> {
    let port = options
        .live_port
        .unwrap_or_else(|| usage("the live load needs --live-port (scripts/bench gives it)"));
    let mut runs = Vec::new();
    for run in 1..=options.live_runs {
        let mut db = connect(port);
        progress(&format!(
            "live load, run {run} of {}: loading {} instances of {MODEL} on the server with default settings",
            options.live_runs, options.live_instances
        ));
        setup(&mut db, options.live_instances);
        db.batch_execute("DROP TABLE bench_base").unwrap();
        let mut measure = |tables| {
            let run = live::run(port, tables, options.live_seconds, options.live_rounds);
            shown(&run);
            runs.push(run);
        };
        measure(live::Tables::Extension);
        if options.live_spiff_instances > 0 {
            progress(&format!(
                "live load, run {run}: loading SpiffWorkflow's tables ({} instances of {})",
                options.live_spiff_instances,
                spiff::MODEL
            ));
            // A fifth of spiff_data.py's instances belong to another model.
            spiff::load(&mut db, port, options.live_spiff_instances * 5 / 4, false);
            measure(live::Tables::Spiff);
        }
    }
    runs
}

/// `--live-only`: each run printed as it ends, then the summary.
fn live_runs(options: &Options) {
    live::print_header(options.live_seconds);
    let mut shown = 0;
    let runs = live_measure(options, &mut |run| {
        shown += 1;
        live::print_run(shown, run);
    });
    live::print_summary(&runs);
}

fn main() {
    let options = parse_options();
    if options.spiff_only {
        let report = spiff::run(
            options.port,
            options.spiff_instances,
            options.spiff_runs,
            options.citus_port,
        );
        spiff::print(&report);
        return;
    }
    if options.live_only {
        live_runs(&options);
        return;
    }
    let mut db = connect(options.port);
    let version: String = db.query_one("SHOW server_version", &[]).unwrap().get(0);
    progress(&format!(
        "loading {} instances of {MODEL} (and a third as many of another model)",
        options.instances
    ));
    let loading = Instant::now();
    let last_id = setup(&mut db, options.instances);
    let model_instances: i64 = db
        .query_one(
            "SELECT count(*) FROM backfill.process_instance WHERE process_model_identifier = $1",
            &[&MODEL],
        )
        .unwrap()
        .get(0);
    progress(&format!(
        "loaded in {:.0} s",
        loading.elapsed().as_secs_f64()
    ));
    // Warm-up, and the reference every run is compared with.
    reset(&mut db);
    run_l(&mut db);
    let reference = result_rows(&mut db);
    assert_eq!(
        reference.len() as i64,
        model_instances * NEW_KEYS.len() as i64,
        "reference row count"
    );

    let mut times: BTreeMap<Variant, Vec<f64>> = BTreeMap::new();
    let mut product_runs = Vec::new();
    let order = [Variant::L, Variant::D, Variant::Da, Variant::P, Variant::P2];
    for round in 0..options.runs {
        for i in 0..order.len() {
            let variant = order[(i + round) % order.len()];
            reset(&mut db);
            let seconds = match variant {
                Variant::L => run_l(&mut db),
                Variant::D => run_d(options.port, true),
                Variant::Da => run_d(options.port, false),
                Variant::P | Variant::P2 => {
                    let workers = if variant == Variant::P { 1 } else { 2 };
                    let run = run_p(&mut db, options.port, workers);
                    let seconds = run.seconds;
                    product_runs.push(run);
                    seconds
                }
            };
            check(
                &result_rows(&mut db),
                &reference,
                &format!("{variant:?} (round {})", round + 1),
            );
            progress(&format!("round {} {variant:?}: {seconds:.2} s", round + 1));
            times.entry(variant).or_default().push(seconds);
        }
    }

    progress("UPDATE latency and worker memory at this size");
    let base_scale = measure_scale(&mut db, options.port, options.instances, &reference);
    let mut scales = vec![base_scale];
    if options.scale_instances > options.instances {
        progress(&format!(
            "growing the model to {} instances",
            options.scale_instances
        ));
        let grown_last_id = options.scale_instances * 4 / 3;
        load_instances(&mut db, last_id + 1, grown_last_id);
        db.batch_execute("DROP TABLE bench_base; CREATE TABLE bench_base AS SELECT * FROM backfill.process_instance_metadata")
            .unwrap();
        db.batch_execute("VACUUM ANALYZE").unwrap();
        reset(&mut db);
        let limit_seconds = run_l(&mut db);
        let reference = result_rows(&mut db);
        let mut scale = measure_scale(&mut db, options.port, options.scale_instances, &reference);
        scale.limit_seconds = Some(limit_seconds);
        scales.push(scale);
    }

    // The JSON report covers the extension's own tables, without the application load.
    let live_report =
        (options.live_seconds > 0 && !options.json).then(|| live_measure(&options, &mut |_| {}));
    let spiff_report = (options.spiff_instances > 0 && !options.json).then(|| {
        spiff::run(
            options.port,
            options.spiff_instances,
            options.spiff_runs,
            options.citus_port,
        )
    });
    report(
        &options,
        &version,
        model_instances,
        &times,
        &product_runs,
        &scales,
    );
    if let Some(live_report) = live_report {
        live::print(&live_report, options.live_seconds);
    }
    if let Some(spiff_report) = spiff_report {
        spiff::print(&spiff_report);
    }
}

fn report(
    options: &Options,
    version: &str,
    instances: i64,
    times: &BTreeMap<Variant, Vec<f64>>,
    product_runs: &[ProductRun],
    scales: &[Scale],
) {
    let med = |v: Variant| median(&times[&v]);
    let rate = |v: Variant| instances as f64 / med(v);
    // Ratios are taken within each round, whose runs follow each other within a minute, and
    // their median reported: this machine's speed drifts by more than the differences measured.
    let per_round =
        |f: &dyn Fn(usize) -> f64| median(&(0..options.runs).map(f).collect::<Vec<_>>());
    let t = |v: Variant, r: usize| times[&v][r];
    let p_over_l = per_round(&|r| t(Variant::P, r) / t(Variant::L, r));
    let p2_over_l = per_round(&|r| t(Variant::P2, r) / t(Variant::L, r));
    let p_over_d = per_round(&|r| t(Variant::P, r) / t(Variant::D, r).min(t(Variant::Da, r)));
    let p_over_sync_d = per_round(&|r| t(Variant::P, r) / t(Variant::D, r));
    let p_over_async_d = per_round(&|r| t(Variant::P, r) / t(Variant::Da, r));
    let update_ms = median(&product_runs.iter().map(|r| r.update_ms).collect::<Vec<_>>());
    let growth_kb = scales.last().unwrap().memory.peak_private_kb as i64
        - scales[0].memory.peak_private_kb as i64;
    let targets = [
        ("P/L <= 1.05", p_over_l <= 1.05),
        ("P2/L <= 0.4 (workers_per_job = 2)", p2_over_l <= 0.4),
        ("P <= best D", p_over_d <= 1.0),
        (
            "UPDATE < 5 ms at every size",
            scales.iter().all(|s| s.update_ms < 5.0),
        ),
        ("worker memory growth < 10 MB", growth_kb < 10 * 1024),
        (
            "preview and preview_summary < 1 s at every size",
            scales
                .iter()
                .all(|s| s.tools.preview_ms < 1000.0 && s.tools.summary_ms < 1000.0),
        ),
    ];
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    if options.json {
        let variants = times
            .iter()
            .map(|(v, t)| {
                format!(
                    r#""{v:?}": {{"median_seconds": {:.4}, "instances_per_second": {:.0}, "runs": [{}]}}"#,
                    median(t),
                    instances as f64 / median(t),
                    t.iter().map(|s| format!("{s:.4}")).collect::<Vec<_>>().join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let scale_json = scales
            .iter()
            .map(|s| {
                format!(
                    r#"{{"instances": {}, "update_ms": {:.3}, "plain_update_ms": {:.3}, "worker_peak_private_kb": {}, "worker_peak_resident_kb": {}, "product_seconds": {:.3}, "limit_seconds": {}, "preview_ms": {:.2}, "preview_summary_ms": {:.2}, "coverage_view_ms": {:.2}, "count_coverage_ms": {:.1}}}"#,
                    s.instances, s.update_ms, s.plain_update_ms, s.memory.peak_private_kb, s.memory.peak_resident_kb, s.product_seconds,
                    s.limit_seconds.map_or("null".to_owned(), |l| format!("{l:.3}")),
                    s.tools.preview_ms, s.tools.summary_ms, s.tools.coverage_view_ms, s.tools.count_coverage_ms
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let target_json = targets
            .iter()
            .map(|(name, ok)| format!(r#""{name}": {ok}"#))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            r#"{{"postgres": "{version}", "cpus": {cpus}, "instances": {instances}, "runs": {}, "variants": {{{variants}}}, "p_over_l": {p_over_l:.4}, "p2_over_l": {p2_over_l:.4}, "p_over_d": {p_over_sync_d:.4}, "p_over_d_async": {p_over_async_d:.4}, "p_over_best_d": {p_over_d:.4}, "update_ms_during_runs": {update_ms:.3}, "scale": [{scale_json}], "worker_memory_growth_kb": {growth_kb}, "targets": {{{target_json}}}, "results_equal": true}}"#,
            options.runs
        );
        return;
    }
    println!("backfill benchmark: PostgreSQL {version}, {cpus} CPUs, {instances} instances of one model, 3 keys, {} runs each (median)", options.runs);
    println!(
        "all runs produced the same {} rows as the first run of L, row for row",
        instances * 3
    );
    println!();
    println!("{:<44} {:>10} {:>14}", "variant", "seconds", "instances/s");
    for (variant, t) in times {
        println!(
            "{:<44} {:>10.3} {:>14.0}   runs: {}",
            variant.label(),
            median(t),
            instances as f64 / median(t),
            t.iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!();
    println!(
        "P/L = {p_over_l:.3}   P2/L = {p2_over_l:.3}   P/D = {p_over_sync_d:.3}   P/D(async) = {p_over_async_d:.3}   P/best D = {p_over_d:.3}"
    );
    println!("(time ratios, median over rounds of the ratio within each round; below 1 is faster)");
    println!(
        "L {:.0}/s, D {:.0}/s, D(async) {:.0}/s, P {:.0}/s, P2 {:.0}/s",
        rate(Variant::L),
        rate(Variant::D),
        rate(Variant::Da),
        rate(Variant::P),
        rate(Variant::P2)
    );
    println!();
    println!(
        "{:<12} {:>16} {:>22} {:>26} {:>26}",
        "instances",
        "UPDATE latency",
        "plain UPDATE (no job)",
        "worker peak private RSS",
        "worker peak RSS (VmHWM)"
    );
    for s in scales {
        println!(
            "{:<12} {:>13.2} ms {:>19.2} ms {:>23} kB {:>23} kB",
            s.instances,
            s.update_ms,
            s.plain_update_ms,
            s.memory.peak_private_kb,
            s.memory.peak_resident_kb
        );
    }
    println!("worker private memory growth: {growth_kb} kB");
    for s in scales {
        let limit = s
            .limit_seconds
            .map(|l| format!(", L {l:.2} s ({:.0}/s)", s.instances as f64 / l))
            .unwrap_or_default();
        println!(
            "at {} instances: P {:.2} s ({:.0}/s){limit}",
            s.instances,
            s.product_seconds,
            s.instances as f64 / s.product_seconds
        );
        println!(
            "  operator's tools: preview (20 instances) {:.1} ms, preview_summary (1,000) {:.1} ms, \
             coverage view {:.1} ms, count_coverage (5 keys, exact) {:.0} ms",
            s.tools.preview_ms, s.tools.summary_ms, s.tools.coverage_view_ms, s.tools.count_coverage_ms
        );
    }
    println!();
    for (name, ok) in targets {
        println!("target {name}: {}", if ok { "met" } else { "MISSED" });
    }
}
