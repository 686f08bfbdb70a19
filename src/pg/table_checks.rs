//! What `backfill.attach` checks of the tables beyond their shape: that the caller owns them,
//! that the metadata table has the unique key a batch's conflict target needs, and which
//! lookups lack an index.

use crate::pg::query;
use crate::pg::tables::{Tables, Unusable};
use pgrx::pg_sys::Oid;
use pgrx::prelude::*;

impl Tables {
    /// Why the current role may not attach these tables: it must own each of them (or be a
    /// member of the owner's role, or a superuser).
    pub fn owner_problem(&self) -> Option<Unusable> {
        let not_owned = query::optional_value::<String>(
            "SELECT c.oid::regclass::text FROM pg_catalog.pg_class c
              WHERE c.oid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[])
                AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')
              ORDER BY 1 LIMIT 1",
            &[self.relations().into()],
        )?;
        Some(Unusable {
            code: PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            message: format!("must be owner of table {not_owned} to attach it"),
            hint: "Attach as the role that owns the application's tables, or as a superuser."
                .into(),
        })
    }

    /// Why rows cannot be written with ON CONFLICT (process_instance_id, key): no unique index
    /// on exactly those columns.
    pub fn conflict_target_problem(&self) -> Option<Unusable> {
        let found = query::optional_value::<String>(
            "SELECT 'found' FROM pg_catalog.pg_index i
              WHERE i.indrelid OPERATOR(pg_catalog.=) ($1)[4]::pg_catalog.oid AND i.indisunique AND i.indimmediate
                AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
                AND i.indnkeyatts OPERATOR(pg_catalog.=) 2
                AND (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attname)
                       FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid OPERATOR(pg_catalog.=) i.indrelid
                        AND a.attnum OPERATOR(pg_catalog.=) ANY (i.indkey::int2[]))
                    OPERATOR(pg_catalog.=) ARRAY['key', 'process_instance_id']
              LIMIT 1",
            &[self.relations().into()],
        );
        if found.is_some() {
            return None;
        }
        Some(Unusable {
            code: PgSqlErrorCode::ERRCODE_INVALID_COLUMN_REFERENCE,
            message: format!(
                "{} has no unique constraint on (process_instance_id, key)",
                self.sql_name("process_instance_metadata")
            ),
            hint: "Each instance has at most one row per key; backfill relies on the constraint that says so."
                .into(),
        })
    }

    /// `CREATE INDEX CONCURRENTLY` statements for the lookups no index serves: an instance's
    /// latest completed task, and a model's instances in id order.
    pub fn index_advice(&self) -> Vec<String> {
        let served = |relation: Oid, first: &str, second: &str| {
            query::optional_value::<String>(
                "SELECT 'served' FROM pg_catalog.pg_index i
                  WHERE i.indrelid OPERATOR(pg_catalog.=) ($1)[1]::pg_catalog.oid AND i.indisvalid
                    AND i.indnkeyatts OPERATOR(pg_catalog.>=) 2
                    AND i.indkey[0] OPERATOR(pg_catalog.=) (SELECT a.attnum FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attname OPERATOR(pg_catalog.=) ($1)[2]::text)
                    AND i.indkey[1] OPERATOR(pg_catalog.=) (SELECT a.attnum FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attname OPERATOR(pg_catalog.=) ($1)[3]::text)
                  LIMIT 1",
                &[vec![relation.to_u32().to_string(), first.to_owned(), second.to_owned()].into()],
            )
            .is_some()
        };
        let mut advice = Vec::new();
        if !served(self.tasks, "process_instance_id", "end_in_seconds") {
            advice.push(format!(
                "CREATE INDEX CONCURRENTLY backfill_task_latest_completed_idx ON {} \
                 (process_instance_id, end_in_seconds DESC NULLS LAST, guid DESC) \
                 INCLUDE (json_data_hash) WHERE state = 'COMPLETED';",
                self.sql_name("task")
            ));
        }
        if !served(self.instances, "process_model_identifier", "id") {
            advice.push(format!(
                "CREATE INDEX CONCURRENTLY backfill_process_instance_model_id_idx ON {} \
                 (process_model_identifier, id);",
                self.sql_name("process_instance")
            ));
        }
        advice
    }

    fn relations(&self) -> Vec<String> {
        [self.instances, self.tasks, self.data, self.metadata]
            .iter()
            .map(|oid| oid.to_u32().to_string())
            .collect()
    }
}
