//! What backends, the launcher and the workers share in shared memory: the launcher's latch,
//! one slot per worker (its database, state, pid and latch), and the databases waiting for a
//! worker. A committed enqueue wakes its database's worker or asks the launcher to start one;
//! sleeping on a latch. Infrastructure below the job queue, the batch engine and the loops.

use crate::error::report_with_hint;
use crate::settings::{self, WORKER_SLOTS};
use pgrx::prelude::*;
use pgrx::{
    pg_shmem_init, register_xact_callback, PGRXSharedMemory, PgAtomic, PgXactCallbackEvent,
};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `backend_type` of the workers in pg_stat_activity.
pub const WORKER_TYPE: &str = "backfill worker";
/// `backend_type` of the launcher.
pub const LAUNCHER_TYPE: &str = "backfill launcher";

/// Databases that can wait for a worker at once (more wait for the launcher's next look).
const REQUEST_SLOTS: usize = 64;

/// A worker slot's state.
const FREE: u32 = 0;
/// Reserved by the launcher for a database; the worker has not yet connected.
const STARTING: u32 = 1;
/// Connected, and woken by each enqueue in its database.
const SERVING: u32 = 2;
/// About to exit: a last look for work, then gone. An enqueue asks the launcher instead.
const LEAVING: u32 = 3;

#[derive(Default)]
struct Slot {
    state: AtomicU32,
    database: AtomicU32,
    pid: AtomicI32,
    /// Address of the worker's latch (PGPROC.procLatch, in shared memory), 0 when none.
    latch: AtomicU64,
    /// Changes at each reservation, so a late release of an earlier use cannot free it.
    generation: AtomicU32,
    /// Set by the worker when a part of its job has no worker yet: the launcher starts one.
    wants_helper: AtomicBool,
    /// Set while the worker runs a job (for the throttles of all workers).
    running_job: AtomicBool,
    /// The worker was started for the launcher's periodic look (`Purpose::Look`).
    looks: AtomicBool,
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
    launcher_pid: AtomicI32,
    launcher_latch: AtomicU64,
    workers: [Slot; WORKER_SLOTS],
    /// Database OIDs that want a worker (0: empty).
    requests: [AtomicU32; REQUEST_SLOTS],
    /// Set when a request found the table full: the launcher then looks at every database.
    look_everywhere: AtomicBool,
    /// Databases whose jobs are held back (enqueue's not_before, backfill.active_hours), and
    /// when (Unix seconds) the launcher is to start a worker for them: their worker left
    /// rather than stay connected until then (0: empty).
    later_database: [AtomicU32; REQUEST_SLOTS],
    later_at: [AtomicI64; REQUEST_SLOTS],
    /// The worker whose batch runs while the application keeps the server busy (its slot
    /// index + 1; 0: none). See `take_batch_turn`.
    batch_turn: AtomicU32,
    /// The earliest the next batch taking the turn may start (microseconds since the Unix
    /// epoch): the gap the last one left after itself.
    turn_free_at: AtomicI64,
    /// The launcher's last try to start a worker found no free background worker process.
    no_process: AtomicBool,
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
        }
    }
}

// SAFETY: every field of Registry is an atomic (or an array of them), safe to share between
// processes; the one address it keeps, the launcher's latch, points into shared memory,
// which every backend maps at the same place.
unsafe impl PGRXSharedMemory for Registry {}

// SAFETY: the name is this extension's own; the segment is requested and initialised in
// _PG_init (wake::init) before any process reads it.
static REGISTRY: PgAtomic<Registry> = unsafe { PgAtomic::new(c"backfill_registry") };

/// True in every process of a server that loaded the library at start (shared memory, the
/// launcher and the workers exist only then).
static PRELOADED: AtomicBool = AtomicBool::new(false);

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

fn my_latch() -> u64 {
    // SAFETY: MyProc is this process's PGPROC; its latch lives in shared memory.
    (unsafe { &raw mut (*pg_sys::MyProc).procLatch }) as u64
}

fn set_latch(latch: u64) {
    if latch != 0 {
        // SAFETY: the address is a PGPROC latch in shared memory, valid for the life of the
        // server; setting the latch of a process that has exited is harmless.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

// ---- the launcher

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

/// Asks the launcher for a worker in `database` and wakes it.
pub fn request(database: pg_sys::Oid) {
    let registry = REGISTRY.get();
    let wanted = database.to_u32();
    if !registry
        .requests
        .iter()
        .any(|r| r.load(Ordering::SeqCst) == wanted)
    {
        let queued = registry.requests.iter().any(|request| {
            request
                .compare_exchange(0, wanted, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        });
        if !queued {
            registry.look_everywhere.store(true, Ordering::SeqCst);
        }
    }
    set_latch(registry.launcher_latch.load(Ordering::SeqCst));
}

fn unix_now() -> i64 {
    unix_micros() / 1_000_000
}

/// The clock the workers' batch turns share (a step of the system clock makes one gap
/// longer or shorter; `take_batch_turn` waits no longer than its patience whatever it says).
fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros().min(i64::MAX as u128) as i64)
}

/// Asks the launcher for a worker in `database` in `seconds` (the earliest if asked twice).
/// False when the table is full: the caller then stays.
pub fn request_later(database: pg_sys::Oid, seconds: u64) -> bool {
    let registry = REGISTRY.get();
    let wanted = database.to_u32();
    let at = unix_now().saturating_add(seconds.min(i64::MAX as u64) as i64);
    let slot = registry
        .later_database
        .iter()
        .position(|d| d.load(Ordering::SeqCst) == wanted)
        .or_else(|| {
            registry.later_database.iter().position(|d| {
                d.compare_exchange(0, wanted, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            })
        });
    match slot {
        Some(index) => {
            // A slot taken just now still holds 0 (due at once) until this store: at worst
            // an early look, never a late one.
            let time = &registry.later_at[index];
            let earlier = match time.load(Ordering::SeqCst) {
                0 => at,
                t => t.min(at),
            };
            time.store(earlier, Ordering::SeqCst);
            true
        }
        None => false,
    }
}

/// Which held databases `take_due` hands back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Those whose time has come.
    Now,
    /// All of them: after a reload, which may have moved backfill.active_hours.
    All,
}

/// The held databases `which` says, taken off the table.
pub fn take_due(which: Due) -> Vec<pg_sys::Oid> {
    let registry = REGISTRY.get();
    let now = unix_now();
    registry
        .later_database
        .iter()
        .zip(&registry.later_at)
        .filter_map(|(database, at)| {
            let db = database.load(Ordering::SeqCst);
            if db == 0 || !(which == Due::All || at.load(Ordering::SeqCst) <= now) {
                return None;
            }
            at.store(0, Ordering::SeqCst);
            database.store(0, Ordering::SeqCst);
            Some(pg_sys::Oid::from(db))
        })
        .collect()
}

/// Whether a request found the table full since the last call: then every database counts
/// as asking.
pub fn take_look_everywhere() -> bool {
    REGISTRY.get().look_everywhere.swap(false, Ordering::SeqCst)
}

/// The databases asking for a worker, taken off the table.
pub fn take_requests() -> Vec<pg_sys::Oid> {
    REGISTRY
        .get()
        .requests
        .iter()
        .map(|r| r.swap(0, Ordering::SeqCst))
        .filter(|&db| db != 0)
        .map(pg_sys::Oid::from)
        .collect()
}

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
        match slot.state.load(Ordering::SeqCst) {
            SERVING => {
                set_latch(slot.latch.load(Ordering::SeqCst));
                found = Serving::Yes;
            }
            STARTING => found = Serving::Yes,
            LEAVING if !matches!(found, Serving::Yes) => found = Serving::Leaving,
            _ => {}
        }
    }
    found
}

/// Whether a worker for `database` is starting (it will look for work once connected).
pub fn starting_in(database: pg_sys::Oid) -> bool {
    REGISTRY.get().workers.iter().any(|slot| {
        slot.database.load(Ordering::SeqCst) == database.to_u32()
            && slot.state.load(Ordering::SeqCst) == STARTING
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
        .filter(|slot| slot.state.load(Ordering::SeqCst) != FREE)
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
        if slot
            .state
            .compare_exchange(FREE, STARTING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
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
        slot.state.store(FREE, Ordering::SeqCst);
    }
    set_latch(registry.launcher_latch.load(Ordering::SeqCst));
}

/// Whether the launcher's last try to start a worker found a background worker process for
/// it (what `problem` reports when not).
pub fn found_process(found: bool) {
    REGISTRY.get().no_process.store(!found, Ordering::SeqCst);
}

// ---- a worker

/// The database slot `index` was reserved for, and the reservation's generation.
pub fn slot_reservation(index: usize) -> Option<(pg_sys::Oid, u32)> {
    let slot = REGISTRY.get().workers.get(index)?;
    (slot.state.load(Ordering::SeqCst) == STARTING).then(|| {
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
    slot.state.store(SERVING, Ordering::SeqCst);
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

/// Takes the batch turn for the worker of slot `index`: while the application keeps the
/// server busy, one backfill batch runs at a time, whatever the jobs and databases, and each
/// leaves a gap after itself before the next one starts (`end_batch_turn`). Batches at the
/// same moment, or one right after another, put their WAL in front of the application's
/// commits together, and the application's slowest saves are what that grows; spaced out
/// they take as long in all (the adaptive throttle sets how much they run). True when the
/// worker has the turn, to give back with `end_batch_turn` once its batch has committed;
/// false after `patience` without it (a batch stuck behind a lock holds no one up for
/// longer), or on shutdown. The gap is waited for after taking the turn, so that no batch
/// can slip in between, and for no longer than `patience` either.
pub fn take_batch_turn(index: usize, patience: Duration) -> bool {
    let registry = REGISTRY.get();
    let me = index as u32 + 1;
    let deadline = Instant::now() + patience;
    loop {
        let taken = registry
            .batch_turn
            .compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst);
        match taken {
            Ok(_) => break,
            Err(holder) if holder == me => break,
            Err(_) => {}
        }
        if Instant::now() >= deadline || shutdown_requested() {
            return false;
        }
        sleep(Duration::from_millis(1));
    }
    let gap_left = registry
        .turn_free_at
        .load(Ordering::SeqCst)
        .saturating_sub(unix_micros());
    if gap_left > 0 {
        sleep(
            Duration::from_micros(gap_left as u64)
                .min(deadline.saturating_duration_since(Instant::now())),
        );
    }
    true
}

/// Gives the batch turn back if the worker of slot `index` has it (also when its process
/// exits, with no gap), and has the next batch wait `gap` from now.
pub fn end_batch_turn(index: usize, gap: Duration) {
    let registry = REGISTRY.get();
    let me = index as u32 + 1;
    if registry.batch_turn.load(Ordering::SeqCst) != me {
        return;
    }
    // Before the turn is free: whoever takes it next sees this gap.
    registry.turn_free_at.store(
        unix_micros().saturating_add(gap.as_micros().min(i64::MAX as u128) as i64),
        Ordering::SeqCst,
    );
    let _ = registry
        .batch_turn
        .compare_exchange(me, 0, Ordering::SeqCst, Ordering::SeqCst);
}

/// Workers running a job right now, in any database.
pub fn workers_running_jobs() -> usize {
    REGISTRY
        .get()
        .workers
        .iter()
        .filter(|slot| {
            slot.state.load(Ordering::SeqCst) != FREE && slot.running_job.load(Ordering::SeqCst)
        })
        .count()
}

/// The worker of slot `index` is about to exit: from now on an enqueue asks the launcher,
/// which starts another worker once this one is gone. The worker takes a last look for work
/// after this (and serves again if it finds some), so nothing committed before is missed.
pub fn worker_leaving(index: usize) {
    REGISTRY.get().workers[index]
        .state
        .store(LEAVING, Ordering::SeqCst);
}

// ---- backends

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
            slot.database.load(Ordering::SeqCst) == here
                && slot.state.load(Ordering::SeqCst) == SERVING
        })
        .map(|slot| slot.pid.load(Ordering::SeqCst))
        .find(|&pid| pid != 0)
}

/// Why no worker will run jobs queued in this database, as (message, hint); `None` when one
/// will: configured, and the launcher running right now.
pub fn problem() -> Option<(String, String)> {
    // SAFETY: reads a flag in shared memory, as any backend may.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Some((
            "this server is a hot standby: backfill jobs run on the primary".into(),
            "Queue and run jobs on the primary; here backfill.progress shows them as the primary's progress replays."
                .into(),
        ));
    }
    if !preloaded() {
        return Some((
            "backfill is not in shared_preload_libraries, so no background worker runs backfill jobs".into(),
            "Add shared_preload_libraries = 'backfill' to postgresql.conf and restart PostgreSQL; \
             until then, run a queued job with CALL backfill.run(job_id)."
                .into(),
        ));
    }
    if settings::max_workers() == 0 {
        return Some((
            "backfill.max_workers is 0, so no background worker runs backfill jobs".into(),
            "Set backfill.max_workers in postgresql.conf and restart PostgreSQL, \
             or run jobs with CALL backfill.run(job_id)."
                .into(),
        ));
    }
    if REGISTRY.get().no_process.load(Ordering::SeqCst) {
        // SAFETY: a postmaster setting's variable.
        let processes = unsafe { pg_sys::max_worker_processes };
        return Some((
            format!(
                "the backfill launcher could not start a worker: no free background worker process (max_worker_processes = {processes})"
            ),
            "Raise max_worker_processes to leave room for the launcher and backfill.max_workers workers, plus what parallel queries and other extensions use, and restart PostgreSQL; jobs wait until a process is free."
                .into(),
        ));
    }
    if launcher_pid().is_none() {
        return Some((
            "the backfill launcher is not running right now".into(),
            "The server log says why (look for \"backfill launcher\"); the job stays queued, \
             and CALL backfill.run(job_id) runs it in your session."
                .into(),
        ));
    }
    None
}

thread_local! {
    static WAKE_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// When the current transaction commits (not before: it would find nothing), wakes this
/// database's worker, or has the launcher start one.
pub fn wake_at_commit() {
    if !preloaded() || WAKE_REGISTERED.get() {
        return;
    }
    WAKE_REGISTERED.set(true);
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        WAKE_REGISTERED.set(false);
        // SAFETY: MyDatabaseId is set in every backend connected to a database.
        let here = unsafe { pg_sys::MyDatabaseId };
        if !matches!(served(here), Serving::Yes) {
            request(here);
        }
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || WAKE_REGISTERED.set(false));
}

/// Hands `look` the client sessions of the server (any database), this process excluded, as
/// the backend status array shows them (copied once per transaction; the entries are not to
/// be kept beyond the call).
fn with_client_sessions<R>(
    look: impl FnOnce(&mut dyn Iterator<Item = &pg_sys::PgBackendStatus>) -> R,
) -> R {
    // SAFETY: the backend status snapshot functions, used as pg_stat_get_activity uses them;
    // the snapshot stays valid until the end of the transaction, after this call.
    let count = unsafe { pg_sys::pgstat_fetch_stat_numbackends() };
    let mut sessions = (1..=count).filter_map(|index| {
        // SAFETY: as above; `index` is within the snapshot.
        let status = unsafe {
            #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
            let entry = pg_sys::pgstat_fetch_stat_local_beentry(index);
            #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
            let entry = pg_sys::pgstat_get_local_beentry_by_index(index);
            entry.as_ref().map(|entry| &entry.backendStatus)
        }?;
        // SAFETY: this process's pid.
        let mine = status.st_procpid == unsafe { pg_sys::MyProcPid };
        (!mine && status.st_backendType == pg_sys::BackendType::B_BACKEND).then_some(status)
    });
    look(&mut sessions)
}

/// Client sessions of the server (any database) running a statement right now, this process
/// excluded: the application's load, as the worker's throttle sees it.
///
/// A session idle in a transaction uses no CPU, and neither does a statement that sleeps:
/// one in `pg_sleep` (a Timeout wait) or in an extension's wait, which is where
/// `backfill.wait` sleeps. Counting those, an operator waiting for a job, or an application
/// holding a transaction open, would slow a job down several times over.
pub fn busy_sessions() -> usize {
    with_client_sessions(|sessions| {
        sessions
            .filter(|status| {
                matches!(
                    status.st_state,
                    pg_sys::BackendState::STATE_RUNNING | pg_sys::BackendState::STATE_FASTPATH
                ) && !is_sleeping(status.st_procpid)
            })
            .count()
    })
}

/// Whether pg_restore is connected to this database (its sessions' `application_name`, which
/// it sets unless told otherwise): a restore loads the job table before, or after, the tables
/// its jobs read, so no job starts or goes on in the database until it is gone.
pub fn restore_in_progress() -> bool {
    // SAFETY: set in every backend connected to a database.
    let here = unsafe { pg_sys::MyDatabaseId };
    with_client_sessions(|mut sessions| {
        Iterator::any(&mut sessions, |status| {
            status.st_databaseid == here
                && !status.st_appname.is_null()
                // SAFETY: a NUL-terminated name in the status snapshot.
                && unsafe { std::ffi::CStr::from_ptr(status.st_appname) }.to_bytes()
                    == b"pg_restore"
        })
    })
}

/// Whether the backend `pid` waits in a sleep (pg_sleep, an extension's latch wait) rather
/// than on work: its wait event's class, read as pg_stat_activity reads it (unlocked; a
/// stale value only shifts one sample of the smoothed load).
fn is_sleeping(pid: i32) -> bool {
    const CLASS: u32 = 0xFF00_0000;
    // SAFETY: the PGPROC of a live backend, looked up under ProcArrayLock; its wait event is a
    // single aligned word the backend writes and anyone may read.
    let info = unsafe {
        let proc = pg_sys::BackendPidGetProc(pid);
        if proc.is_null() {
            return false;
        }
        std::ptr::read_volatile(&(*proc).wait_event_info)
    };
    matches!(
        info & CLASS,
        pg_sys::PG_WAIT_TIMEOUT | pg_sys::PG_WAIT_EXTENSION
    )
}

/// Sleeps up to `duration` on this process's latch, returning early when the process is asked
/// to stop; a backend's cancel request interrupts it with the usual error. The latch waits in
/// whole milliseconds, so what is left under one is not slept: rounded up, every pause of a
/// few microseconds would cost a millisecond or more.
pub fn sleep(duration: Duration) {
    let deadline = Instant::now() + duration;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) || shutdown_requested() {
            return;
        }
        // SAFETY: the standard wait on MyLatch, as pg_sleep does.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                left.as_millis().clamp(1, i64::MAX as u128) as i64,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
}

pub fn shutdown_requested() -> bool {
    // SAFETY: a sig_atomic_t flag set by the SIGTERM handler.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// Warns when no worker will pick up the job just queued.
pub fn warn_if_no_worker(job_id: i64) {
    if let Some((message, hint)) = problem() {
        report_with_hint(
            PgLogLevel::WARNING,
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("backfill job {job_id} will wait: {message}"),
            hint,
        );
    }
}
