//! The worker slots: reserved by the launcher, taken by a worker, freed on its exit; who serves
//! a database and who runs a job.

use super::registry::{my_latch, preloaded, set_latch, Purpose, SlotState, REGISTRY};
use super::turn::end_batch_turn;
use crate::pg::settings::{self};
use pgrx::prelude::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What the launcher finds for a database that wants a worker.
pub enum Serving {
    /// A worker will see its new jobs (it is serving, or has yet to make its first look).
    Yes,
    /// Its worker is leaving: start another once that one is gone.
    Leaving,
    No,
}

/// Whether `database` has a worker that will see a job committed now; wakes its workers
/// (any of them may be the one with nothing to do).
pub fn served(database: pg_sys::Oid) -> Serving {
    let mut found = Serving::No;
    for slot in &REGISTRY.get().workers {
        if slot.database.load(Ordering::SeqCst) != database.to_u32() {
            continue;
        }
        match slot.state.load() {
            SlotState::Serving => {
                set_latch(slot.latch.load(Ordering::SeqCst));
                found = Serving::Yes;
            }
            SlotState::Starting => found = Serving::Yes,
            SlotState::Leaving if !matches!(found, Serving::Yes) => found = Serving::Leaving,
            _ => {}
        }
    }
    found
}

/// Whether a worker for `database` is starting (it will look for work once connected).
pub fn starting_in(database: pg_sys::Oid) -> bool {
    REGISTRY.get().workers.iter().any(|slot| {
        slot.database.load(Ordering::SeqCst) == database.to_u32()
            && slot.state.load() == SlotState::Starting
    })
}

/// The databases whose workers asked for a helper since the last call (once per request).
pub fn take_helper_requests() -> Vec<pg_sys::Oid> {
    let mut databases: Vec<pg_sys::Oid> = REGISTRY
        .get()
        .workers
        .iter()
        .filter(|slot| slot.wants_helper.swap(false, Ordering::SeqCst))
        .map(|slot| pg_sys::Oid::from(slot.database.load(Ordering::SeqCst)))
        .filter(|db| *db != pg_sys::Oid::INVALID)
        .collect();
    databases.sort_unstable_by_key(|db| db.to_u32());
    databases
}

/// Workers running or starting.
pub fn workers_in_use() -> usize {
    REGISTRY
        .get()
        .workers
        .iter()
        .filter(|slot| slot.state.load() != SlotState::Free)
        .count()
}

/// Reserves a free slot for a worker in `database`, within backfill.max_workers: the slot's
/// index and generation.
pub fn reserve_slot(database: pg_sys::Oid, purpose: Purpose) -> Option<(usize, u32)> {
    if workers_in_use() >= settings::max_workers() {
        return None;
    }
    let registry = REGISTRY.get();
    for (index, slot) in registry.workers.iter().enumerate() {
        if slot.state.reserve() {
            let generation = slot
                .generation
                .fetch_add(1, Ordering::SeqCst)
                .wrapping_add(1);
            slot.pid.store(0, Ordering::SeqCst);
            slot.latch.store(0, Ordering::SeqCst);
            slot.wants_helper.store(false, Ordering::SeqCst);
            slot.running_job.store(false, Ordering::SeqCst);
            slot.looks.store(purpose == Purpose::Look, Ordering::SeqCst);
            slot.database.store(database.to_u32(), Ordering::SeqCst);
            return Some((index, generation));
        }
    }
    None
}

/// Frees slot `index` if it is still the reservation `generation`, and wakes the launcher
/// (a database may be waiting for a slot).
pub fn release_slot(index: usize, generation: u32) {
    let registry = REGISTRY.get();
    let Some(slot) = registry.workers.get(index) else {
        return;
    };
    if slot.generation.load(Ordering::SeqCst) == generation {
        end_batch_turn(index, Duration::ZERO);
        slot.latch.store(0, Ordering::SeqCst);
        slot.pid.store(0, Ordering::SeqCst);
        slot.database.store(0, Ordering::SeqCst);
        slot.state.store(SlotState::Free);
    }
    set_latch(registry.launcher_latch.load(Ordering::SeqCst));
}

/// Whether the launcher's last try to start a worker found a background worker process for
/// it (what `problem` reports when not).
pub fn found_process(found: bool) {
    REGISTRY.get().no_process.store(!found, Ordering::SeqCst);
}

/// The database slot `index` was reserved for, and the reservation's generation.
pub fn slot_reservation(index: usize) -> Option<(pg_sys::Oid, u32)> {
    let slot = REGISTRY.get().workers.get(index)?;
    (slot.state.load() == SlotState::Starting).then(|| {
        (
            pg_sys::Oid::from(slot.database.load(Ordering::SeqCst)),
            slot.generation.load(Ordering::SeqCst),
        )
    })
}

/// Why the worker of slot `index` was started.
pub fn purpose(index: usize) -> Purpose {
    if REGISTRY.get().workers[index].looks.load(Ordering::SeqCst) {
        Purpose::Look
    } else {
        Purpose::Asked
    }
}

/// The worker of slot `index`, connected: enqueues in its database now wake it.
pub fn worker_serving(index: usize, pid: i32) {
    let slot = &REGISTRY.get().workers[index];
    slot.latch.store(my_latch(), Ordering::SeqCst);
    slot.pid.store(pid, Ordering::SeqCst);
    slot.state.store(SlotState::Serving);
}

/// The worker of slot `index` runs a part of a split job whose other parts no one runs yet:
/// asks the launcher for one more worker in its database.
pub fn ask_for_helper(index: usize) {
    let registry = REGISTRY.get();
    registry.workers[index]
        .wants_helper
        .store(true, Ordering::SeqCst);
    set_latch(registry.launcher_latch.load(Ordering::SeqCst));
}

/// The worker of slot `index` runs a job from now on.
pub fn mark_running_job(index: usize) {
    REGISTRY.get().workers[index]
        .running_job
        .store(true, Ordering::SeqCst);
}

/// The worker of slot `index` runs no job from now on (it stands aside, or has none).
pub fn mark_no_job(index: usize) {
    REGISTRY.get().workers[index]
        .running_job
        .store(false, Ordering::SeqCst);
}

/// Workers running a job right now, in any database.
pub fn workers_running_jobs() -> usize {
    REGISTRY
        .get()
        .workers
        .iter()
        .filter(|slot| {
            slot.state.load() != SlotState::Free && slot.running_job.load(Ordering::SeqCst)
        })
        .count()
}

/// The worker of slot `index` is about to exit: from now on an enqueue asks the launcher,
/// which starts another worker once this one is gone. The worker takes a last look for work
/// after this (and serves again if it finds some), so nothing committed before is missed.
pub fn worker_leaving(index: usize) {
    REGISTRY.get().workers[index]
        .state
        .store(SlotState::Leaving);
}

/// The pid of a worker serving this database right now, if any (an idle database has none).
pub fn serving_pid() -> Option<i32> {
    if !preloaded() {
        return None;
    }
    // SAFETY: MyDatabaseId is set in every backend connected to a database.
    let here = unsafe { pg_sys::MyDatabaseId }.to_u32();
    REGISTRY
        .get()
        .workers
        .iter()
        .filter(|slot| {
            slot.database.load(Ordering::SeqCst) == here && slot.state.load() == SlotState::Serving
        })
        .map(|slot| slot.pid.load(Ordering::SeqCst))
        .find(|&pid| pid != 0)
}
