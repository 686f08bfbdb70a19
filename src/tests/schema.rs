#[pgrx::pg_schema]
mod tests {
    use crate::tests::assert_fails;
    use pgrx::prelude::*;

    fn one<T: FromDatum + IntoDatum>(sql: &str) -> T {
        Spi::get_one::<T>(sql)
            .unwrap()
            .unwrap_or_else(|| panic!("NULL from {sql}"))
    }

    fn explain(sql: &str) -> String {
        Spi::explain(sql).unwrap().0.to_string()
    }

    #[pg_test]
    fn tables_columns_and_types() {
        let columns = one::<String>(
            "SELECT string_agg(format('%s.%s %s%s', table_name, column_name, data_type,
                                      CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE '' END),
                               E'\\n' ORDER BY table_name, ordinal_position)
               FROM information_schema.columns
              WHERE table_schema = 'backfill' AND table_name IN
                    ('process_model', 'process_instance', 'json_data', 'task',
                     'process_instance_metadata')",
        );
        let expected = "\
json_data.hash text not null
json_data.data jsonb not null
process_instance.id bigint not null
process_instance.process_model_identifier text not null
process_instance.status text
process_instance.created_at_in_seconds bigint
process_instance.updated_at_in_seconds bigint
process_instance_metadata.id bigint not null
process_instance_metadata.process_instance_id bigint not null
process_instance_metadata.key character varying not null
process_instance_metadata.value character varying
process_instance_metadata.created_at_in_seconds bigint not null
process_instance_metadata.updated_at_in_seconds bigint not null
process_model.id text not null
process_model.display_name text
process_model.metadata_extraction_paths jsonb not null
task.guid uuid not null
task.process_instance_id bigint not null
task.state text not null
task.json_data_hash text not null
task.start_in_seconds numeric
task.end_in_seconds numeric";
        assert_eq!(columns, expected);
        let job_columns = one::<String>(
            "SELECT string_agg(column_name, ',' ORDER BY column_name)
               FROM information_schema.columns
              WHERE table_schema = 'backfill' AND table_name = 'job'",
        );
        for column in [
            "id",
            "process_model_identifier",
            "paths",
            "overwrite",
            "origin",
            "state",
            "instances_total",
            "instances_processed",
            "instances_updated",
            "errors",
            "last_instance_id",
            "last_error",
            "created_at",
            "started_at",
            "finished_at",
        ] {
            assert!(
                job_columns.split(',').any(|c| c == column),
                "job.{column} missing"
            );
        }
        assert_eq!(one::<i32>("SELECT character_maximum_length FROM information_schema.columns
                                WHERE table_schema = 'backfill' AND table_name = 'process_instance_metadata'
                                  AND column_name = 'value'"), 255);
    }

    #[pg_test]
    fn constraints_and_cascades() {
        Spi::run(
            "INSERT INTO backfill.process_instance (id, process_model_identifier) VALUES (1, 'm'), (2, 'm');
             INSERT INTO backfill.json_data VALUES ('h1', '{\"a\": 1}');
             INSERT INTO backfill.task (guid, process_instance_id, state, json_data_hash, end_in_seconds)
                  VALUES (gen_random_uuid(), 1, 'COMPLETED', 'h1', 10), (gen_random_uuid(), 2, 'READY', 'h1', NULL);
             INSERT INTO backfill.process_instance_metadata
                  (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
                  VALUES (1, 'k', 'v', 0, 0), (2, 'k', 'v', 0, 0);",
        )
        .unwrap();
        assert_fails(
            "INSERT INTO backfill.process_instance_metadata
                  (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
                  VALUES (1, 'k', 'again', 0, 0)",
            "23505",
            "process_instance_metadata_process_instance_id_key_key",
        );
        assert_fails(
            "INSERT INTO backfill.task (guid, process_instance_id, state, json_data_hash)
                  VALUES (gen_random_uuid(), 1, 'COMPLETED', 'no such hash')",
            "23503",
            "json_data",
        );
        assert_fails(
            "INSERT INTO backfill.process_instance_metadata
                  (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
                  VALUES (99, 'k', 'v', 0, 0)",
            "23503",
            "process_instance",
        );
        Spi::run("DELETE FROM backfill.process_instance WHERE id = 1").unwrap();
        assert_eq!(
            one::<i64>("SELECT count(*) FROM backfill.task WHERE process_instance_id = 1"),
            0
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM backfill.process_instance_metadata WHERE process_instance_id = 1"),
            0
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM backfill.process_instance_metadata"),
            1
        );
        Spi::run("INSERT INTO backfill.job (process_model_identifier, paths, origin, queued_by, tables_schema) VALUES ('m', '[]', 'manual', current_user::regrole, 'backfill')")
            .unwrap();
        assert_fails(
            "UPDATE backfill.job SET state = 'paused'",
            "23514",
            "job_state_check",
        );
        assert_fails(
            "UPDATE backfill.job SET origin = 'cron'",
            "23514",
            "job_origin_check",
        );
        // A split job's parts go with it (a trigger: parent_id has no foreign key).
        Spi::run(
            "SELECT backfill.job_split(max(id), 2, 2, ARRAY[1, 2]::bigint[], ARRAY[1, 1]::bigint[])
               FROM backfill.job",
        )
        .unwrap();
        assert_eq!(one::<i64>("SELECT count(*) FROM backfill.job"), 3);
        Spi::run("DELETE FROM backfill.job WHERE parent_id IS NULL").unwrap();
        assert_eq!(one::<i64>("SELECT count(*) FROM backfill.job"), 0);
    }

    #[pg_test]
    fn indexes_for_every_access_path() {
        let indexes = one::<String>(
            "SELECT string_agg(indexdef, E'\\n' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'backfill'",
        );
        for expected in [
            "ON backfill.process_instance USING btree (process_model_identifier, id)",
            "ON backfill.task USING btree (process_instance_id, end_in_seconds DESC NULLS LAST, guid DESC) INCLUDE (json_data_hash) WHERE (state = 'COMPLETED'::text)",
            "ON backfill.task USING btree (process_instance_id)",
            "UNIQUE INDEX process_instance_metadata_process_instance_id_key_key ON backfill.process_instance_metadata USING btree (process_instance_id, key)",
            "ON backfill.job USING btree (id) WHERE (state = ANY (ARRAY['queued'::text, 'running'::text]))",
        ] {
            assert!(indexes.contains(expected), "missing index {expected} in\n{indexes}");
        }
    }

    /// Whether a Sort node of an EXPLAIN (FORMAT JSON) plan sorts rows read from `table`.
    fn sorts_a_table(plan: &serde_json::Value, table: &str) -> bool {
        fn reads(node: &serde_json::Value, table: &str) -> bool {
            node["Relation Name"] == table
                || node["Plans"]
                    .as_array()
                    .is_some_and(|plans| plans.iter().any(|p| reads(p, table)))
        }
        fn walk(node: &serde_json::Value, table: &str) -> bool {
            (node["Node Type"] == "Sort" && reads(node, table))
                || node["Plans"]
                    .as_array()
                    .is_some_and(|plans| plans.iter().any(|p| walk(p, table)))
        }
        plan.as_array()
            .is_some_and(|plans| plans.iter().any(|p| walk(&p["Plan"], table)))
    }

    #[pg_test]
    fn latest_completed_task_lookup_uses_its_index() {
        Spi::run(
            "INSERT INTO backfill.json_data SELECT 'h' || i, jsonb_build_object('n', i) FROM generate_series(1, 50) i;
             -- Documents of other tasks: a table of a size where the batch looks documents up
             -- by index.
             INSERT INTO backfill.json_data SELECT 'x' || i, jsonb_build_object('x', i) FROM generate_series(1, 20000) i;
             INSERT INTO backfill.process_instance (id, process_model_identifier)
                  SELECT i, 'm' || (i % 3) FROM generate_series(1, 5000) i;
             INSERT INTO backfill.task (guid, process_instance_id, state, json_data_hash, end_in_seconds)
                  SELECT gen_random_uuid(), i, CASE WHEN t = 4 THEN 'READY' ELSE 'COMPLETED' END,
                         'h' || (1 + (i * t) % 50), t * 10
                    FROM generate_series(1, 5000) i, generate_series(1, 4) t;
             ANALYZE backfill.process_instance, backfill.task, backfill.json_data;",
        )
        .unwrap();
        // The batch statement itself, each way it inserts: one probe of the partial index per
        // instance, which gives the order (no sort), the document looked up under it with no
        // Memoize node copying every document into a cache no batch hits, and where it skips
        // the rows there, one probe of the metadata table's unique index per instance.
        let tables = crate::pg::tables::Tables::of_schema(
            Spi::get_one::<pg_sys::Oid>("SELECT 'backfill'::regnamespace::oid")
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        use crate::batch::Insert;
        for (n, insert) in [
            Insert::New,
            Insert::Missing,
            Insert::OnConflict,
            Insert::Overwrite,
        ]
        .into_iter()
        .enumerate()
        {
            Spi::run(&format!(
                "PREPARE batch_{n}(bigint[], text[], text[], text[], bigint) AS {}",
                crate::batch::batch_sql(&tables, insert)
            ))
            .unwrap();
            let plan = explain(&format!(
                "EXECUTE batch_{n}(ARRAY[4242, 4243], ARRAY['k'], ARRAY['n'], ARRAY['k'], 0)"
            ));
            assert!(plan.contains("task_latest_completed_idx"), "{plan}");
            // (From PostgreSQL 16 the count(DISTINCT …) of the written rows has a Sort node of
            // its own, which sorts the batch's few rows, not tasks.)
            assert!(
                !sorts_a_table(&serde_json::from_str(&plan).unwrap(), "task"),
                "the index gives the order: {plan}"
            );
            assert!(!plan.contains("Memoize"), "{insert:?}: {plan}");
            assert_eq!(
                plan.contains(
                    "\"Index Name\":\"process_instance_metadata_process_instance_id_key_key\""
                ),
                insert == Insert::Missing,
                "{insert:?}: {plan}"
            );
            assert_eq!(
                plan.contains("\"Conflict Resolution\""),
                matches!(insert, Insert::OnConflict | Insert::Overwrite),
                "{insert:?}: {plan}"
            );
        }
        // latest_task_data agrees: latest completed is t = 3 (end 30), data n = 1 + (4242*3) % 50.
        assert_eq!(
            one::<String>("SELECT backfill.latest_task_data(4242)::text"),
            "{\"n\": 27}"
        );
        assert_eq!(
            one::<String>("SELECT backfill.latest_task_data(-1)::text"),
            "{}"
        );
        let walk = explain(
            "SELECT id FROM backfill.process_instance
              WHERE process_model_identifier = 'm1' AND id > 100 ORDER BY id LIMIT 100",
        );
        assert!(walk.contains("process_instance_model_id_idx"), "{walk}");
    }

    #[pg_test]
    fn user_tables_are_dumped() {
        let dumped = one::<String>(
            "SELECT string_agg(c.relname, ',' ORDER BY c.relname)
               FROM pg_extension e, unnest(e.extconfig) AS cfg(oid)
               JOIN pg_class c ON c.oid = cfg.oid
              WHERE e.extname = 'backfill'",
        );
        assert_eq!(
            dumped,
            "attachment,coverage_count,job,job_id_seq,json_data,process_instance,process_instance_id_seq,\
             process_instance_metadata,process_instance_metadata_id_seq,process_model,task"
        );
    }
}
