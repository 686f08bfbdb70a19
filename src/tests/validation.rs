#[pgrx::pg_schema]
mod tests {
    use crate::tests::{assert_fails, lit};
    use pgrx::prelude::*;

    const VALID: &str = r#"[{"key": "invoice_number", "path": "invoice.number"}]"#;

    /// Each malformed shape, with a fragment its message must contain.
    const REJECTED: &[(&str, &str)] = &[
        (
            r#"{"key": "a", "path": "b"}"#,
            "must be a JSON array, not an object",
        ),
        (r#""invoice.number""#, "must be a JSON array, not a string"),
        ("null", "must be a JSON array, not null"),
        (
            r#"[{"key": "a", "path": "b"}, "c"]"#,
            "element 1 \"c\": must be an object",
        ),
        (
            r#"[{"path": "b"}]"#,
            "element 0 {\"path\":\"b\"}: key is missing",
        ),
        (
            r#"[{"key": "", "path": "b"}]"#,
            "element 0 {\"key\":\"\",\"path\":\"b\"}: key is empty",
        ),
        (
            r#"[{"key": 12, "path": "b"}]"#,
            "element 0 {\"key\":12,\"path\":\"b\"}: key must be a string, not a number",
        ),
        (
            r#"[{"key": "a"}]"#,
            "element 0 {\"key\":\"a\"}: path is missing",
        ),
        (r#"[{"key": "a", "path": ""}]"#, "path is empty"),
        (
            r#"[{"key": "a", "path": true}]"#,
            "path must be a string, not a boolean",
        ),
        (
            r#"[{"key": "a", "path": "x"}, {"key": "a", "path": "y"}]"#,
            "element 1 {\"key\":\"a\",\"path\":\"y\"}: key \"a\" already appears in element 0",
        ),
        (
            r#"[{"key": "a", "path": "$.a[?("}]"#,
            "path is not a valid JSONPath expression",
        ),
    ];

    fn insert_model(id: &str, paths: &str) -> String {
        format!(
            "INSERT INTO backfill.process_model (id, metadata_extraction_paths) VALUES ({}, {}::jsonb)",
            lit(id),
            lit(paths)
        )
    }

    #[pg_test]
    fn rejected_inserts_raise_22023_naming_the_element() {
        for (i, (paths, fragment)) in REJECTED.iter().enumerate() {
            assert_fails(&insert_model(&format!("m{i}"), paths), "22023", fragment);
        }
        let long_key = format!(r#"[{{"key": "{}", "path": "a"}}]"#, "k".repeat(256));
        assert_fails(
            &insert_model("long", &long_key),
            "22023",
            "key is 256 characters long; the limit is 255",
        );
        let count = Spi::get_one::<i64>("SELECT count(*) FROM backfill.process_model").unwrap();
        assert_eq!(count, Some(0), "no rejected row was stored");
    }

    #[pg_test]
    fn rejected_update_leaves_the_row_as_it_was() {
        Spi::run(&insert_model("finance/invoice", VALID)).unwrap();
        for (paths, fragment) in REJECTED {
            assert_fails(
                &format!(
                    "UPDATE backfill.process_model SET metadata_extraction_paths = {}::jsonb, display_name = 'changed'
                      WHERE id = 'finance/invoice'",
                    lit(paths)
                ),
                "22023",
                fragment,
            );
        }
        let (paths, name) = Spi::get_two::<String, String>(
            "SELECT metadata_extraction_paths::text, coalesce(display_name, '<null>')
               FROM backfill.process_model WHERE id = 'finance/invoice'",
        )
        .unwrap();
        assert_eq!(
            paths.as_deref(),
            Some(r#"[{"key": "invoice_number", "path": "invoice.number"}]"#)
        );
        assert_eq!(name.as_deref(), Some("<null>"));
    }

    #[pg_test]
    fn valid_rows_pass_untouched() {
        let paths =
            r#"[{"key": "b", "path": "x.y", "note": "kept"}, {"key": "a", "path": "$.z[0]"}]"#;
        Spi::run(&insert_model("m", paths)).unwrap();
        Spi::run("INSERT INTO backfill.process_model (id) VALUES ('defaults')").unwrap();
        Spi::run("UPDATE backfill.process_model SET display_name = 'Renamed' WHERE id = 'm'")
            .unwrap();
        let stored = Spi::get_one::<bool>(&format!(
            "SELECT metadata_extraction_paths = {}::jsonb FROM backfill.process_model WHERE id = 'm'",
            lit(paths)
        ))
        .unwrap();
        assert_eq!(stored, Some(true));
        let default = Spi::get_one::<String>(
            "SELECT metadata_extraction_paths::text FROM backfill.process_model WHERE id = 'defaults'",
        )
        .unwrap();
        assert_eq!(default.as_deref(), Some("[]"));
        // NULL is refused by the column itself.
        assert_fails(
            "UPDATE backfill.process_model SET metadata_extraction_paths = NULL WHERE id = 'm'",
            "23502",
            "metadata_extraction_paths",
        );
    }
}
