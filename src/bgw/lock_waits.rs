//! Jobs waiting out a lock someone holds: tried again after a pause, said in the log once a
//! minute, and, when nothing else of the database can run, without a worker of their own.

use crate::job::{self, store};
use crate::shmem::{self, WORKER_TYPE as BACKEND_TYPE};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Jobs waiting out a lock someone holds (`Batch::Blocked`, `Begin::Blocked`): the worker goes
/// on with other jobs, tries each again LOCK_RETRY later (each try waits for the lock for as
/// long as the worker's lock waits are bounded, 10 s unless lock_timeout says), and the log
/// says what it waits for once a minute (`shmem::lock_wait_to_say`, across processes).
#[derive(Default)]
pub(super) struct LockWaits {
    /// When each job may be tried again.
    pub(super) jobs: HashMap<i64, Instant>,
}

/// How soon a job found waiting for a lock is tried again (other jobs go first).
pub(super) const LOCK_RETRY: Duration = Duration::from_secs(1);

/// How soon the launcher starts a worker again for a database whose worker left because all
/// its jobs waited for locks: a lock held for long is then tried every few seconds, by a
/// worker that is in no other database's way meanwhile.
pub(super) const LOCK_AWAY_SECONDS: u64 = 5;

impl LockWaits {
    /// `job_id` waits for a lock (`why`, from the engine): tried again later.
    pub(super) fn blocked(&mut self, job_id: i64, why: &str) {
        self.jobs.insert(job_id, Instant::now() + LOCK_RETRY);
        if shmem::lock_wait_to_say(job_id) {
            log!("{BACKEND_TYPE}: {why} (tried again every second)");
        }
    }

    /// The jobs not to try before their time.
    pub(super) fn waiting(&self) -> Vec<i64> {
        let now = Instant::now();
        self.jobs
            .iter()
            .filter(|(_, &retry_at)| retry_at > now)
            .map(|(&job_id, _)| job_id)
            .collect()
    }

    /// `job_id` ran a batch (or ended): it waits no more.
    pub(super) fn went_on(&mut self, job_id: i64) {
        self.jobs.remove(&job_id);
        if let Some(seconds) = shmem::lock_wait_over(job_id) {
            log!("{BACKEND_TYPE}: job {job_id} goes on after waiting {seconds} s");
        }
    }

    /// Whether every job of the database that could run either waits for a lock in this
    /// process or has a runner already: then this worker leaves, rather than hold a worker
    /// slot that another database's jobs may need while it only waits (a role that may lock
    /// a table must not pin the server's workers). Call it in a transaction.
    pub(super) fn all_runnable_wait(&self) -> bool {
        !self.jobs.is_empty()
            && store::runnable()
                .into_iter()
                .all(|job_id| self.jobs.contains_key(&job_id) || !job::is_free(job_id))
    }
}
