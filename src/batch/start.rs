//! A job taken and started: the run lock, the first start's count and split into parts, a
//! resume from the cursor; and the job let go.

use super::failure::{caught_unless_interrupt, is_permanent, waits_out};
use super::finish::{fail_job, LAST_PROGRESS_LOG};
use super::job_row::Lookup;
use super::runner::Begin;
use super::runner::Runner;
use super::tables::usable_tables;
use crate::job::store::{self, LockedJob as Job};
use crate::job::{self, Claim, JobPath, JobState};
use crate::pg::privilege::{self, as_role};
use crate::pg::settings;
use crate::pg::subxact::Failure;
use crate::pg::tables::{Table, Tables};
use pgrx::prelude::*;
use std::time::Instant;

/// Takes a job for this process and marks it running. A job that starts for the first time
/// fixes its bounds: the instances of its model with `id <= max(id)` now. A failed or
/// cancelled job is resumed only when the runner says so.
pub fn begin(job_id: i64, runner: Runner) -> Begin {
    match job::claim(job_id) {
        Claim::Acquired => {}
        Claim::HeldBy(pid) => return Begin::Busy(pid),
    }
    let begun = start_claimed(job_id, runner);
    if begun != Begin::Started {
        job::release_claim(job_id);
    }
    begun
}

/// `begin` once this process holds the job's run lock.
pub(super) fn start_claimed(job_id: i64, runner: Runner) -> Begin {
    let job = match Job::lock(job_id, runner) {
        Lookup::Found(job) => job,
        Lookup::Locked => return Begin::Busy(None),
        Lookup::Missing => {
            job::release_claim(job_id);
            job::no_such_job(job_id);
        }
    };
    let runnable = job.state.is_unfinished() || (job.state.is_stopped() && runner.resume_stopped);
    if !runnable {
        return Begin::NotRunnable(job.state);
    }
    if let Some(parts) = job.parts {
        return Begin::Split(parts);
    }
    if !runner.resume_stopped && job.stopped_with_its_job() {
        return Begin::NotRunnable(JobState::Cancelled);
    }
    if !privilege::role_exists(job.role) {
        return failed_at_start(
            job_id,
            &format!(
                "role {} that queued the job no longer exists",
                job.role.to_u32()
            ),
        );
    }
    // The start reads only the instances (to count them).
    let (tables, role) = match usable_tables(job.tables_schema, job.role, &[Table::Instances], None)
    {
        Ok(usable) => usable,
        Err(failure) => return not_started(&job, runner, failure),
    };
    let keys = JobPath::describe(&job.paths);
    if job.total.is_none() {
        // Counted as the job's role: instances it cannot see (row-level security) are not
        // part of its job.
        let counted =
            caught_unless_interrupt(|| as_role(role, || count_instances(&job, &tables, runner)));
        let counted = match counted {
            Ok(counted) => counted.unwrap_or_else(|e| {
                error!("backfill: could not count instances of job {job_id}: {e}")
            }),
            // The role may not read the instances at all: nothing to retry.
            Err(failure) => return not_started(&job, runner, failure),
        };
        let Counted { total, max_id, .. } = counted;
        let parts = counted.parts();
        let started = format!(
            "backfill: job {job_id} started for model {}: keys {keys}; {total} instances{} in schema {}, as role {}",
            job.model,
            max_id.map(|m| format!(" up to id {m}")).unwrap_or_default(),
            tables.schema_sql,
            privilege::role_name(role)
        );
        if parts.len() > 1 {
            let uppers: Vec<i64> = parts.iter().map(|p| p.0).collect();
            let totals: Vec<i64> = parts.iter().map(|p| p.1).collect();
            store::split(job_id, total, max_id, uppers, totals);
            log!(
                "{started}; split into {} parts of {} instances",
                parts.len(),
                parts
                    .iter()
                    .map(|p| p.1.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Begin::Split(parts.len() as i32);
        }
        store::start(job_id, total, max_id);
        log!("{started}");
    } else {
        store::resume(job_id);
        if job.parent.is_some() && job.processed == 0 {
            log!(
                "backfill: {} started: {} instances {}up to id {}",
                job.label(),
                job.total.unwrap_or(0),
                job.cursor
                    .map_or(String::new(), |c| format!("after id {c} ")),
                job.max_instance_id.unwrap_or(0)
            );
            LAST_PROGRESS_LOG.set(Some(Instant::now()));
            return Begin::Started;
        }
        log!(
            "backfill: {} resumed for model {}: keys {keys}; {} of {} instances done, cursor at {}",
            job.label(),
            job.model,
            job.processed,
            job.total.unwrap_or(0),
            job.cursor
                .map_or("the start".to_owned(), |c| format!("instance {c}"))
        );
    }
    LAST_PROGRESS_LOG.set(Some(Instant::now()));
    Begin::Started
}

/// A job that cannot start (its role is gone, or may not read the instances): failed, with
/// the reason, and nothing to run.
/// A start that failed: a failure no retry mends (the role may not read the tables) fails
/// the job, a worker waits out a lock, and anything else is raised again.
pub(super) fn not_started(job: &Job, runner: Runner, failure: Failure) -> Begin {
    if is_permanent(&failure) {
        warning!("backfill: job {} failed: {failure}", job.id);
        return failed_at_start(job.id, &failure.with_hint());
    }
    if runner.wait_out_locks {
        if let Some(why) = waits_out(job, &failure) {
            return Begin::Blocked(why);
        }
    }
    failure.rethrow()
}

pub(super) fn failed_at_start(job_id: i64, message: &str) -> Begin {
    fail_job(job_id, message);
    Begin::NotRunnable(JobState::Failed)
}

/// What a job's first start found: its instances, the greatest id, and where to split it.
pub(super) struct Counted {
    pub(super) total: i64,
    pub(super) max_id: Option<i64>,
    /// The id at the end of each part but the last (empty: not split).
    pub(super) splits: Vec<i64>,
}

impl Counted {
    /// Each part's last id and instance count, in id order; one part when the job is whole.
    /// Part k of n ends at position floor(total * k / n) in id order (what count_instances
    /// looked up), so the counts are exact and differ by at most one.
    pub(super) fn parts(&self) -> Vec<(i64, i64)> {
        let n = self.splits.len() as i64 + 1;
        let Some(max_id) = self.max_id else {
            return Vec::new();
        };
        let end = |k: i64| self.total * k / n;
        self.splits
            .iter()
            .copied()
            .chain(std::iter::once(max_id))
            .enumerate()
            .map(|(k, upper)| (upper, end(k as i64 + 1) - end(k as i64)))
            .collect()
    }
}

/// Instances of a job (not split) or of a part get at least this many batches each.
pub(super) const MIN_BATCHES_PER_PART: i64 = 10;

/// Counts the job's instances and, when the runner splits jobs and there are enough, finds
/// the ids where its parts end, in one statement (one snapshot: the counts are exact).
pub(super) fn count_instances(
    job: &Job,
    tables: &Tables,
    runner: Runner,
) -> Result<Counted, pgrx::spi::Error> {
    let instances = tables.sql_name("process_instance");
    let sql = format!(
        "WITH counted AS (
             SELECT count(*) AS total, max(i.id)::bigint AS max_id,
                    least($2, greatest(count(*) / $3, 1)) AS parts
               FROM {instances} i WHERE i.process_model_identifier = $1)
         SELECT total, max_id,
                CASE WHEN parts > 1 THEN ARRAY(
                    SELECT s.id FROM (SELECT i.id::bigint AS id, row_number() OVER (ORDER BY i.id) AS position
                                        FROM {instances} i WHERE i.process_model_identifier = $1) s
                     WHERE s.position IN (SELECT counted.total * k / counted.parts
                                            FROM generate_series(1, counted.parts - 1) k)
                     ORDER BY s.id) END
           FROM counted"
    );
    let min_part = settings::batch_size().saturating_mul(MIN_BATCHES_PER_PART);
    Spi::connect(|client| {
        let row = client
            .select(
                &sql,
                Some(1),
                &[
                    job.model.as_str().into(),
                    (runner.split_into.max(1) as i64).into(),
                    min_part.into(),
                ],
            )?
            .first();
        Ok(Counted {
            total: row.get::<i64>(1)?.unwrap_or(0),
            max_id: row.get::<i64>(2)?,
            splits: row.get::<Vec<i64>>(3)?.unwrap_or_default(),
        })
    })
}

/// Gives up this process's hold on the job (it stays in whatever state it is).
pub fn end(job_id: i64) {
    job::release_claim(job_id);
}

#[cfg(test)]
mod tests {
    use super::Counted;

    fn parts(total: i64, max_id: Option<i64>, splits: &[i64]) -> Vec<(i64, i64)> {
        Counted {
            total,
            max_id,
            splits: splits.to_vec(),
        }
        .parts()
    }

    #[test]
    fn parts_end_where_the_split_ids_are_and_count_every_instance_once() {
        // Whole, and nothing at all.
        assert_eq!(parts(5, Some(9), &[]), [(9, 5)]);
        assert_eq!(parts(0, None, &[]), []);
        // Two parts of 10: the first ends at the 5th id.
        assert_eq!(parts(10, Some(40), &[17]), [(17, 5), (40, 5)]);
        // Three of 7 end at positions 2, 4 and 7.
        assert_eq!(parts(7, Some(9), &[3, 6]), [(3, 2), (6, 2), (9, 3)]);
        let many = parts(1_000_003, Some(2_000_000), &[1, 2, 3, 4]);
        assert_eq!(many.iter().map(|p| p.1).sum::<i64>(), 1_000_003);
        assert!(many.iter().all(|p| p.1 == 200_000 || p.1 == 200_001));
    }
}
