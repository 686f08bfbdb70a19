//! Queuing, watching and cancelling jobs, and what says whether a worker will run them.

use crate::batch::coverage;
use crate::extract::paths::MetadataPath;
use crate::job::{self, store, JobPath, JobState, Origin};
use crate::pg::error::{self, invalid_parameter, report_with_hint, require_primary, required};
use crate::pg::query;
use crate::pg::tables::{Table, Tables};
use crate::pg::version;
use crate::shmem;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Queues a manual backfill of `keys` (NULL: all) of the model's current paths. With
/// `overwrite`, existing rows of those keys are replaced; otherwise only missing ones are
/// filled.
#[pg_extern(volatile)]
fn enqueue(
    process_model_identifier: Option<&str>,
    keys: default!(Option<Vec<Option<String>>>, "NULL"),
    overwrite: default!(Option<bool>, false),
    not_before: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> i64 {
    const ENQUEUE: &str = "backfill.enqueue";
    version::require_current_objects();
    require_primary(ENQUEUE);
    let process_model_identifier = required(
        process_model_identifier,
        ENQUEUE,
        "process_model_identifier",
    );
    let overwrite = required(overwrite, ENQUEUE, "overwrite");
    // -infinity holds nothing back; infinity would hold the job for ever.
    let not_before = not_before.filter(|time| !time.is_neg_infinity());
    if not_before.is_some_and(|time| time.is_infinity()) {
        error::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "backfill.enqueue: not_before must be a point in time, not infinity".to_owned(),
            "Pass NULL to let the job start at once, or a time; a job that is not to run is not queued (or is cancelled).",
        );
    }
    let keys: Option<Vec<String>> = keys.map(|keys| {
        keys.into_iter()
            .map(|key| required(key, ENQUEUE, "an element of keys"))
            .collect()
    });
    let paths = job::valid_paths(&job::paths_of_model(process_model_identifier));
    let chosen: Vec<&MetadataPath> = match keys {
        None => paths.iter().collect(),
        Some(keys) => {
            let mut chosen: Vec<&MetadataPath> = Vec::new();
            for key in keys {
                let Some(p) = paths.iter().find(|p| p.key == key) else {
                    let known: Vec<&str> = paths.iter().map(|p| p.key.as_str()).collect();
                    invalid_parameter(&format!(
                        "process model \"{process_model_identifier}\" has no metadata extraction path with key \"{key}\" \
                         (its keys: {})",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ));
                };
                if !chosen.iter().any(|c| c.key == key) {
                    chosen.push(p);
                }
            }
            chosen
        }
    };
    let chosen: Vec<JobPath> = chosen
        .into_iter()
        .map(|p| JobPath::new(p, overwrite))
        .collect();
    if chosen.is_empty() {
        invalid_parameter(&format!(
            "process model \"{process_model_identifier}\" has no metadata extraction paths to backfill"
        ));
    }
    let held = not_before
        .map(|not_before| format!("; no worker starts it before {not_before}"))
        .unwrap_or_default();
    let job_id = job::queue_job(process_model_identifier, &chosen, Origin::Manual, &held);
    if let Some(not_before) = not_before {
        store::hold(job_id, not_before);
    }
    job_id
}

/// When backfill.active_hours next lets workers start batches: NULL while it does (or is
/// empty). The progress view shows it for the jobs it holds back.
#[pg_extern(stable)]
pub(crate) fn window_opens_at() -> Option<TimestampWithTimeZone> {
    let seconds = job::window_closed_for()?;
    // Windows open on the minute; the time of day was read to the second.
    query::optional_value::<TimestampWithTimeZone>(
        "SELECT date_trunc('minute', now() + make_interval(secs => $1) + interval '30 s')",
        &[f64::from(seconds).into()],
    )
}

/// Counts, exactly and now, the coverage of the current keys of `process_model_identifier`
/// (NULL: of every model with paths) with the caller's privileges, and records it for the
/// coverage view; the number of keys counted.
#[pg_extern(volatile)]
fn count_coverage(process_model_identifier: default!(Option<&str>, "NULL")) -> i64 {
    version::require_current_objects();
    require_primary("backfill.count_coverage");
    let models = job::models(process_model_identifier);
    // Counted with the privileges reading the tables has for the caller (its own, or their
    // owner's), and recorded as that role's count.
    let (tables, role) = Tables::current_for_caller(&[Table::Instances, Table::Metadata]);
    models
        .into_iter()
        .map(|(model, paths)| {
            let keys: Vec<String> = crate::extract::paths::parse_paths_lenient(&paths)
                .into_iter()
                .map(|p| p.key)
                .collect();
            if keys.is_empty() {
                return 0;
            }
            coverage::count_and_record(&model, &keys, &tables, role).len() as i64
        })
        .sum()
}

/// True when this database's configuration lets the worker run its jobs; otherwise a WARNING
/// says what to change. CREATE EXTENSION calls it.
#[pg_extern(volatile)]
fn check_worker() -> bool {
    let behind = match version::objects() {
        version::Objects::Other { message, hint } => Some((message, hint)),
        version::Objects::None | version::Objects::Current => None,
    };
    match behind.or_else(shmem::problem) {
        None => true,
        Some((message, hint)) => {
            report_with_hint(
                PgLogLevel::WARNING,
                PgSqlErrorCode::ERRCODE_WARNING,
                message,
                hint,
            );
            false
        }
    }
}

/// The pid of the worker serving this database, NULL when none is running.
#[pg_extern(volatile)]
fn worker_pid() -> Option<i32> {
    shmem::serving_pid()
}

/// Stops a queued or running job at its next batch boundary. False when it had already ended.
#[pg_extern(volatile)]
fn cancel(job_id: Option<i64>) -> bool {
    version::require_current_objects();
    require_primary("backfill.cancel");
    job::cancel(required(job_id, "backfill.cancel", "job_id"))
}

/// Waits until the job is no longer queued or running (and, when it succeeded, until the
/// coverage of its keys is counted) and returns its state; after `timeout` returns the state
/// it is in then (the coverage view's count_pending says whether a count is still to come).
#[pg_extern(volatile)]
fn wait(job_id: Option<i64>, timeout: default!(Option<Interval>, "'60 s'")) -> String {
    version::require_current_objects();
    let job_id = required(job_id, "backfill.wait", "job_id");
    let timeout = required(timeout, "backfill.wait", "timeout");
    // SAFETY: reading the isolation level of the current transaction.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        error::raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "backfill.wait needs READ COMMITTED: in this transaction's snapshot the job never changes".into(),
            "Call it outside an explicit REPEATABLE READ or SERIALIZABLE transaction.",
        );
    }
    let timeout = Duration::from_micros(timeout.as_micros().clamp(0, i64::MAX as i128) as u64);
    let deadline = Instant::now() + timeout;
    loop {
        let state = store::state_of(job_id).unwrap_or_else(|| job::no_such_job(job_id));
        // A job that succeeded has ended once the coverage of its keys is counted too: a
        // script reads backfill.coverage next.
        let owes_count = state == JobState::Succeeded && store::coverage_owed(job_id) == Some(true);
        if (!state.is_unfinished() && !owes_count) || Instant::now() >= deadline {
            return state.as_str().to_owned();
        }
        shmem::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

pub(super) const WAIT_POLL: Duration = Duration::from_millis(50);
