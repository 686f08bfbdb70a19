//! Jobs waiting out a lock someone holds: tried again after a pause, and said in the log
//! once a minute.

use crate::shmem::WORKER_TYPE as BACKEND_TYPE;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Jobs waiting out a lock someone holds (`Batch::Blocked`, `Begin::Blocked`): the worker goes
/// on with other jobs, tries each again LOCK_RETRY later (each try waits for the lock for as
/// long as the worker's lock waits are bounded, 10 s unless lock_timeout says), and the log
/// says what it waits for once a minute.
#[derive(Default)]
pub(super) struct LockWaits {
    pub(super) jobs: HashMap<i64, LockWait>,
}

pub(super) struct LockWait {
    pub(super) since: Instant,
    pub(super) retry_at: Instant,
    pub(super) said_at: Option<Instant>,
}

/// How soon a job found waiting for a lock is tried again (other jobs go first).
pub(super) const LOCK_RETRY: Duration = Duration::from_secs(1);

/// How often the log says again that a job waits for a lock.
pub(super) const LOCK_SAY_EVERY: Duration = Duration::from_secs(60);

impl LockWaits {
    /// `job_id` waits for a lock (`why`, from the engine): tried again later.
    pub(super) fn blocked(&mut self, job_id: i64, why: &str) {
        let now = Instant::now();
        let wait = self.jobs.entry(job_id).or_insert(LockWait {
            since: now,
            retry_at: now,
            said_at: None,
        });
        wait.retry_at = now + LOCK_RETRY;
        if wait.said_at.is_none_or(|at| at.elapsed() >= LOCK_SAY_EVERY) {
            log!("{BACKEND_TYPE}: {why} (tried again every second)");
            wait.said_at = Some(now);
        }
    }

    /// The jobs not to try before their time.
    pub(super) fn waiting(&self) -> Vec<i64> {
        let now = Instant::now();
        self.jobs
            .iter()
            .filter(|(_, wait)| wait.retry_at > now)
            .map(|(&job_id, _)| job_id)
            .collect()
    }

    /// `job_id` ran a batch (or ended): it waits no more.
    pub(super) fn went_on(&mut self, job_id: i64) {
        if let Some(wait) = self.jobs.remove(&job_id) {
            if wait.said_at.is_some() {
                log!(
                    "{BACKEND_TYPE}: job {job_id} goes on after waiting {} s",
                    wait.since.elapsed().as_secs()
                );
            }
        }
    }
}
