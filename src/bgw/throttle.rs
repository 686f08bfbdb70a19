//! The adaptive throttle: after each batch, a pause in proportion to the batch and to the load
//! other sessions put on the server's CPUs.

use crate::pg::settings;
use crate::shmem::{self};
use std::time::Duration;

/// The adaptive throttle (backfill.adaptive_throttle): a pause after each batch in proportion
/// to the batch's time, to how busy the server's other client sessions are (smoothed over the
/// last batches) and to how many backfill workers run jobs. On a server with nothing else to
/// do the workers run flat out; while the application keeps every CPU busy, all of them
/// together take about a quarter of one (n workers each pause 4n - 1 times their batch's
/// time), so a job split across workers weighs on the application no more than one worker
/// does.
pub(super) struct Throttle {
    /// Busy sessions, smoothed.
    pub(super) load: f64,
    /// The server's CPUs, read once per job (on Linux it reads cgroup files).
    pub(super) cpus: f64,
    /// This job so far: the batches, their time, and the pauses after them.
    pub(super) batches: u64,
    pub(super) working: Duration,
    pub(super) paused: Duration,
    /// Pause owed but not yet taken: `shmem::sleep` sleeps whole milliseconds, so the
    /// fractions add up here until they make one.
    pub(super) owed: Duration,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            // From the first look, not from nothing: the first batches are already measured
            // against the load there is.
            load: shmem::busy_sessions() as f64,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
            batches: 0,
            working: Duration::ZERO,
            paused: Duration::ZERO,
            owed: Duration::ZERO,
        }
    }
}

impl Throttle {
    /// Whether the server's other sessions keep half its CPUs or more busy (smoothed over the
    /// last batches): then batches take turns (`shmem::take_batch_turn`). A session that looks
    /// at a job now and then is not that.
    pub(super) fn application_busy(&self) -> bool {
        settings::adaptive_throttle() && self.load / self.cpus >= 0.5
    }

    /// The pause after a batch of `batch`'s length that keeps `workers` running jobs at
    /// about a quarter of one CPU together while the application keeps every CPU busy.
    pub(super) fn share(&self, batch: Duration, workers: usize) -> Duration {
        batch.mul_f64((self.load / self.cpus).min(1.0) * (4.0 * workers.max(1) as f64 - 1.0))
    }

    /// The gap a batch that had the turn leaves before the next batch on the server: the
    /// pause one worker alone would take, so that batches under load come one at a time and
    /// evenly spaced rather than two back to back and then none (each worker's own pause
    /// ends wherever another worker's batch happens to be).
    pub(super) fn turn_gap(&self, batch: Duration) -> Duration {
        self.share(batch, 1)
    }

    /// Takes one more look at how busy the server's other sessions are.
    pub(super) fn look(&mut self) {
        self.load = 0.7 * self.load + 0.3 * shmem::busy_sessions() as f64;
    }

    pub(super) fn pause(&mut self, batch: Duration) -> Duration {
        if !settings::adaptive_throttle() {
            return Duration::ZERO;
        }
        self.look();
        let pause = self.share(batch, shmem::workers_running_jobs());
        self.batches += 1;
        self.working += batch;
        self.paused += pause;
        let due = self.owed + pause;
        let whole = Duration::from_millis(due.as_millis() as u64);
        self.owed = due - whole;
        whole
    }
}
