//! `backfill.value_format`: 'json' renders exactly as `jsonb #>> '{}'`; a reload switches it.

mod common;

use common::Cluster;

/// Values covering every JSON type, nesting, escapes, unicode and number forms.
const VALUES: &[&str] = &[
    r#""plain text""#,
    r#""with \"quotes\" and 'apostrophes'""#,
    r#""tab\tnewline\ncr\rbackslash\\ctl\u0001\u001f""#,
    r#""Zürich 東京 🎉""#,
    "0",
    "-17",
    "123456789012345678901234567890",
    "1.50",
    "1e16",
    "1.5e-7",
    "-0.000",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    r#"[1, "a", null, true, 2.50]"#,
    r#"{"b": {"c": [1, {"d": "e\"f"}]}, "a": null, "longer key": "x"}"#,
    r#"["\u0000 is not allowed in jsonb text, \u0007 is"]"#,
];

#[test]
fn json_format_matches_jsonb_text_and_reload_switches_back() {
    let cluster = Cluster::start("value-format", &["backfill.value_format = 'json'"]);
    let mut db = cluster.create_db("formats");
    db.batch_execute("CREATE TABLE v (doc jsonb)").unwrap();
    for value in VALUES {
        // \u0000 cannot be stored in jsonb: that one value is expected to be refused.
        let inserted = db.execute("INSERT INTO v VALUES ($1::text::jsonb)", &[value]);
        assert_eq!(inserted.is_err(), value.contains("\\u0000"), "{value}");
    }
    // Long values as well, cut at 255 characters in both.
    db.batch_execute(
        "INSERT INTO v SELECT jsonb_build_array(repeat('é', 300), repeat('x', 10));
         INSERT INTO v SELECT to_jsonb(repeat('🎉', 300));",
    )
    .unwrap();
    let mismatches: Vec<(String, Option<String>, Option<String>)> = db
        .query(
            "SELECT doc::text, backfill.render_value(doc), left(doc #>> '{}', 255)
               FROM v WHERE backfill.render_value(doc) IS DISTINCT FROM left(doc #>> '{}', 255)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        mismatches.is_empty(),
        "json rendering differs from #>> for {mismatches:?}"
    );
    let rows: i64 = db.query_one("SELECT count(*) FROM v", &[]).unwrap().get(0);
    assert_eq!(rows as usize, VALUES.len() - 1 + 2);

    // The same document through extract_metadata, in json format.
    let extracted: String = db
        .query_one(
            r#"SELECT backfill.extract_metadata('{"a": {"b": true, "c": [1, 2.0]}}',
                                                 '[{"key": "b", "path": "a.b"}, {"key": "c", "path": "a.c"}]')::text"#,
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(extracted, r#"{"b": "true", "c": "[1, 2.0]"}"#);

    // value_format is a sighup setting: a reload switches sessions back to Python rendering.
    cluster.set_and_reload("backfill.value_format", "python");
    let mut db = cluster.connect("formats");
    let python: String = db
        .query_one(
            r#"SELECT backfill.render_value('[true, null, "x", 2.0]')"#,
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(python, "[True, None, 'x', 2.0]");
    let setting_context: String = db
        .query_one(
            "SELECT context FROM pg_settings WHERE name = 'backfill.value_format'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(setting_context, "sighup");
}
