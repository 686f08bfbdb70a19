#[pgrx::pg_schema]
mod tests {
    use crate::tests::{assert_fails, error_of};
    use pgrx::prelude::*;

    /// The first column of every row of `sql`, as text.
    fn texts(sql: &str) -> Vec<String> {
        Spi::connect(|client| {
            client
                .select(sql, None, &[])?
                .map(|row| row.get::<String>(1).map(Option::unwrap_or_default))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn one<T: FromDatum + IntoDatum>(sql: &str) -> T {
        Spi::get_one::<T>(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_else(|| panic!("{sql}: NULL"))
    }

    #[pg_test]
    fn null_arguments_raise_22004_naming_the_argument() {
        Spi::run(
            "INSERT INTO backfill.process_model (id, metadata_extraction_paths)
             VALUES ('m', '[{\"key\": \"k\", \"path\": \"a\"}]')",
        )
        .unwrap();
        for (sql, fragment) in [
            (
                "SELECT backfill.enqueue(NULL)",
                "process_model_identifier must not be NULL",
            ),
            (
                "SELECT backfill.enqueue('m', ARRAY[NULL])",
                "an element of keys must not be NULL",
            ),
            (
                "SELECT backfill.enqueue('m', ARRAY['k', NULL])",
                "an element of keys must not be NULL",
            ),
            (
                "SELECT backfill.enqueue('m', NULL, NULL)",
                "overwrite must not be NULL",
            ),
            ("SELECT backfill.cancel(NULL)", "job_id must not be NULL"),
            ("SELECT backfill.wait(NULL)", "job_id must not be NULL"),
            ("SELECT backfill.wait(1, NULL)", "timeout must not be NULL"),
            ("SELECT backfill.run_begin(NULL)", "job_id must not be NULL"),
            ("SELECT backfill.run_batch(NULL)", "job_id must not be NULL"),
            ("SELECT backfill.run_end(NULL)", "job_id must not be NULL"),
        ] {
            assert_fails(sql, "22004", fragment);
        }
        // NULL keys means all keys; strict extraction functions give NULL for NULL.
        assert!(one::<i64>("SELECT backfill.enqueue('m', NULL)") > 0);
        assert!(Spi::get_one::<String>("SELECT backfill.render_value(NULL)")
            .unwrap()
            .is_none());
    }

    #[pg_test]
    fn a_huge_path_list_is_refused_at_once_under_a_statement_timeout() {
        Spi::run("INSERT INTO backfill.process_model (id) VALUES ('m')").unwrap();
        Spi::run("SET LOCAL statement_timeout = '2s'").unwrap();
        assert_fails(
            "UPDATE backfill.process_model
                SET metadata_extraction_paths =
                    (SELECT jsonb_agg(jsonb_build_object('key', 'k' || i, 'path', 'a.b' || i))
                       FROM generate_series(1, 100000) i)
              WHERE id = 'm'",
            "22023",
            "metadata_extraction_paths has 100000 elements; the limit is 1000",
        );
        // 1,000 paths, the most allowed, are checked within the timeout: the server cancels a
        // statement that takes longer (57014), and this one would fail. (No wall-clock check
        // of its own: the two statements together once took 2.3 s on a loaded machine, each
        // within its timeout.)
        Spi::run(
            "UPDATE backfill.process_model
                SET metadata_extraction_paths =
                    (SELECT jsonb_agg(jsonb_build_object('key', 'k' || i, 'path', '$.a.b' || i))
                       FROM generate_series(1, 1000) i)
              WHERE id = 'm'",
        )
        .unwrap();
        assert_fails(
            &format!(
                "UPDATE backfill.process_model
                    SET metadata_extraction_paths = '[{{\"key\": \"k\", \"path\": \"$.{}\"}}]'
                  WHERE id = 'm'",
                "a".repeat(2000)
            ),
            "22023",
            "path is 2002 bytes long; the limit is 1024",
        );
    }

    /// `{"a": {"a": ... "x" ...}}`, `depth` objects deep.
    fn nested(depth: usize) -> String {
        format!("{}\"x\"{}", "{\"a\": ".repeat(depth), "}".repeat(depth))
    }

    #[pg_test]
    fn deep_documents_extract_at_any_depth_and_jsonpath_fails_as_data() {
        let deep = nested(200);
        let document = format!("{{\"deep\": {deep}, \"n\": 7}}");
        let extracted = |paths: &str| {
            Spi::get_one_with_args::<pgrx::JsonB>(
                "SELECT backfill.extract_metadata($1::jsonb, $2::jsonb)",
                &[document.as_str().into(), paths.into()],
            )
            .unwrap()
            .unwrap()
            .0
        };
        // Python's str() of the 200-level object, cut to 255 characters.
        let python: String = "{'a': ".repeat(200).chars().take(255).collect();
        let dotted_to_the_bottom = format!("deep{}", ".a".repeat(200));
        let result = extracted(&format!(
            r#"[{{"key": "whole", "path": "deep"}},
                {{"key": "bottom", "path": "{dotted_to_the_bottom}"}},
                {{"key": "n", "path": "$.n"}},
                {{"key": "below", "path": "$.deep.a.a.a"}}]"#
        ));
        assert_eq!(result["whole"], python.as_str());
        assert_eq!(result["bottom"], "x");
        assert_eq!(result["n"], "7");
        let below: String = "{'a': ".repeat(197).chars().take(255).collect();
        assert_eq!(result["below"], below.as_str());
        // As render_value sees it too, and as the json format does.
        assert_eq!(
            one::<String>(&format!("SELECT backfill.render_value('{deep}'::jsonb)")),
            python
        );

        // JSONPath is evaluated on documents as deep as Python reads (on a stack of its own).
        let deeper = format!("{{\"deep\": {}, \"n\": 7}}", nested(1500));
        assert_eq!(
            one::<pgrx::JsonB>(&format!(
                "SELECT backfill.extract_metadata('{deeper}'::jsonb,
                   '[{{\"key\": \"n\", \"path\": \"$.n\"}}, {{\"key\": \"x\", \"path\": \"$..a.a.a.a\"}}]')"
            ))
            .0,
            serde_json::json!({"n": "7", "x": "{'a': ".repeat(50)[..255]})
        );
        // Deeper than that (Python 3.13 reads 9998 levels): an error of the data (class 54),
        // which the batch engine counts against the instance; dotted paths still work.
        Spi::run("SET LOCAL max_stack_depth = '7MB'").unwrap();
        let deepest = format!("{{\"deep\": {}, \"n\": 7}}", nested(10_000));
        let failure = error_of(&format!(
            "SELECT backfill.extract_metadata('{deepest}'::jsonb, '[{{\"key\": \"n\", \"path\": \"$.n\"}}]')"
        ))
        .expect("JSONPath on a 10001-level document fails");
        assert_eq!(failure.sqlstate, "54000", "{}", failure.message);
        assert!(
            failure.message.contains("nested more than 9998 levels"),
            "{}",
            failure.message
        );
        assert_eq!(
            one::<String>(&format!(
                "SELECT backfill.extract_metadata('{deepest}'::jsonb, '[{{\"key\": \"n\", \"path\": \"n\"}}]') ->> 'n'"
            )),
            "7"
        );
    }

    #[pg_test]
    fn deep_values_in_metadata_extraction_paths_are_input_errors_or_ignored() {
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        // A deep extra member is ignored, wherever the paths are read: validation, the
        // trigger's OLD and NEW rows, enqueue, extract_metadata.
        Spi::run(&format!(
            "INSERT INTO backfill.process_model (id, metadata_extraction_paths)
             VALUES ('m', '[{{\"key\": \"k\", \"path\": \"a\", \"note\": {deep}}}]')"
        ))
        .unwrap();
        Spi::run(&format!(
            "UPDATE backfill.process_model
                SET metadata_extraction_paths = metadata_extraction_paths
                    || '[{{\"key\": \"j\", \"path\": \"b\", \"note\": {deep}}}]'
              WHERE id = 'm'"
        ))
        .unwrap();
        assert_eq!(
            one::<i64>("SELECT count(*) FROM backfill.job WHERE process_model_identifier = 'm'"),
            1
        );
        assert!(one::<i64>("SELECT backfill.enqueue('m')") > 0);
        assert_eq!(
            one::<String>(&format!(
                "SELECT backfill.extract_metadata('{{\"a\": 5}}', '[{{\"key\": \"k\", \"path\": \"a\", \"x\": {deep}}}]') ->> 'k'"
            )),
            "5"
        );
        // A deep key or path is not text: 22023, not an internal error.
        assert_fails(
            &format!(
                "UPDATE backfill.process_model
                    SET metadata_extraction_paths = '[{{\"key\": \"k\", \"path\": {deep}}}]'
                  WHERE id = 'm'"
            ),
            "22023",
            "path must be a string, not an array",
        );
    }

    #[pg_test]
    fn every_object_and_setting_is_described() {
        let undescribed = texts(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
                      WHERE p.pronamespace = 'backfill'::regnamespace
                        AND obj_description(p.oid, 'pg_proc') IS NULL
                     UNION ALL
                     SELECT c.oid::regclass::text FROM pg_class c
                      WHERE c.relnamespace = 'backfill'::regnamespace AND c.relkind IN ('r', 'v')
                        AND obj_description(c.oid, 'pg_class') IS NULL
                     UNION ALL
                     SELECT name FROM pg_settings
                      WHERE name LIKE 'backfill.%'
                        AND (coalesce(short_desc, '') = '' OR coalesce(extra_desc, '') = '')",
        );
        assert!(undescribed.is_empty(), "{undescribed:?}");
    }

    #[pg_test]
    fn functions_have_a_fixed_search_path_and_job_rows_no_public_access() {
        // Every function of the extension that runs SQL carries search_path = pg_catalog,
        // pg_temp; extract_values and extract_values_or_fault (both of each) run none and are
        // called once per instance.
        let unset = texts(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
                      WHERE p.pronamespace = 'backfill'::regnamespace AND p.prokind = 'f'
                        AND p.proname NOT IN ('extract_values', 'extract_values_or_fault')
                        AND (p.proconfig IS NULL
                             OR NOT 'search_path=pg_catalog, pg_temp' = ANY (p.proconfig))",
        );
        assert!(unset.is_empty(), "{unset:?}");
        assert!(!one::<bool>(
            "SELECT has_table_privilege('public', 'backfill.job', 'INSERT')
                 OR has_table_privilege('public', 'backfill.job', 'UPDATE')
                 OR has_table_privilege('public', 'backfill.job', 'SELECT')
                 OR has_table_privilege('public', 'backfill.coverage_count', 'INSERT')
                 OR has_table_privilege('public', 'backfill.coverage', 'SELECT')"
        ));
        for function in [
            "backfill.enqueue(text, text[], boolean, timestamptz)",
            "backfill.cancel(bigint)",
            "backfill.preview(text, jsonb, integer)",
            "backfill.preview_summary(text, jsonb, integer)",
            "backfill.count_coverage(text)",
            "backfill.coverage_record(text, text[], bigint[], bigint[], bigint[], regrole)",
            "backfill.job_hold(bigint, timestamptz)",
            "backfill.run(bigint)",
            "backfill.run_begin(bigint)",
            "backfill.attach(text)",
            "backfill.detach()",
            "backfill.sync_process_models(jsonb)",
        ] {
            assert!(
                !one::<bool>(&format!(
                    "SELECT has_function_privilege('public', '{function}', 'EXECUTE')"
                )),
                "{function}"
            );
        }
    }
}
