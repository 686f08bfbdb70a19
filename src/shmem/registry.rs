//! The shared-memory registry itself: the launcher's latch and pid, a slot per worker, the
//! databases asking for a worker; set up at preload.

use crate::pg::settings::WORKER_SLOTS;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// `backend_type` of the workers in pg_stat_activity.
pub const WORKER_TYPE: &str = "backfill worker";

/// `backend_type` of the launcher.
pub const LAUNCHER_TYPE: &str = "backfill launcher";

/// Databases that can wait for a worker at once (more wait for the launcher's next look).
pub(super) const REQUEST_SLOTS: usize = 64;

/// A worker slot's state, kept in an `AtomicU32` of shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum SlotState {
    Free = 0,
    /// Reserved by the launcher for a database; the worker has not yet connected.
    Starting = 1,
    /// Connected, and woken by each enqueue in its database.
    Serving = 2,
    /// About to exit: a last look for work, then gone. An enqueue asks the launcher instead.
    Leaving = 3,
}

/// A slot's state in shared memory; every access sequentially consistent.
#[derive(Default)]
pub(super) struct AtomicSlotState(AtomicU32);

impl AtomicSlotState {
    pub(super) fn load(&self) -> SlotState {
        match self.0.load(Ordering::SeqCst) {
            1 => SlotState::Starting,
            2 => SlotState::Serving,
            3 => SlotState::Leaving,
            // Only this type writes the value: 0 is the one left.
            _ => SlotState::Free,
        }
    }

    pub(super) fn store(&self, state: SlotState) {
        self.0.store(state as u32, Ordering::SeqCst);
    }

    /// Free to starting, atomically: whether this caller reserved the slot.
    pub(super) fn reserve(&self) -> bool {
        self.0
            .compare_exchange(
                SlotState::Free as u32,
                SlotState::Starting as u32,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }
}

#[derive(Default)]
pub(super) struct Slot {
    pub(super) state: AtomicSlotState,
    pub(super) database: AtomicU32,
    pub(super) pid: AtomicI32,
    /// Address of the worker's latch (PGPROC.procLatch, in shared memory), 0 when none.
    pub(super) latch: AtomicU64,
    /// Changes at each reservation, so a late release of an earlier use cannot free it.
    pub(super) generation: AtomicU32,
    /// Set by the worker when a part of its job has no worker yet: the launcher starts one.
    pub(super) wants_helper: AtomicBool,
    /// Set while the worker runs a job (for the throttles of all workers).
    pub(super) running_job: AtomicBool,
    /// The worker was started for the launcher's periodic look (`Purpose::Look`).
    pub(super) looks: AtomicBool,
}

/// Why the launcher starts a worker for a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A job was queued there, a split job wants a helper, or the server (re)started: the
    /// worker stays a moment once idle, for what is queued next.
    Asked,
    /// The launcher's periodic look: the worker runs whatever it finds without a runner (a
    /// job restored from a dump, say) and otherwise leaves at once.
    Look,
}

pub struct Registry {
    pub(super) launcher_pid: AtomicI32,
    pub(super) launcher_latch: AtomicU64,
    pub(super) workers: [Slot; WORKER_SLOTS],
    /// Database OIDs that want a worker (0: empty).
    pub(super) requests: [AtomicU32; REQUEST_SLOTS],
    /// Set when a request found the table full: the launcher then looks at every database.
    pub(super) look_everywhere: AtomicBool,
    /// Databases whose jobs are held back (enqueue's not_before, backfill.active_hours), and
    /// when (Unix seconds) the launcher is to start a worker for them: their worker left
    /// rather than stay connected until then (0: empty).
    pub(super) later_database: [AtomicU32; REQUEST_SLOTS],
    pub(super) later_at: [AtomicI64; REQUEST_SLOTS],
    /// The worker whose batch runs while the application keeps the server busy (its slot
    /// index + 1; 0: none). See `take_batch_turn`.
    pub(super) batch_turn: AtomicU32,
    /// The earliest the next batch taking the turn may start (microseconds since the Unix
    /// epoch): the gap the last one left after itself.
    pub(super) turn_free_at: AtomicI64,
    /// The launcher's last try to start a worker found no free background worker process.
    pub(super) no_process: AtomicBool,
    /// Jobs waiting out a lock (0: empty), with their database, since when and when the log
    /// last said so (Unix seconds): see `lock_notes`.
    pub(super) lock_note_job: [AtomicI64; REQUEST_SLOTS],
    pub(super) lock_note_database: [AtomicU32; REQUEST_SLOTS],
    pub(super) lock_note_since: [AtomicI64; REQUEST_SLOTS],
    pub(super) lock_note_said: [AtomicI64; REQUEST_SLOTS],
    /// Databases the log has said hold another version's objects (0: empty): see
    /// `version_notes`.
    pub(super) version_note_database: [AtomicU32; REQUEST_SLOTS],
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            launcher_pid: AtomicI32::new(0),
            launcher_latch: AtomicU64::new(0),
            workers: std::array::from_fn(|_| Slot::default()),
            requests: std::array::from_fn(|_| AtomicU32::new(0)),
            look_everywhere: AtomicBool::new(false),
            later_database: std::array::from_fn(|_| AtomicU32::new(0)),
            later_at: std::array::from_fn(|_| AtomicI64::new(0)),
            batch_turn: AtomicU32::new(0),
            turn_free_at: AtomicI64::new(0),
            no_process: AtomicBool::new(false),
            lock_note_job: std::array::from_fn(|_| AtomicI64::new(0)),
            lock_note_database: std::array::from_fn(|_| AtomicU32::new(0)),
            lock_note_since: std::array::from_fn(|_| AtomicI64::new(0)),
            lock_note_said: std::array::from_fn(|_| AtomicI64::new(0)),
            version_note_database: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

// SAFETY: every field of Registry is an atomic (or an array of them), safe to share between
// processes; the one address it keeps, the launcher's latch, points into shared memory,
// which every backend maps at the same place.
unsafe impl PGRXSharedMemory for Registry {}

// SAFETY: the name is this extension's own; the segment is requested and initialised in
// _PG_init (wake::init) before any process reads it.
pub(super) static REGISTRY: PgAtomic<Registry> = unsafe { PgAtomic::new(c"backfill_registry") };

/// True in every process of a server that loaded the library at start (shared memory, the
/// launcher and the workers exist only then).
pub(super) static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Sets up the registry; only while shared_preload_libraries are loaded.
pub fn init() {
    // SAFETY: reading a postmaster global set while shared_preload_libraries are loaded.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    PRELOADED.store(true, Ordering::Relaxed);
    pg_shmem_init!(REGISTRY);
}

pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

pub(super) fn my_latch() -> u64 {
    // SAFETY: MyProc is this process's PGPROC; its latch lives in shared memory.
    (unsafe { &raw mut (*pg_sys::MyProc).procLatch }) as u64
}

pub(super) fn set_latch(latch: u64) {
    if latch != 0 {
        // SAFETY: the address is a PGPROC latch in shared memory, valid for the life of the
        // server; setting the latch of a process that has exited is harmless.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

pub fn launcher_ready(pid: i32) {
    let registry = REGISTRY.get();
    registry.launcher_latch.store(my_latch(), Ordering::SeqCst);
    registry.launcher_pid.store(pid, Ordering::SeqCst);
}

pub fn launcher_gone() {
    let registry = REGISTRY.get();
    registry.launcher_pid.store(0, Ordering::SeqCst);
    registry.launcher_latch.store(0, Ordering::SeqCst);
}

pub fn launcher_pid() -> Option<i32> {
    if !preloaded() {
        return None;
    }
    Some(REGISTRY.get().launcher_pid.load(Ordering::SeqCst)).filter(|&pid| pid != 0)
}

pub(super) fn unix_now() -> i64 {
    unix_micros() / 1_000_000
}

/// The clock the workers' batch turns share (a step of the system clock makes one gap
/// longer or shorter; `take_batch_turn` waits no longer than its patience whatever it says).
pub(super) fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros().min(i64::MAX as u128) as i64)
}
