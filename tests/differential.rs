//! backfill against Python itself: seeded random documents and paths (scripts/differential
//! writes them, with what SpiffWorkflow's own backfill stores for each under Python 3.11 to
//! 3.14), read through `backfill.extract_values(json, text[])` under each
//! `backfill.python_version`, must give exactly the same values, or fail the instance exactly
//! where Python's does (its SQLSTATE).
//!
//! BACKFILL_DIFFERENTIAL_SEED, _CASES and _FLOATS choose another corpus (docs/extraction.md's figures
//! were measured with _FLOATS=1000000).

mod common;

use common::Cluster;
use std::io::Write;
use std::path::Path;
use std::process::Command;

fn setting(name: &str, default: &str) -> String {
    std::env::var(format!("BACKFILL_DIFFERENTIAL_{name}")).unwrap_or_else(|_| default.to_owned())
}

#[test]
fn extract_values_gives_what_python_stores_under_every_python_version() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("backfill-differential-{}", std::process::id()));
    let generated = Command::new("python3")
        .arg(repo.join("scripts/differential"))
        .args(["--out", out.to_str().unwrap()])
        .args(["--seed", &setting("SEED", "22")])
        .args(["--cases", &setting("CASES", "3000")])
        .args(["--floats", &setting("FLOATS", "3000")])
        .output()
        .expect("python3 runs scripts/differential");
    assert!(
        generated.status.success(),
        "scripts/differential failed:\n{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    println!("{}", String::from_utf8_lossy(&generated.stdout).trim());

    let cluster = Cluster::start("differential", &[]);
    let mut db = cluster.create_db("differential");
    db.batch_execute(
        "CREATE TABLE cases (id int PRIMARY KEY, doc json NOT NULL, paths text[] NOT NULL);
         CREATE TABLE expected (id int, version text, result jsonb, PRIMARY KEY (version, id));
         CREATE TABLE staged (id int, paths jsonb);
         -- One instance's outcome: its values, or the SQLSTATE that fails it.
         CREATE FUNCTION outcome(doc json, paths text[]) RETURNS jsonb LANGUAGE plpgsql AS $$
         BEGIN
             RETURN to_jsonb(backfill.extract_values(doc, paths));
         EXCEPTION WHEN OTHERS THEN
             RETURN jsonb_build_object('error', SQLSTATE);
         END $$;",
    )
    .unwrap();
    let cases = std::fs::read(out.join("cases.csv")).unwrap();
    load_cases(&mut db, &cases);
    let total: i64 = db
        .query_one("SELECT count(*) FROM cases", &[])
        .unwrap()
        .get(0);
    assert!(total >= 3000, "{total} cases loaded");

    let mut report = Vec::new();
    for version in ["3.11", "3.12", "3.13", "3.14"] {
        let expected = std::fs::read(out.join(format!("expected-{version}.csv"))).unwrap();
        db.batch_execute("TRUNCATE staged").unwrap();
        let mut writer = db
            .copy_in("COPY staged (id, paths) FROM STDIN (FORMAT csv)")
            .unwrap();
        writer.write_all(&expected).unwrap();
        writer.finish().unwrap();
        db.execute(
            "INSERT INTO expected SELECT id, $1, paths FROM staged",
            &[&version],
        )
        .unwrap();
        cluster.set_and_reload("backfill.python_version", version);
        let rows = db
            .query(
                "SELECT c.id, c.doc::text, c.paths::text, e.result::text, got::text
                   FROM cases c JOIN expected e ON e.id = c.id AND e.version = $1,
                        LATERAL outcome(c.doc, c.paths) AS got
                  WHERE got IS DISTINCT FROM e.result
                  ORDER BY c.id",
                &[&version],
            )
            .unwrap();
        let errors: i64 = db
            .query_one(
                "SELECT count(*) FROM expected WHERE version = $1 AND result ? 'error'",
                &[&version],
            )
            .unwrap()
            .get(0);
        report.push(format!(
            "Python {version}: {total} cases ({errors} failing the instance), {} differ",
            rows.len()
        ));
        for row in rows.iter().take(10) {
            let doc: String = row.get(1);
            let shown: String = doc.chars().take(300).collect();
            report.push(format!(
                "  case {}: paths {} in {shown}\n    Python:   {}\n    backfill: {}",
                row.get::<_, i32>(0),
                row.get::<_, String>(2),
                row.get::<_, String>(3),
                row.get::<_, String>(4)
            ));
        }
    }
    // Numbers written with a fraction and no exponent keep their digits in jsonb: through the
    // jsonb overload and render_value they are the same floats (the ties among them). Zero
    // loses its sign in numeric (docs/extraction.md, "What jsonb cannot tell").
    let through_jsonb = db
        .query(
            "SELECT c.id, c.doc::text, e.result::text,
                    to_jsonb(backfill.extract_values(c.doc::jsonb, c.paths))::text,
                    jsonb_build_array(backfill.render_value(c.doc::jsonb -> 'x'))::text
               FROM cases c JOIN expected e ON e.id = c.id AND e.version = '3.13'
              WHERE c.doc::text ~ '^\\{\"x\": -?[0-9]+\\.[0-9]+\\}$'
                AND (c.doc ->> 'x')::float8 <> 0",
            &[],
        )
        .unwrap();
    assert!(
        through_jsonb.len() > 100,
        "{} plain decimals",
        through_jsonb.len()
    );
    let differ: Vec<String> = through_jsonb
        .iter()
        .filter(|row| {
            let expected: String = row.get(2);
            row.get::<_, String>(3) != expected || row.get::<_, String>(4) != expected
        })
        .take(10)
        .map(|row| {
            format!(
                "  case {}: {}",
                row.get::<_, i32>(0),
                row.get::<_, String>(1)
            )
        })
        .collect();
    report.push(format!(
        "jsonb overload and render_value: {} plain decimals, {} differ",
        through_jsonb.len(),
        differ.len()
    ));
    report.extend(differ);
    let report = report.join("\n");
    println!("{report}");
    assert!(!report.contains("  case "), "{report}");
    let _ = std::fs::remove_dir_all(&out);
}

/// The cases into table `cases`: the file's third column is a JSON array, which COPY reads
/// into a staging table and SQL turns into text[].
fn load_cases(db: &mut postgres::Client, data: &[u8]) {
    db.batch_execute("CREATE TEMP TABLE staged_cases (id int, doc text, paths jsonb)")
        .unwrap();
    let mut writer = db
        .copy_in("COPY staged_cases (id, doc, paths) FROM STDIN (FORMAT csv)")
        .unwrap();
    writer.write_all(data).unwrap();
    writer.finish().unwrap();
    db.batch_execute(
        "INSERT INTO cases
         SELECT id, doc::json, ARRAY(SELECT jsonb_array_elements_text(paths)) FROM staged_cases",
    )
    .unwrap();
}
