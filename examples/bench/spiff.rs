//! The same comparison on SpiffWorkflow's own tables (tests/fixtures/spiffworkflow/schema.sql in
//! schema `app`, attached): task data as `json` text of about 30 KB written by Python's
//! json.dumps (scripts/spiff_data.py), several tasks per instance, `value` NOT NULL. Without
//! `\u0000` in the data: PostgreSQL's json operators and the cast to jsonb fail on a document
//! that holds one anywhere, so L could not run on it (backfill reads it).
//!
//! - L: one set-based INSERT ... SELECT with the latest-task LATERAL, reading the keys with
//!   the json operator `#>>` (Lj), or casting the document to jsonb once per instance and
//!   reading it with jsonb's (Lb); rows for found values only, ON CONFLICT DO NOTHING;
//! - P: the model UPDATE adding the keys, until the worker's job has succeeded;
//! - Pc: the same on a Citus cluster (`--citus-port`), the same data distributed as
//!   docs/citus.md says: the batches run on its worker nodes.
//!
//! Both without and then with the indexes `attach` advises. Every run's rows are compared with
//! the first run of Lj, row for row (the keys are strings, which both render alike). Then the
//! cost of reading paths from json text per document, at 1 KB, 30 KB and 300 KB.

use crate::compare::Row;
use crate::{check, connect, median, progress, set_workers_per_job, wait_for_job};
use postgres::Client;
use std::process::Command;
use std::time::Instant;

pub const MODEL: &str = "finance/invoice";
const KEYS: [(&str, &str); 3] = [
    ("invoice_number", "invoice.number"),
    ("customer_city", "customer.address.city"),
    ("nested_word", "nested.b"),
];
const INDEXES: [&str; 2] = [
    "CREATE INDEX backfill_task_latest_completed_idx ON app.task (process_instance_id, end_in_seconds DESC NULLS LAST, guid DESC) INCLUDE (json_data_hash) WHERE state = 'COMPLETED'",
    "CREATE INDEX backfill_process_instance_model_id_idx ON app.process_instance (process_model_identifier, id)",
];

pub struct Report {
    pub instances: i64,
    pub document_bytes: i64,
    /// (label, indexed, seconds of each run)
    pub times: Vec<(&'static str, bool, Vec<f64>)>,
    /// (document size label, method, microseconds per document)
    pub parse_costs: Vec<(String, &'static str, f64)>,
}

/// The statements docs/citus.md gives for distributing SpiffWorkflow's tables.
fn distribution_ddl() -> String {
    let page = std::fs::read_to_string("docs/citus.md").unwrap();
    let start = page
        .find("```sql\n")
        .expect("docs/citus.md has an sql block")
        + 7;
    let end = start + page[start..].find("```").unwrap();
    page[start..end].to_owned()
}

pub fn load(db: &mut Client, port: u16, instances: i64, citus: bool) {
    db.batch_execute(
        "DROP SCHEMA IF EXISTS app CASCADE; CREATE SCHEMA app;
         SELECT backfill.detach();
         DELETE FROM backfill.process_model WHERE id IN ('finance/invoice', 'hr/leave-request');",
    )
    .unwrap();
    let schema = std::fs::read_to_string("tests/fixtures/spiffworkflow/schema.sql").unwrap();
    db.batch_execute(&format!("SET search_path = app; {schema}"))
        .unwrap();
    if citus {
        // A statement at a time: Citus sends a DDL statement's text on to the worker nodes,
        // and refuses one that holds several.
        for statement in distribution_ddl().split_inclusive(";\n") {
            db.batch_execute(statement).unwrap();
        }
    }
    db.batch_execute("RESET search_path").unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "python3 scripts/spiff_data.py generate --schema app --doc-bytes 30000 --without-nul --instances {instances} \
             | psql -X -q -h 127.0.0.1 -p {port} -U postgres -d postgres -f -"
        ))
        .status()
        .expect("python3 and psql run");
    assert!(status.success(), "loading SpiffWorkflow data failed");
    db.batch_execute("VACUUM ANALYZE app.process_instance, app.task, app.json_data")
        .unwrap();
    db.batch_execute(
        "SELECT backfill.attach('app');
         INSERT INTO backfill.process_model VALUES ('finance/invoice', 'Invoice', '[]');",
    )
    .unwrap();
}

fn reset(db: &mut Client) {
    db.batch_execute(
        "UPDATE backfill.process_model SET metadata_extraction_paths = '[]' WHERE id = 'finance/invoice';
         TRUNCATE app.process_instance_metadata;",
    )
    .unwrap();
    db.batch_execute("VACUUM ANALYZE app.process_instance_metadata, backfill.job")
        .unwrap();
    db.batch_execute("CHECKPOINT").unwrap();
}

fn rows(db: &mut Client) -> Vec<Row> {
    db.query(
        "SELECT process_instance_id::bigint, key::text, value::text FROM app.process_instance_metadata
          ORDER BY process_instance_id, key",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

fn set_based(jsonb_once: bool) -> String {
    let keys = KEYS
        .iter()
        .map(|(key, path)| format!("('{key}', '{{{}}}'::text[])", path.replace('.', ",")))
        .collect::<Vec<_>>()
        .join(", ");
    let (document, value) = if jsonb_once {
        (
            "CROSS JOIN LATERAL (SELECT d.data::jsonb AS j OFFSET 0) doc",
            "doc.j #>> k.path",
        )
    } else {
        ("", "d.data #>> k.path")
    };
    format!(
        "INSERT INTO app.process_instance_metadata
                (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
         SELECT i.id, k.key, v.value, extract(epoch FROM now())::int, extract(epoch FROM now())::int
           FROM app.process_instance i
           LEFT JOIN LATERAL (SELECT t.json_data_hash FROM app.task t
                               WHERE t.process_instance_id = i.id AND t.state = 'COMPLETED'
                               ORDER BY t.end_in_seconds DESC NULLS LAST, t.guid DESC LIMIT 1) lt ON true
           LEFT JOIN app.json_data d ON d.hash = lt.json_data_hash
           {document}
          CROSS JOIN (VALUES {keys}) AS k(key, path)
          CROSS JOIN LATERAL (SELECT {value} AS value) v
          WHERE i.process_model_identifier = '{MODEL}' AND v.value IS NOT NULL
         ON CONFLICT (process_instance_id, key) DO NOTHING"
    )
}

fn run_l(db: &mut Client, jsonb_once: bool) -> f64 {
    let sql = set_based(jsonb_once);
    let started = Instant::now();
    db.batch_execute(&sql).unwrap();
    started.elapsed().as_secs_f64()
}

fn run_p(db: &mut Client, port: u16) -> f64 {
    let paths = KEYS
        .iter()
        .map(|(key, path)| format!(r#"{{"key": "{key}", "path": "{path}"}}"#))
        .collect::<Vec<_>>()
        .join(", ");
    let updated_at: String = db
        .query_one(
            &format!(
                "UPDATE backfill.process_model SET metadata_extraction_paths = '[{paths}]'
                  WHERE id = '{MODEL}' RETURNING clock_timestamp()::text"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let job = wait_for_job(port);
    db.query_one(
        "SELECT extract(epoch FROM finished_at - $1::text::timestamptz)::float8 FROM backfill.job WHERE id = $2",
        &[&updated_at, &job],
    )
    .unwrap()
    .get(0)
}

pub fn run(port: u16, instances: i64, runs: usize, citus_port: Option<u16>) -> Report {
    let mut db = connect(port);
    progress(&format!(
        "SpiffWorkflow tables: generating and loading {instances} instances with about 30 KB of json task data each"
    ));
    let loading = Instant::now();
    load(&mut db, port, instances, false);
    let mut citus = citus_port.map(|citus_port| {
        let mut citus = connect(citus_port);
        load(&mut citus, citus_port, instances, true);
        set_workers_per_job(&mut citus, citus_port, 2);
        (citus, citus_port)
    });
    let model_instances: i64 = db
        .query_one(
            "SELECT count(*) FROM app.process_instance WHERE process_model_identifier = $1",
            &[&MODEL],
        )
        .unwrap()
        .get(0);
    let document_bytes: i64 = db
        .query_one(
            "SELECT avg(octet_length(data::text))::bigint FROM app.json_data WHERE octet_length(data::text) > 1000",
            &[],
        )
        .unwrap()
        .get(0);
    progress(&format!(
        "loaded in {:.0} s: {model_instances} instances of {MODEL}, documents of {document_bytes} bytes on average",
        loading.elapsed().as_secs_f64()
    ));

    // What a user gets: the default split across two workers.
    set_workers_per_job(&mut db, port, 2);
    let mut times: Vec<(&'static str, bool, Vec<f64>)> = Vec::new();
    let reference = if runs > 0 {
        reset(&mut db);
        run_l(&mut db, false);
        rows(&mut db)
    } else {
        Vec::new()
    };
    for indexed in [false, true].into_iter().filter(|_| runs > 0) {
        if indexed {
            for db in std::iter::once(&mut db).chain(citus.as_mut().map(|(c, _)| c)) {
                for index in INDEXES {
                    db.batch_execute(index).unwrap();
                }
                db.batch_execute("ANALYZE app.task, app.process_instance")
                    .unwrap();
            }
        }
        let labels: &[&'static str] = if citus.is_some() {
            &["Lj", "Lb", "P", "Pc"]
        } else {
            &["Lj", "Lb", "P"]
        };
        let mut by_label: Vec<Vec<f64>> = vec![Vec::new(); labels.len()];
        for round in 0..runs {
            for i in 0..labels.len() {
                let which = (i + round) % labels.len();
                let (on, on_port) = match (&mut citus, labels[which]) {
                    (Some((citus, citus_port)), "Pc") => (citus, *citus_port),
                    _ => (&mut db, port),
                };
                reset(on);
                let seconds = match which {
                    0 => run_l(on, false),
                    1 => run_l(on, true),
                    _ => run_p(on, on_port),
                };
                check(
                    &rows(on),
                    &reference,
                    &format!(
                        "SpiffWorkflow {} (indexed {indexed}, round {})",
                        labels[which],
                        round + 1
                    ),
                );
                progress(&format!(
                    "SpiffWorkflow, {}: round {} {}: {seconds:.2} s",
                    if indexed {
                        "advised indexes"
                    } else {
                        "schema as is"
                    },
                    round + 1,
                    labels[which]
                ));
                by_label[which].push(seconds);
            }
        }
        for (label, seconds) in labels.iter().copied().zip(by_label) {
            times.push((label, indexed, seconds));
        }
    }
    let parse_costs = parse_costs(&mut db);
    Report {
        instances: model_instances,
        document_bytes,
        times,
        parse_costs,
    }
}

/// Microseconds per document for reading three dotted paths from json text at three sizes,
/// against reading the document only (detoast), PostgreSQL's json operator, a cast to jsonb,
/// and a JSONPath (which parses the whole document).
fn parse_costs(db: &mut Client) -> Vec<(String, &'static str, f64)> {
    progress("cost of reading paths from json text, per document");
    db.batch_execute(
        "DROP TABLE IF EXISTS bench_docs;
         CREATE TABLE bench_docs AS
         SELECT '30 KB' AS size, data FROM app.json_data WHERE octet_length(data::text) > 20000 LIMIT 1000;
         INSERT INTO bench_docs
         SELECT '1 KB', (data::jsonb - 'padding' - 'note')::text::json FROM bench_docs WHERE size = '30 KB';
         INSERT INTO bench_docs
         SELECT '300 KB', jsonb_set(data::jsonb, '{padding}',
                   (SELECT jsonb_agg(e) FROM generate_series(1, 10),
                           LATERAL jsonb_array_elements(data::jsonb -> 'padding') e))::text::json
           FROM bench_docs WHERE size = '30 KB' LIMIT 200;",
    )
    .unwrap();
    db.batch_execute("VACUUM ANALYZE bench_docs").unwrap();
    let paths = "ARRAY['invoice.number', 'customer.address.city', 'nested.b']";
    let methods: [(&'static str, String); 5] = [
        ("read only (detoast)", "octet_length(data::text)".to_owned()),
        ("backfill, json text", format!("backfill.extract_values(data, {paths})")),
        ("backfill, JSONPath", "backfill.extract_values(data, ARRAY['$.invoice.number'])".to_owned()),
        ("jsonb cast + backfill", format!("backfill.extract_values(data::jsonb, {paths})")),
        (
            "json #>> (3 keys)",
            "(data #>> '{invoice,number}') || (data #>> '{customer,address,city}') || (data #>> '{nested,b}')".to_owned(),
        ),
    ];
    let mut costs = Vec::new();
    for size in ["1 KB", "30 KB", "300 KB"] {
        let n: i64 = db
            .query_one("SELECT count(*) FROM bench_docs WHERE size = $1", &[&size])
            .unwrap()
            .get(0);
        for (label, expression) in &methods {
            let sql = format!("SELECT count({expression}) FROM bench_docs WHERE size = '{size}'");
            let mut samples = Vec::new();
            for _ in 0..5 {
                let started = Instant::now();
                db.batch_execute(&sql).unwrap();
                samples.push(started.elapsed().as_secs_f64() * 1e6 / n as f64);
            }
            costs.push((size.to_owned(), *label, median(&samples)));
        }
    }
    db.batch_execute("DROP TABLE bench_docs").unwrap();
    costs
}

pub fn print(report: &Report) {
    println!();
    println!(
        "SpiffWorkflow's tables (attached, json task data of {} bytes on average, value NOT NULL): {} instances, 3 keys",
        report.document_bytes, report.instances
    );
    if report.times.is_empty() {
        println!("(no P/L runs: --spiff-runs 0)");
    } else {
        println!("all runs produced the same rows as the first run of Lj, row for row");
    }
    let med = |label: &str, indexed: bool| {
        report
            .times
            .iter()
            .find(|(l, i, _)| *l == label && *i == indexed)
            .map(|(_, _, t)| median(t))
            .unwrap()
    };
    for indexed in [false, true]
        .into_iter()
        .filter(|_| !report.times.is_empty())
    {
        println!(
            "{}",
            if indexed {
                "with the indexes attach advises:"
            } else {
                "SpiffWorkflow's schema as is:"
            }
        );
        for (label, what) in [
            ("Lj", "L  one statement, json #>>"),
            ("Lb", "L  one statement, jsonb cast once"),
            ("P", "P  backfill (model UPDATE -> 2 workers)"),
            ("Pc", "Pc the same on Citus (2 worker nodes)"),
        ] {
            if label == "Pc" && !report.times.iter().any(|(l, _, _)| *l == "Pc") {
                continue;
            }
            let t = med(label, indexed);
            println!(
                "  {what:<40} {t:>8.2} s {:>10.0} instances/s",
                report.instances as f64 / t
            );
        }
        let best_l = med("Lj", indexed).min(med("Lb", indexed));
        println!("  P/L (best L) = {:.3}", med("P", indexed) / best_l);
        if report.times.iter().any(|(l, _, _)| *l == "Pc") {
            println!(
                "  Pc/P = {:.3}   Pc/L (best L) = {:.3}",
                med("Pc", indexed) / med("P", indexed),
                med("Pc", indexed) / best_l
            );
        }
    }
    println!("reading paths from json text, microseconds per document (median of 5):");
    let mut sizes: Vec<&str> = Vec::new();
    for (size, _, _) in &report.parse_costs {
        if !sizes.contains(&size.as_str()) {
            sizes.push(size);
        }
    }
    print!("  {:<26}", "method");
    for size in &sizes {
        print!(" {size:>10}");
    }
    println!();
    let mut methods: Vec<&str> = Vec::new();
    for (_, method, _) in &report.parse_costs {
        if !methods.contains(method) {
            methods.push(method);
        }
    }
    for method in methods {
        print!("  {method:<26}");
        for size in &sizes {
            let cost = report
                .parse_costs
                .iter()
                .find(|(s, m, _)| s == size && *m == method)
                .map(|(_, _, c)| *c)
                .unwrap();
            print!(" {cost:>10.1}");
        }
        println!();
    }
}
