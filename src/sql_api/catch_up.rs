//! Catch-up: instances that predate their model's keys. A model that arrives with paths (an
//! INSERT, a first sync on a deployment years old) while it has instances, or any model on
//! demand, gets a job that fills every (instance, key) without a row from the latest completed
//! task. Overwrite is off: the rows the live engine wrote stay as they are, and what the job
//! adds is what SpiffWorkflow's own backfill would have added.

use crate::batch::coverage;
use crate::extract::paths::MetadataPath;
use crate::job::{self, JobPath, Origin};
use crate::pg::error::{invalid_parameter, require_primary};
use crate::pg::subxact::in_subtransaction;
use crate::pg::tables::{Table, Tables};
use crate::pg::version;
use pgrx::prelude::*;

/// Queues the catch-up of `model` for every one of `paths` (none: nothing to do), unless the
/// model has no instance; the job's id. Never fails the statement that inserted the model
/// over the instance table: when it cannot be read (refused to this role, dropped), the job is
/// queued, and it says at its start what is wrong, as the WARNING of its queuing does.
pub(crate) fn queue(model: &str, paths: &[MetadataPath], origin: Origin) -> Option<i64> {
    if paths.is_empty() || !may_have_instances(model) {
        return None;
    }
    let fill: Vec<JobPath> = paths.iter().map(|p| JobPath::new(p, false)).collect();
    Some(job::queue_job(
        model,
        &fill,
        origin,
        " (catch-up: instances without a row for a key get one)",
    ))
}

/// False only when the instance table, read as the caller reads it, has no instance of `model`.
fn may_have_instances(model: &str) -> bool {
    let looked = in_subtransaction(|| {
        Tables::for_caller(&[Table::Instances])
            .map(|(tables, reader)| coverage::has_instances(model, &tables, reader))
    });
    !matches!(looked, Ok(Ok(false)))
}

/// Queues a catch-up job for `process_model_identifier` (NULL: for every model with paths)
/// that has instances: every (instance, key) of its current paths without a row gets one,
/// existing rows are kept. One row per job queued.
#[pg_extern(volatile)]
fn catch_up(
    process_model_identifier: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(model, String), name!(job_id, i64))> {
    version::require_current_objects();
    require_primary("backfill.catch_up");
    let mut queued = Vec::new();
    for (model, paths) in job::models(process_model_identifier) {
        let paths = job::valid_paths(&paths);
        if paths.is_empty() && process_model_identifier.is_some() {
            invalid_parameter(&format!(
                "process model \"{model}\" has no metadata extraction paths to backfill"
            ));
        }
        if let Some(job_id) = queue(&model, &paths, Origin::Manual) {
            queued.push((model, job_id));
        }
    }
    if queued.is_empty() {
        notice!(
            "backfill: no catch-up job queued: {}",
            match process_model_identifier {
                Some(model) => format!("process model \"{model}\" has no instances"),
                None => "no process model has both paths and instances".to_owned(),
            }
        );
    }
    TableIterator::new(queued)
}
