//! Jobs queued, run and cancelled on behalf of a role: who may act on a job, and the warning
//! a queuing statement gets when its job cannot run.

use super::path::{JobPath, Origin};
use super::store;
use crate::pg::error::{invalid_parameter, raise, report_with_hint};
use crate::pg::privilege;
use crate::pg::subxact::in_subtransaction;
use crate::pg::tables::{self, Tables};
use pgrx::pg_sys::Oid;
use pgrx::prelude::*;

/// Inserts a queued job in the current transaction and returns its id. The job will run with
/// the privileges of the current role, which is recorded with it.
fn insert_job(model: &str, paths: &[JobPath], origin: Origin) -> i64 {
    let role = privilege::current_role();
    let id = store::insert(model, paths, origin, role);
    warn_if_refused(id, role);
    id
}

/// `insert_job`, then what every statement that queues a job says: a NOTICE naming the job and
/// its keys (followed by `more`), and a WARNING when no worker will run it.
pub fn queue_job(model: &str, paths: &[JobPath], origin: Origin, more: &str) -> i64 {
    let id = insert_job(model, paths, origin);
    notice!(
        "backfill job {id} queued for {model}: {}{more}",
        JobPath::describe(paths)
    );
    crate::shmem::warn_if_no_worker(id);
    id
}

/// Warns, without failing the statement that queued it (an application's model update), when
/// the tables the job `id` will use are unusable or refused to `role` (`Tables::reader`): the
/// job will fail at its start, saying the same. (What this process remembers of the tables
/// is enough for a warning, and spares each model update a look at the catalogs.)
fn warn_if_refused(id: i64, role: Oid) {
    let problem = in_subtransaction(|| {
        Tables::remembered(tables::current_schema()).and_then(|tables| tables.reader(role))
    });
    // A look at the catalogs that failed says nothing about the job.
    if let Ok(Err(unusable)) = problem {
        report_with_hint(
            PgLogLevel::WARNING,
            unusable.code,
            format!("backfill job {id} will fail: {}", unusable.message),
            unusable.hint,
        );
    }
}

/// The role a job runs as; ERROR 22023 when there is no such job.
fn role_of(job_id: i64) -> Oid {
    store::role_of(job_id).unwrap_or_else(|| no_such_job(job_id))
}

/// Raises 42501 unless the current role may run or cancel the job (it has the privileges of
/// the role that queued it).
pub fn check_acts_for(job_id: i64, what: &str) {
    let role = role_of(job_id);
    if !privilege::acts_for(role) {
        let name = privilege::role_name(role);
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to {what} backfill job {job_id}: it runs as role \"{name}\""
            ),
            format!(
                "Only that role, its members and superusers may {what} it (GRANT {name} TO ...)."
            ),
        );
    }
}

/// Marks a queued or running job cancelled; a runner stops at its next batch boundary.
pub fn cancel(job_id: i64) -> bool {
    check_acts_for(job_id, "cancel");
    let cancelled = store::cancel(job_id);
    if cancelled {
        log!("backfill: job {job_id} cancelled");
    }
    cancelled
}

/// Raises ERROR 22023 for a job id that is not in `backfill.job`.
pub fn no_such_job(job_id: i64) -> ! {
    invalid_parameter(&format!("backfill job {job_id} does not exist"))
}
