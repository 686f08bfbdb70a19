//! Failures outside any batch: the waits between them, and when the worker gives the database
//! up for a while.

use crate::pg::subxact::Failure;
use crate::shmem::{self, WORKER_TYPE as BACKEND_TYPE};
use pgrx::prelude::*;
use std::time::Duration;

/// Consecutive failures outside any batch, and the waits between them.
#[derive(Default)]
pub(super) struct Trouble {
    pub(super) failures: u32,
    pub(super) last_message: Option<String>,
}

/// Longest wait after repeated failures.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Failures in a row outside any job after which the worker leaves rather than stay
/// connected (it would hold up DROP DATABASE) ...
pub(super) const LEAVE_AFTER: u32 = 3;

/// ... and asks the launcher for another worker this much later (a committed enqueue or
/// model update asks for one at once).
pub(super) const COME_BACK_AFTER: u64 = 60;

/// Leaves the database after failures that keep coming back (its extension's schema renamed,
/// say), asking the launcher for a worker later; false when the launcher's table of such
/// requests is full, and the worker stays.
pub(super) fn leave_for_a_while(slot: usize, database: pg_sys::Oid) -> bool {
    shmem::worker_leaving(slot);
    if shmem::request_later(database, COME_BACK_AFTER) {
        log!("{BACKEND_TYPE}: leaving after {LEAVE_AFTER} failures in a row; another worker looks again in {COME_BACK_AFTER} s, or at the next job queued");
        return true;
    }
    // SAFETY: this process's pid.
    shmem::worker_serving(slot, unsafe { pg_sys::MyProcPid });
    false
}

impl Trouble {
    /// Logs the failure (once while it repeats) and waits, twice as long each time.
    pub(super) fn wait_after(&mut self, failure: &Failure, doing: &str) {
        self.failures += 1;
        let message = failure.to_string();
        let delay = Duration::from_secs(1)
            .saturating_mul(1 << self.failures.min(6).saturating_sub(1))
            .min(MAX_BACKOFF);
        if self.last_message.as_deref() != Some(message.as_str()) {
            warning!(
                "{BACKEND_TYPE}: failed {doing}: {message}; trying again in {} s, then less often",
                delay.as_secs()
            );
            self.last_message = Some(message);
        }
        shmem::sleep(delay);
    }

    /// Whether the failures came LEAVE_AFTER times in a row.
    pub(super) fn persists(&self) -> bool {
        self.failures >= LEAVE_AFTER
    }

    pub(super) fn clear(&mut self) {
        if self.failures > 0 {
            log!("{BACKEND_TYPE}: working again");
        }
        self.failures = 0;
        self.last_message = None;
    }
}
