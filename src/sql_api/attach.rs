//! Pointing a database's jobs at SpiffWorkflow's tables, and back.

use crate::job::store;
use crate::pg::error::{self, report_with_hint, require_primary, required};
use crate::pg::privilege;
use crate::pg::query;
use crate::pg::tables::{Table, Tables};
use crate::pg::version;
use pgrx::prelude::*;

/// From now on, jobs of this database read and write the tables of `schema_name` (an
/// application's own, such as SpiffWorkflow's in public) instead of the extension's. The
/// tables are checked first; the caller must own them. NOTICEs give the indexes the backfill's
/// lookups want when none serves them.
#[pg_extern(volatile)]
fn attach(schema_name: Option<&str>) {
    version::require_current_objects();
    require_primary("backfill.attach");
    let name = required(schema_name, "backfill.attach", "schema_name");
    let c_name = std::ffi::CString::new(name).unwrap_or_default();
    // SAFETY: a catalog-cache lookup inside a transaction.
    let schema = unsafe { pg_sys::get_namespace_oid(c_name.as_ptr(), true) };
    if schema == pg_sys::Oid::INVALID {
        error::raise(
            PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
            format!("schema \"{name}\" does not exist"),
            "Name the schema that holds the application's process_instance, task, json_data and process_instance_metadata tables.",
        );
    }
    let tables = Tables::locked(schema, &Table::ALL).unwrap_or_else(|problem| problem.raise());
    if let Some(problem) = tables
        .owner_problem()
        .or_else(|| tables.conflict_target_problem())
    {
        problem.raise();
    }
    // Refused when no role could read them safely (a role that may replace them lacks their
    // owner's privileges).
    if let Err(problem) = tables.reader(privilege::current_role()) {
        problem.raise();
    }
    // Read before the switch: inside it the current role is the job table's owner.
    let attached_by = privilege::current_role();
    privilege::as_job_table_owner(|| {
        Spi::run_with_args(
            "SELECT backfill.attachment_set($1::pg_catalog.regnamespace, $2::pg_catalog.regrole)",
            &[schema.into(), attached_by.into()],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not record the attachment: {e}"));
    for statement in tables.index_advice() {
        report_with_hint(
            PgLogLevel::NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!(
                "no index of {} serves a lookup every batch makes",
                tables.schema_sql
            ),
            format!("Create it while the application runs: {statement}"),
        );
    }
    if let Some(citus) = &tables.citus {
        notice!(
            "backfill: the tables are distributed by Citus ({} shard groups; json_data {}): a batch takes up to backfill.batch_size instances of each shard group, and its rows are read and extracted on the nodes that hold them",
            citus.shard_count,
            citus.data.describe()
        );
    }
    let unfinished = store::unfinished_elsewhere(schema);
    if unfinished > 0 {
        notice!(
            "backfill: {unfinished} queued or running job(s) keep the tables they were queued for; jobs queued from now on use schema {}",
            tables.schema_sql
        );
    }
}

/// Back to the extension's own tables in schema backfill, for jobs queued from now on.
/// Allowed to whoever attached the tables, their owner, or a superuser.
#[pg_extern(volatile)]
fn detach() {
    version::require_current_objects();
    require_primary("backfill.detach");
    let attached = query::optional_value::<pg_sys::Oid>(
        "SELECT attached_by::oid FROM backfill.attachment",
        &[],
    );
    let Some(attached_by) = attached else {
        notice!("backfill: no tables are attached; jobs use those of schema backfill");
        return;
    };
    let owns_tables = query::optional_value::<pg_sys::Oid>(
        "SELECT n.oid FROM backfill.attachment a
           JOIN pg_catalog.pg_namespace n ON n.nspname = a.schema_name",
        &[],
    )
    .and_then(|schema| Tables::of_schema(schema).ok())
    .is_some_and(|tables| tables.owner_problem().is_none());
    if !privilege::acts_for(attached_by) && !owns_tables {
        error::raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "must be the role that attached the tables, their owner or a superuser to detach them"
                .to_owned(),
            format!(
                "They were attached by {}.",
                privilege::role_name(attached_by)
            ),
        );
    }
    privilege::as_job_table_owner(|| Spi::run("SELECT backfill.attachment_clear()"))
        .unwrap_or_else(|e| error!("backfill: could not remove the attachment: {e}"));
}
