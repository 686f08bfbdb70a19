//! Jobs waiting out a lock someone holds, as every worker process sees them: when the log
//! last said so, and since when. A job that waits gives its worker back (`bgw::worker`), and a
//! later worker, another process, tries it again; the log still says so once a minute per
//! job, not once per process.

use super::registry::{unix_now, Registry, REGISTRY};
use pgrx::pg_sys;
use std::sync::atomic::Ordering;

/// How often the log says again that a job waits for a lock.
pub const LOCK_SAY_EVERY_SECONDS: i64 = 60;

/// The entry of job `job_id` of this database (job ids repeat across databases).
fn entry(registry: &Registry, job_id: i64) -> Option<usize> {
    // SAFETY: set in every backend connected to a database.
    let here = unsafe { pg_sys::MyDatabaseId }.to_u32();
    (0..registry.lock_note_job.len()).find(|&i| {
        registry.lock_note_job[i].load(Ordering::SeqCst) == job_id
            && registry.lock_note_database[i].load(Ordering::SeqCst) == here
    })
}

/// Whether the log is to say now that `job_id` (of this database) waits for a lock: not said
/// for it in the last minute by any process. Notes that it is said. With the table full, the
/// answer is yes.
pub fn lock_wait_to_say(job_id: i64) -> bool {
    let registry = REGISTRY.get();
    let now = unix_now();
    // SAFETY: as in `entry`.
    let here = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let found = entry(registry, job_id).or_else(|| {
        (0..registry.lock_note_job.len()).find(|&i| {
            let taken = registry.lock_note_job[i]
                .compare_exchange(0, job_id, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if taken {
                registry.lock_note_database[i].store(here, Ordering::SeqCst);
            }
            taken
        })
    });
    let Some(index) = found else {
        return true;
    };
    // A slot taken just now still holds 0s: said long ago, so said now.
    let since = &registry.lock_note_since[index];
    if since.load(Ordering::SeqCst) == 0 {
        since.store(now, Ordering::SeqCst);
    }
    let said = &registry.lock_note_said[index];
    let last = said.load(Ordering::SeqCst);
    if last != 0 && now - last < LOCK_SAY_EVERY_SECONDS {
        return false;
    }
    said.store(now, Ordering::SeqCst);
    true
}

/// `job_id` waits no more: how long it waited (seconds) when the log said it waited.
pub fn lock_wait_over(job_id: i64) -> Option<i64> {
    let registry = REGISTRY.get();
    let index = entry(registry, job_id)?;
    let since = registry.lock_note_since[index].swap(0, Ordering::SeqCst);
    registry.lock_note_said[index].store(0, Ordering::SeqCst);
    registry.lock_note_database[index].store(0, Ordering::SeqCst);
    registry.lock_note_job[index].store(0, Ordering::SeqCst);
    (since != 0).then(|| unix_now() - since)
}
