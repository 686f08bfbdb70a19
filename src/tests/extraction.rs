#[pgrx::pg_schema]
mod tests {
    use crate::extract::document::extract;
    use crate::extract::paths::PathExpr;
    use crate::extract::python::PythonVersion;
    use crate::extract::render::{render, Style, ValueFormat};
    use crate::extract::value::Value as PyValue;
    use crate::tests::{assert_fails, lit};
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use serde_json::{json, Value};

    fn render_sql(jsonb_text: &str) -> Option<String> {
        Spi::get_one::<String>(&format!(
            "SELECT backfill.render_value({}::jsonb)",
            lit(jsonb_text)
        ))
        .unwrap()
    }

    fn extract_sql(doc: &str, paths: &Value) -> Value {
        let sql = format!(
            "SELECT backfill.extract_metadata({}::jsonb, {}::jsonb)",
            lit(doc),
            lit(&paths.to_string())
        );
        Spi::get_one::<JsonB>(&sql)
            .unwrap()
            .expect("extract_metadata is not null")
            .0
    }

    /// jsonb literal in, Python str() out. jsonb keeps a number's decimal text but not whether
    /// it was written with an exponent: 1e16 is stored as the integer 10000000000000000.
    #[pg_test]
    fn render_value_matches_python_through_jsonb() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#""INV-001""#, Some("INV-001")),
            (r#""it's \"quoted\"""#, Some(r#"it's "quoted""#)),
            (r#""Zürich 東京 🎉""#, Some("Zürich 東京 🎉")),
            ("42", Some("42")),
            ("-17", Some("-17")),
            (
                "123456789012345678901234567890",
                Some("123456789012345678901234567890"),
            ),
            ("1.5", Some("1.5")),
            ("1.0", Some("1.0")),
            ("1.50", Some("1.5")),
            ("10000000000000000.0", Some("1e+16")),
            ("0.00000015", Some("1.5e-07")),
            ("1.5e-7", Some("1.5e-07")),
            ("1e16", Some("10000000000000000")),
            ("0.1", Some("0.1")),
            ("true", Some("True")),
            ("false", Some("False")),
            ("null", None),
            (r#"["a", 1]"#, Some("['a', 1]")),
            (r#"{"k": null}"#, Some("{'k': None}")),
            (
                r#"[1.0, true, null, "it's"]"#,
                Some(r#"[1.0, True, None, "it's"]"#),
            ),
            // jsonb orders object keys by length, then bytes; the repr follows that order.
            (
                r#"{"bb": 1, "a": [2.50, {"c": false}]}"#,
                Some("{'a': [2.5, {'c': False}], 'bb': 1}"),
            ),
            (
                r#"["back\\slash\nnew\ttab\u0001"]"#,
                Some(r"['back\\slash\nnew\ttab\x01']"),
            ),
            ("[]", Some("[]")),
            ("{}", Some("{}")),
        ];
        for (input, expected) in cases {
            assert_eq!(
                render_sql(input).as_deref(),
                *expected,
                "render_value({input})"
            );
        }
    }

    #[pg_test]
    fn render_value_cuts_at_255_characters() {
        let text = format!("{}é🎉", "a".repeat(254));
        let out = render_sql(&json!(text).to_string()).unwrap();
        assert_eq!(out, format!("{}é", "a".repeat(254)));
        let long = render_sql(&json!(vec!["xyz"; 100]).to_string()).unwrap();
        assert_eq!(long.chars().count(), 255);
        // What is stored fits the column.
        let stored = Spi::get_one::<String>(&format!(
            "SELECT backfill.render_value({}::jsonb)::varchar(255)",
            lit(&json!("🎉".repeat(400)).to_string())
        ))
        .unwrap()
        .unwrap();
        assert_eq!(stored, "🎉".repeat(255));
    }

    #[pg_test]
    fn extract_metadata_follows_the_rules() {
        let doc = r#"{
            "invoice": {"number": "INV-7", "total": 1234.50, "paid": false,
                        "lines": [{"sku": "A"}, {"sku": "B"}], "note": null},
            "customer": {"id": 98765432109876543210, "name": "Zoë \"Z\" O'Neil"},
            "a": {"b": {"c": {"d": {"e": {"f": {"g": "deep"}}}}}},
            "weird": {"it's \"quoted\"": "yes", "": "empty key"},
            "0": "zero"
        }"#;
        let paths = json!([
            {"key": "invoice_number", "path": "invoice.number"},
            {"key": "total", "path": "invoice.total"},
            {"key": "paid", "path": "invoice.paid"},
            {"key": "note", "path": "invoice.note"},
            {"key": "lines", "path": "invoice.lines"},
            {"key": "first_sku_dotted", "path": "invoice.lines.0.sku"},
            {"key": "first_sku", "path": "$.invoice.lines[0].sku"},
            {"key": "all_skus", "path": "$.invoice.lines[*].sku"},
            {"key": "customer_id", "path": "customer.id"},
            {"key": "customer_name", "path": "customer.name"},
            {"key": "deep", "path": "a.b.c.d.e.f.g"},
            {"key": "quoted", "path": "weird.it's \"quoted\""},
            {"key": "empty_key", "path": "weird."},
            {"key": "zero", "path": "0"},
            {"key": "missing", "path": "invoice.missing"},
            {"key": "through_scalar", "path": "invoice.number.x"},
            {"key": "jsonpath_missing", "path": "$.nothing.here"},
            {"key": "whole_invoice", "path": "customer"}
        ]);
        let expected = json!({
            "invoice_number": "INV-7",
            "total": "1234.5",
            "paid": "False",
            "note": null,
            "lines": "[{'sku': 'A'}, {'sku': 'B'}]",
            "first_sku_dotted": null,
            "first_sku": "A",
            "all_skus": "A",
            "customer_id": "98765432109876543210",
            "customer_name": "Zoë \"Z\" O'Neil",
            "deep": "deep",
            "quoted": "yes",
            "empty_key": "empty key",
            "zero": "zero",
            "missing": null,
            "through_scalar": null,
            "jsonpath_missing": null,
            "whole_invoice": "{'id': 98765432109876543210, 'name': 'Zoë \"Z\" O\\'Neil'}"
        });
        assert_eq!(extract_sql(doc, &paths), expected);
        assert_eq!(extract_sql("{}", &paths)["invoice_number"], Value::Null);
        assert_eq!(extract_sql("[1, 2]", &paths)["zero"], Value::Null);
        assert_eq!(extract_sql(r#""scalar""#, &paths)["zero"], Value::Null);
    }

    #[pg_test]
    fn extract_metadata_rejects_bad_paths_with_22023() {
        assert_fails(
            r#"SELECT backfill.extract_metadata('{}', '[{"key": "a", "path": "$.a[?("}]')"#,
            "22023",
            "not a valid JSONPath expression",
        );
        assert_fails(
            r#"SELECT backfill.extract_metadata('{}', '{"key": "a"}')"#,
            "22023",
            "must be a JSON array",
        );
        assert_fails(
            r#"SELECT backfill.extract_metadata('{}', '[{"key": "a", "path": "x"}, {"key": "a", "path": "y"}]')"#,
            "22023",
            "element 1",
        );
    }

    #[pg_test]
    fn extraction_functions_are_stable_and_parallel_safe() {
        // Stable: they read backfill.value_format (docs/extraction.md).
        let flags = Spi::get_one::<String>(
            "SELECT string_agg(proname || ':' || provolatile::text || proparallel::text, ',' ORDER BY proname)
               FROM pg_proc WHERE pronamespace = 'backfill'::regnamespace
                AND proname IN ('extract_metadata', 'render_value')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(flags, "extract_metadata:ss,render_value:ss");
    }

    #[pg_test]
    fn large_documents_are_read_without_detoast_trouble() {
        // A document far over the TOAST threshold, compressed and stored out of line.
        Spi::run(
            "CREATE TEMP TABLE big AS
             SELECT jsonb_build_object('filler', (SELECT jsonb_agg(repeat(md5(i::text), 20))
                                                  FROM generate_series(1, 2000) i),
                                       'k', jsonb_build_object('v', 'found')) AS data",
        )
        .unwrap();
        let found = Spi::get_one::<String>(
            r#"SELECT backfill.extract_metadata(data, '[{"key": "v", "path": "k.v"}]') ->> 'v' FROM big"#,
        )
        .unwrap();
        assert_eq!(found.as_deref(), Some("found"));
    }

    /// The in-place jsonb lookup and the pure serde_json implementation agree on random
    /// documents and paths.
    #[pg_test]
    fn in_place_lookup_agrees_with_the_pure_rules() {
        let mut rng = XorShift(0x9e3779b97f4a7c15);
        for _ in 0..300 {
            let doc = random_value(&mut rng, 0);
            let paths: Vec<String> = (0..6).map(|_| random_path(&mut rng)).collect();
            let spec: Vec<Value> = paths
                .iter()
                .enumerate()
                .map(|(i, p)| json!({"key": format!("k{i}"), "path": p}))
                .collect();
            let got = extract_sql(&doc.to_string(), &Value::Array(spec));
            // The pure rules see the document as jsonb stores it.
            let stored: Value = serde_json::from_str(
                &Spi::get_one::<String>(&format!("SELECT {}::jsonb::text", lit(&doc.to_string())))
                    .unwrap()
                    .unwrap(),
            )
            .unwrap();
            for (i, path) in paths.iter().enumerate() {
                let want = extract(&stored, &PathExpr::parse(path).unwrap()).and_then(|v| {
                    let style = Style {
                        format: ValueFormat::Python,
                        python: PythonVersion::V3_13,
                    };
                    render(&PyValue::from_serde(v), style).unwrap()
                });
                assert_eq!(
                    got[format!("k{i}")].as_str(),
                    want.as_deref(),
                    "path {path} in {doc}"
                );
            }
        }
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }
    }

    const KEYS: &[&str] = &["a", "b", "cc", "0", "x y", "é", "it's"];

    fn random_value(rng: &mut XorShift, depth: u32) -> Value {
        let pick = if depth >= 4 { rng.next(6) } else { rng.next(9) };
        match pick {
            0 => Value::Null,
            1 => json!(rng.next(2) == 1),
            2 => serde_json::from_str(
                [
                    "7",
                    "-3",
                    "12345678901234567890123",
                    "2.50",
                    "0.000012",
                    "1e3",
                    "-0.5",
                ][rng.next(7) as usize],
            )
            .unwrap(),
            3 | 4 => json!(
                ["plain", "it's", "say \"hi\"", "tab\there", "東京", ""][rng.next(6) as usize]
            ),
            5 => json!(rng.next(1000)),
            6 => Value::Array(
                (0..rng.next(3))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.next(4) + 1)
                    .map(|_| {
                        (
                            KEYS[rng.next(KEYS.len() as u64) as usize].to_owned(),
                            random_value(rng, depth + 1),
                        )
                    })
                    .collect(),
            ),
        }
    }

    fn random_path(rng: &mut XorShift) -> String {
        if rng.next(5) == 0 {
            return ["$.a", "$.a.b", "$..cc", "$.a[0]", "$.*"][rng.next(5) as usize].to_owned();
        }
        (0..rng.next(3) + 1)
            .map(|_| KEYS[rng.next(KEYS.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(".")
    }
}
