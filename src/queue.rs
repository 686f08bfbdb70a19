//! The job queue: `backfill.job` rows, who may run one, and the paths a job fills.

use crate::api::invalid_parameter;
use crate::paths::MetadataPath;
use crate::query::optional_value;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};
use std::cell::Cell;

/// One path a job fills, and whether it replaces rows that already exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobPath {
    pub key: String,
    pub path: String,
    pub overwrite: bool,
}

impl JobPath {
    /// `path` as filled by a job, replacing existing rows or not.
    pub fn new(path: &MetadataPath, overwrite: bool) -> JobPath {
        JobPath {
            key: path.key.clone(),
            path: path.path.clone(),
            overwrite,
        }
    }

    pub fn to_json(paths: &[JobPath]) -> Value {
        Value::Array(
            paths
                .iter()
                .map(|p| json!({"key": p.key, "path": p.path, "overwrite": p.overwrite}))
                .collect(),
        )
    }

    /// Reads `job.paths`; written by this extension, so anything else is corruption.
    pub fn from_json(value: &Value) -> Vec<JobPath> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| JobPath {
                key: p["key"].as_str().unwrap_or_default().to_owned(),
                path: p["path"].as_str().unwrap_or_default().to_owned(),
                overwrite: p["overwrite"].as_bool().unwrap_or(false),
            })
            .collect()
    }

    /// What a change of `metadata_extraction_paths` from `old` to `new` asks for: keys that are
    /// new are filled where missing; keys whose path changed are filled with overwrite (their
    /// values came from the old path); removed or unchanged keys need nothing.
    pub fn changes(old: &[MetadataPath], new: &[MetadataPath]) -> Vec<JobPath> {
        new.iter()
            .filter_map(|n| {
                let overwrite = match old.iter().find(|o| o.key == n.key) {
                    None => false,
                    Some(o) if o.path != n.path => true,
                    Some(_) => return None,
                };
                Some(JobPath::new(n, overwrite))
            })
            .collect()
    }

    /// "invoice_number, customer_id (overwrite)" for log lines and notices.
    pub fn describe(paths: &[JobPath]) -> String {
        paths
            .iter()
            .map(|p| {
                if p.overwrite {
                    format!("{} (overwrite)", p.key)
                } else {
                    p.key.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    ModelUpdate,
    Manual,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::ModelUpdate => "model_update",
            Origin::Manual => "manual",
        }
    }
}

/// Inserts a queued job in the current transaction and returns its id.
pub fn insert_job(model: &str, paths: &[JobPath], origin: Origin) -> i64 {
    let overwrite = paths.iter().any(|p| p.overwrite);
    let id = Spi::get_one_with_args::<i64>(
        "INSERT INTO backfill.job (process_model_identifier, paths, overwrite, origin)
         VALUES ($1, $2, $3, $4) RETURNING id",
        &[
            model.into(),
            JsonB(JobPath::to_json(paths)).into(),
            overwrite.into(),
            origin.as_str().into(),
        ],
    )
    .unwrap_or_else(|e| error!("backfill: could not insert a job: {e}"))
    .expect("INSERT ... RETURNING id returns a row");
    crate::worker::wake_at_commit();
    id
}

/// Marks a queued or running job cancelled; a runner stops at its next batch boundary.
pub fn cancel(job_id: i64) -> bool {
    let cancelled = optional_value::<i64>(
        "UPDATE backfill.job SET state = 'cancelled', finished_at = now()
          WHERE id = $1 AND state IN ('queued', 'running') RETURNING id",
        &[job_id.into()],
    )
    .is_some();
    if cancelled {
        log!("backfill: job {job_id} cancelled");
    } else if state_of(job_id).is_none() {
        no_such_job(job_id);
    }
    cancelled
}

/// Raises ERROR 22023 for a job id that is not in `backfill.job`.
pub fn no_such_job(job_id: i64) -> ! {
    invalid_parameter(&format!("backfill job {job_id} does not exist"))
}

/// The job's state, or `None` when there is no such job.
pub fn state_of(job_id: i64) -> Option<String> {
    optional_value::<String>(
        "SELECT state FROM backfill.job WHERE id = $1",
        &[job_id.into()],
    )
}

// Exclusive running of a job: a session-level advisory lock keyed by the job table's OID and
// the job id. It is released by `release_claim` or, whatever happens, when the process ends,
// so a crashed runner never leaves a job unrunnable.

thread_local! {
    /// The job this process holds the run lock of.
    static CLAIMED: Cell<Option<i64>> = const { Cell::new(None) };
}

const LOCK_KEYS: &str = "'backfill.job'::regclass::oid::int, ($1 % 2147483648)::int";

pub enum Claim {
    Acquired,
    HeldBy(Option<i32>),
}

/// Takes the run lock of `job_id` for this process (once; claiming again is a no-op). A lock
/// on another job left behind by an interrupted run is released first.
pub fn claim(job_id: i64) -> Claim {
    match CLAIMED.get() {
        Some(held) if held == job_id => return Claim::Acquired,
        Some(other) => release_claim(other),
        None => {}
    }
    let acquired = Spi::get_one_with_args::<bool>(
        &format!("SELECT pg_try_advisory_lock({LOCK_KEYS})"),
        &[job_id.into()],
    )
    .unwrap_or_else(|e| error!("backfill: could not lock job {job_id}: {e}"))
    .unwrap_or(false);
    if acquired {
        CLAIMED.set(Some(job_id));
        Claim::Acquired
    } else {
        let holder = optional_value::<i32>(
            "SELECT pid FROM pg_locks
              WHERE locktype = 'advisory' AND granted AND objsubid = 2
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND classid = 'backfill.job'::regclass::oid AND objid = ($1 % 2147483648)::oid",
            &[job_id.into()],
        );
        Claim::HeldBy(holder)
    }
}

pub fn release_claim(job_id: i64) {
    if CLAIMED.get() == Some(job_id) {
        Spi::get_one_with_args::<bool>(
            &format!("SELECT pg_advisory_unlock({LOCK_KEYS})"),
            &[job_id.into()],
        )
        .unwrap_or_else(|e| error!("backfill: could not unlock job {job_id}: {e}"));
        CLAIMED.set(None);
    }
}

pub fn holds_claim(job_id: i64) -> bool {
    CLAIMED.get() == Some(job_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp(key: &str, path: &str) -> MetadataPath {
        MetadataPath {
            key: key.into(),
            path: path.into(),
        }
    }

    fn jp(key: &str, path: &str, overwrite: bool) -> JobPath {
        JobPath {
            key: key.into(),
            path: path.into(),
            overwrite,
        }
    }

    #[test]
    fn changes_between_two_path_lists() {
        let old = [mp("a", "x.a"), mp("b", "x.b"), mp("c", "x.c")];
        let new = [
            mp("b", "y.b"),
            mp("a", "x.a"),
            mp("d", "x.d"),
            mp("e", "$.e"),
        ];
        assert_eq!(
            JobPath::changes(&old, &new),
            [
                jp("b", "y.b", true),
                jp("d", "x.d", false),
                jp("e", "$.e", false)
            ]
        );
        // Removal and reordering ask for nothing.
        assert!(JobPath::changes(&old, &[mp("c", "x.c"), mp("a", "x.a")]).is_empty());
        assert!(JobPath::changes(&old, &[]).is_empty());
    }

    #[test]
    fn job_paths_round_trip_through_json() {
        let paths = [jp("a", "x.a", false), jp("it's", "$.b[0]", true)];
        assert_eq!(JobPath::from_json(&JobPath::to_json(&paths)), paths);
        assert_eq!(JobPath::describe(&paths), "a, it's (overwrite)");
    }
}
