//! Why no worker will run this database's jobs, told to the session that asks or queues one.

use super::registry::{launcher_pid, preloaded, REGISTRY};
use crate::pg::error::report_with_hint;
use crate::pg::settings::{self};
use pgrx::prelude::*;
use std::sync::atomic::Ordering;

/// Why no worker will run jobs queued in this database, as (message, hint); `None` when one
/// will: configured, and the launcher running right now.
pub fn problem() -> Option<(String, String)> {
    // SAFETY: reads a flag in shared memory, as any backend may.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Some((
            "this server is a hot standby: backfill jobs run on the primary".into(),
            "Queue and run jobs on the primary; here backfill.progress shows them as the primary's progress replays."
                .into(),
        ));
    }
    if !preloaded() {
        return Some((
            "backfill is not in shared_preload_libraries, so no background worker runs backfill jobs".into(),
            "Add shared_preload_libraries = 'backfill' to postgresql.conf and restart PostgreSQL; \
             until then, run a queued job with CALL backfill.run(job_id)."
                .into(),
        ));
    }
    if settings::max_workers() == 0 {
        return Some((
            "backfill.max_workers is 0, so no background worker runs backfill jobs".into(),
            "Set backfill.max_workers in postgresql.conf and restart PostgreSQL, \
             or run jobs with CALL backfill.run(job_id)."
                .into(),
        ));
    }
    if REGISTRY.get().no_process.load(Ordering::SeqCst) {
        // SAFETY: a postmaster setting's variable.
        let processes = unsafe { pg_sys::max_worker_processes };
        return Some((
            format!(
                "the backfill launcher could not start a worker: no free background worker process (max_worker_processes = {processes})"
            ),
            "Raise max_worker_processes to leave room for the launcher and backfill.max_workers workers, plus what parallel queries and other extensions use, and restart PostgreSQL; jobs wait until a process is free."
                .into(),
        ));
    }
    if launcher_pid().is_none() {
        return Some((
            "the backfill launcher is not running right now".into(),
            "The server log says why (look for \"backfill launcher\"); the job stays queued, \
             and CALL backfill.run(job_id) runs it in your session."
                .into(),
        ));
    }
    None
}

/// Warns when no worker will pick up the job just queued.
pub fn warn_if_no_worker(job_id: i64) {
    if let Some((message, hint)) = problem() {
        report_with_hint(
            PgLogLevel::WARNING,
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("backfill job {job_id} will wait: {message}"),
            hint,
        );
    }
}
