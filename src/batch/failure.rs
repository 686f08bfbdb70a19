//! What a batch's failure means: the instance's data, a lock to wait out, or the end of the job.

use crate::job::store::LockedJob as Job;
use crate::pg::subxact::{in_subtransaction, Failure};
use pgrx::prelude::*;

/// Errors caused by one instance's data (bad values, constraint or trigger failures raised for
/// that row); anything else is a failure of the batch as a whole.
/// Program limits (class 54) count among them: a document too deep for JSONPath, a value too
/// big for a row; so does out_of_memory (53200): a document that takes more memory than the
/// process may have (a container's limit) fails again alone, and is that instance's error.
pub(crate) fn is_instance_failure(failure: &Failure) -> bool {
    matches!(
        &failure.sqlstate[..2],
        "22" | "23" | "P0" | "2F" | "38" | "39" | "54"
    ) || failure.sqlstate == "53200"
}

/// Failures that a retry cannot cure: the job's role lacks a privilege (42501), or a table,
/// column or schema the job needs is gone (class 42, 3F000). The job fails at once, saying why.
pub(super) fn is_permanent(failure: &Failure) -> bool {
    failure.sqlstate.starts_with("42") || failure.sqlstate.starts_with("3F")
}

/// A lock wait that timed out (lock_timeout, or the worker's bound on it).
pub(super) fn is_lock_timeout(failure: &Failure) -> bool {
    failure.sqlstate == "55P03"
}

/// A Citus node could not be reached (class 08, connection exception; or, when the loss shows
/// at the commit, Citus's own error, which has no SQLSTATE of its own): the job waits for it
/// rather than spending its attempts (a node restarts in longer than they last).
pub(crate) fn is_node_unreachable(failure: &Failure) -> bool {
    failure.sqlstate.starts_with("08")
        || failure
            .message
            .starts_with("failure on connection marked as essential")
}

/// What a worker waits out, for its log: a lock someone holds, or a node that is down.
pub(super) fn waits_out(job: &Job, failure: &Failure) -> Option<String> {
    if is_lock_timeout(failure) {
        Some(waiting_for(job, failure))
    } else if is_node_unreachable(failure) {
        Some(format!("{} waits for a node: {failure}", job.label()))
    } else {
        None
    }
}

/// "job 7 waits for a lock: ..." after `failure` (a lock wait of the job's that timed out),
/// with what is in the way on the job's four tables: the sessions holding a lock that
/// conflicts with one a batch takes (ROW EXCLUSIVE on the metadata table, ROW SHARE or
/// ACCESS SHARE on the others), and those whose request for one is queued ahead (a queued
/// ACCESS EXCLUSIVE, say of a VACUUM FULL waiting for the batch in flight, stops every later
/// lock). Without either, a row someone holds locked is in the way (pg_locks shows no row
/// locks): the sessions other than backfill's workers that hold the table locks a row lock
/// comes with, the oldest transaction first.
pub(super) fn waiting_for(job: &Job, failure: &Failure) -> String {
    const IN_THE_WAY: &str = "
WITH locks AS (
    SELECT l.pid, l.mode, l.granted, l.relation::regclass::text AS relation, a.xact_start,
           a.backend_type,
           l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
               AS conflicting
      FROM pg_catalog.pg_locks l
      JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'relation' AND l.pid <> pg_catalog.pg_backend_pid()
       -- Relation OIDs repeat across databases (cloned from one template).
       AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                          WHERE d.datname = pg_catalog.current_database())
       AND l.relation IN (SELECT c.oid FROM pg_catalog.pg_class c
                           WHERE c.relnamespace = $1
                             AND c.relname IN ('process_instance', 'task', 'json_data',
                                               'process_instance_metadata'))),
named AS (
    SELECT *, pg_catalog.format('process %s (%s on %s)', pid, mode, relation) AS name
      FROM locks
     WHERE conflicting
        OR (NOT EXISTS (SELECT FROM locks WHERE conflicting)
            AND granted AND mode IN ('RowShareLock', 'RowExclusiveLock')
            AND backend_type IS DISTINCT FROM 'backfill worker'))
SELECT pg_catalog.concat_ws('; ',
           'held by ' || pg_catalog.string_agg(name, ', ' ORDER BY xact_start, pid, relation)
                             FILTER (WHERE granted),
           'requested first by ' || pg_catalog.string_agg(name, ', ' ORDER BY xact_start, pid, relation)
                                         FILTER (WHERE NOT granted))
  FROM named";
    // pg_stat_activity reads a copy of the backend status array kept to the end of the
    // transaction, and the worker may have copied it before this transaction began (outside
    // any, it lasts until the next one ends): without a fresh copy a session that connected
    // since (the one holding the lock) would be missing.
    // SAFETY: drops this backend's copies of the statistics, as pg_stat_clear_snapshot() does.
    unsafe { pg_sys::pgstat_clear_snapshot() };
    let in_the_way = caught_unless_interrupt(|| {
        crate::pg::query::optional_value::<String>(IN_THE_WAY, &[job.tables_schema.into()])
    })
    .ok()
    .flatten()
    .filter(|found| !found.is_empty())
    .map_or(String::new(), |found| format!("; {found}"));
    format!("{} waits for a lock: {failure}{in_the_way}", job.label())
}

/// `in_subtransaction`, except that a cancel or shutdown request is never swallowed.
pub(super) fn caught_unless_interrupt<R>(work: impl FnOnce() -> R) -> Result<R, Failure> {
    in_subtransaction(work).map_err(|failure| {
        if failure.sqlstate.starts_with("57") {
            failure.rethrow();
        }
        failure
    })
}
