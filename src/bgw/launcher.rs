//! The launcher: one process, `backend_type = 'backfill launcher'`, connected to no database.
//! It starts a worker (src/bgw/worker.rs) for a database when one is asked for there (a committed
//! enqueue or model update, job rows restored), at most `backfill.max_workers` at a time, at
//! its own start once for every database, so that jobs a restart interrupted resume, and once
//! a minute for each database in turn, so that no job is left without a runner whatever
//! happened to it. A worker exits when its database has nothing left to run; no setting names
//! a database. Terminated, the launcher exits with status 1, and the postmaster starts it
//! again (unless the server is shutting down).

use crate::pg::settings;
use crate::shmem::{self, Purpose, Serving, LAUNCHER_TYPE, WORKER_TYPE};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// How long the postmaster waits before starting the launcher again after it exits.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// How often the launcher looks at every database (as autovacuum's launcher does): a worker
/// connects to each in turn, runs whatever it finds without a runner and leaves.
const LOOK_EVERY: Duration = Duration::from_secs(60);

pub fn init() {
    // SAFETY: reading a postmaster global set while shared_preload_libraries are loaded.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    // pg_upgrade starts the old server and the new one in binary-upgrade mode (more than once)
    // while it copies their files: a batch then would move a job on a server it is copying.
    // The postmaster reads its options (-b) before it loads this library.
    // SAFETY: reading a postmaster global set from its options.
    if unsafe { pg_sys::IsBinaryUpgrade } {
        log!("{LAUNCHER_TYPE} not started: the server is in binary-upgrade mode (pg_upgrade)");
        return;
    }
    BackgroundWorkerBuilder::new(LAUNCHER_TYPE)
        .set_type(LAUNCHER_TYPE)
        .set_library("backfill")
        .set_function("backfill_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(RESTART_DELAY))
        .load();
}

/// A worker the launcher started, until the postmaster says it stopped.
struct Started {
    slot: usize,
    generation: u32,
    purpose: Purpose,
    handle: DynamicBackgroundWorker,
}

// SAFETY: an exported symbol name of this library's own prefix, looked up by the postmaster
// when it starts the worker (bgw_function_name); no other symbol has it.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn backfill_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: the launcher reads only the shared catalog pg_database.
    BackgroundWorker::connect_worker_to_spi(None, None);
    // SAFETY: this process's pid.
    shmem::launcher_ready(unsafe { pg_sys::MyProcPid });
    let max_workers = settings::max_workers();
    log!("{LAUNCHER_TYPE} started: at most {max_workers} workers");
    // SAFETY: reading a postmaster setting's variable.
    let processes = unsafe { pg_sys::max_worker_processes } as usize;
    if max_workers > 0 && processes < max_workers + 1 {
        warning!(
            "{LAUNCHER_TYPE}: max_worker_processes = {processes} leaves room for fewer than the launcher \
             and backfill.max_workers = {max_workers} workers; jobs may wait for a free process \
             (set max_worker_processes to at least {}, plus what parallel queries and other \
             extensions use)",
            max_workers + 1
        );
    }
    let mut launcher = Launcher::new(max_workers);
    while !shmem::shutdown_requested() {
        let reloaded = BackgroundWorker::sighup_received();
        if reloaded {
            // SAFETY: what the postmaster's children do on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        launcher.take_requests(reloaded);
        launcher.serve_pending();
        launcher.start_helpers();
        launcher.look();
        // Until a request, a worker's exit (both set the latch) or the naptime.
        BackgroundWorker::wait_latch(Some(settings::naptime()));
    }
    shmem::launcher_gone();
    log!("{LAUNCHER_TYPE} exiting on shutdown request (it starts again unless the server is shutting down)");
    // Exit status 1, not 0 (which would unregister it): terminated on its own (say by
    // pg_terminate_backend), the launcher is started again after RESTART_DELAY; in a server
    // shutting down, the postmaster starts nothing.
    // SAFETY: ends the process, running its exit callbacks, as any background worker may.
    unsafe { pg_sys::proc_exit(1) }
}

/// The launcher's state across the turns of its loop.
struct Launcher {
    max_workers: usize,
    /// Databases that want a worker and have none yet.
    pending: Vec<pg_sys::Oid>,
    /// Databases the log has named as not allowing connections.
    said_closed: Vec<pg_sys::Oid>,
    /// The workers this launcher started that may still run.
    started: Vec<Started>,
    /// The databases that asked for a worker (a job queued there, a hold lifted), and those of
    /// them the log has named as waiting for one: the pass over every database at the start
    /// (and a look) may find no worker process for a database that has nothing to run, which
    /// is not worth a line.
    asked: Vec<pg_sys::Oid>,
    said_waiting: Vec<pg_sys::Oid>,
    /// The databases of this minute's look not looked at yet, and when the next look begins.
    to_look: Vec<pg_sys::Oid>,
    next_look: Instant,
}

impl Launcher {
    fn new(max_workers: usize) -> Launcher {
        Launcher {
            max_workers,
            // After a start or a crash, every database once: its worker resumes the jobs that
            // were running, and exits at once if there is nothing.
            pending: databases().iter().map(|d| d.oid).collect(),
            said_closed: Vec::new(),
            started: Vec::new(),
            asked: Vec::new(),
            said_waiting: Vec::new(),
            to_look: Vec::new(),
            next_look: Instant::now() + LOOK_EVERY,
        }
    }

    /// What shared memory asks for since the last turn: databases whose job was queued, whose
    /// hold ended (after a reload all held ones), or all of them.
    fn take_requests(&mut self, reloaded: bool) {
        if shmem::take_look_everywhere() {
            self.pending.extend(databases().iter().map(|d| d.oid));
        }
        let requests = shmem::take_requests();
        // Held jobs whose time has come; after a reload all of them, since the window may
        // have moved (a worker with nothing to run yet asks again and leaves).
        let due = shmem::take_due(if reloaded {
            shmem::Due::All
        } else {
            shmem::Due::Now
        });
        self.asked.extend(requests.iter().chain(&due));
        self.pending.extend(requests.into_iter().chain(due));
        self.pending.sort_unstable_by_key(|db| db.to_u32());
        self.pending.dedup();
        self.started.retain(still_running);
    }

    /// A worker for each pending database that has none, while there are free slots and
    /// processes; the others keep waiting.
    fn serve_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // A database dropped since it asked is forgotten; one that does not allow
        // connections waits, without a worker trying to connect.
        let known = databases();
        self.pending.retain(|db| known.iter().any(|d| d.oid == *db));
        let pending = std::mem::take(&mut self.pending);
        self.asked.retain(|db| pending.contains(db));
        self.said_waiting.retain(|db| pending.contains(db));
        let mut waiting = Vec::new();
        for database in pending {
            let open = known
                .iter()
                .any(|d| d.oid == database && d.allows_connections);
            if !open {
                if !self.said_closed.contains(&database) {
                    let name = known
                        .iter()
                        .find(|d| d.oid == database)
                        .map(|d| d.name.as_str())
                        .unwrap_or("?");
                    log!(
                        "{LAUNCHER_TYPE}: database \"{name}\" does not allow connections (ALLOW_CONNECTIONS false); \
                         its jobs wait until it does"
                    );
                    self.said_closed.push(database);
                }
                waiting.push(database);
                continue;
            }
            self.said_closed.retain(|d| *d != database);
            match shmem::served(database) {
                Serving::Yes => continue,
                Serving::Leaving => {
                    waiting.push(database);
                    continue;
                }
                Serving::No => {}
            }
            if self.max_workers == 0 {
                continue;
            }
            match launch(database, Purpose::Asked, &mut self.started) {
                Ok(()) => self.said_waiting.retain(|d| *d != database),
                Err(why) => {
                    if self.asked.contains(&database) && !self.said_waiting.contains(&database) {
                        let name = known
                            .iter()
                            .find(|d| d.oid == database)
                            .map_or("?", |d| d.name.as_str());
                        why.log(name, self.max_workers);
                        self.said_waiting.push(database);
                    }
                    waiting.push(database);
                }
            }
        }
        self.pending = waiting;
    }

    /// One more worker for a split job's part that none runs yet, unless one is on its way
    /// (it asks again if it finds more). With no free process the part waits for one of its
    /// job's workers to finish.
    fn start_helpers(&mut self) {
        for database in shmem::take_helper_requests() {
            if !shmem::starting_in(database) {
                let _ = launch(database, Purpose::Asked, &mut self.started);
            }
        }
    }

    /// Once a minute, every database in turn gets a worker that looks for jobs no one runs
    /// (restored from a dump, say). One look at a time, and only while no database waits for
    /// a worker: a look never keeps a job waiting. A database with a worker needs none.
    fn look(&mut self) {
        if Instant::now() >= self.next_look {
            self.to_look = databases()
                .into_iter()
                .filter(|d| d.allows_connections)
                .map(|d| d.oid)
                .collect();
            self.next_look = Instant::now() + LOOK_EVERY;
        }
        if self.pending.is_empty() && !self.started.iter().any(|w| w.purpose == Purpose::Look) {
            while let Some(database) = self.to_look.pop() {
                if matches!(shmem::served(database), Serving::No) {
                    let _ = launch(database, Purpose::Look, &mut self.started);
                    break;
                }
            }
        }
    }
}

/// Why no worker could be started.
enum NoWorker {
    /// backfill.max_workers are running.
    AllBusy,
    /// The postmaster has no free background worker process.
    NoProcess,
}

impl NoWorker {
    fn log(&self, database: &str, max_workers: usize) {
        match self {
            NoWorker::AllBusy => log!(
                "{LAUNCHER_TYPE}: all {max_workers} workers are busy (backfill.max_workers); \
                 database \"{database}\" waits for one"
            ),
            NoWorker::NoProcess => warning!(
                "{LAUNCHER_TYPE}: could not start a worker: no free background worker \
                 process (max_worker_processes); database \"{database}\" waits for one"
            ),
        }
    }
}

/// Starts a worker for `database` in a free slot.
fn launch(
    database: pg_sys::Oid,
    purpose: Purpose,
    started: &mut Vec<Started>,
) -> Result<(), NoWorker> {
    let (slot, generation) = shmem::reserve_slot(database, purpose).ok_or(NoWorker::AllBusy)?;
    let attempt = start_worker(slot);
    shmem::found_process(attempt.is_ok());
    match attempt {
        Ok(handle) => {
            started.push(Started {
                slot,
                generation,
                purpose,
                handle,
            });
            Ok(())
        }
        Err(_) => {
            shmem::release_slot(slot, generation);
            Err(NoWorker::NoProcess)
        }
    }
}

fn start_worker(
    slot: usize,
) -> Result<DynamicBackgroundWorker, pgrx::bgworkers::DynamicBackgroundWorkerLoadError> {
    BackgroundWorkerBuilder::new(WORKER_TYPE)
        .set_type(WORKER_TYPE)
        .set_library("backfill")
        .set_function("backfill_worker_main")
        .set_argument(Some(pg_sys::Datum::from(slot)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        // SAFETY: this process's pid: the postmaster tells the launcher when the worker stops.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
}

/// Whether a worker is still starting or running; when it stopped, its slot is freed (it
/// frees the slot itself on exit, but a worker that never ran cannot).
fn still_running(worker: &Started) -> bool {
    match worker.handle.pid() {
        Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted) => true,
        Err(_) => {
            shmem::release_slot(worker.slot, worker.generation);
            false
        }
    }
}

/// A database a worker may serve.
struct Database {
    oid: pg_sys::Oid,
    name: String,
    allows_connections: bool,
}

/// The databases, templates left out (a connection to one would make CREATE DATABASE from it
/// fail).
fn databases() -> Vec<Database> {
    BackgroundWorker::transaction(|| {
        // SAFETY: inside a transaction; pg_database is a shared catalog whose tuples are
        // FormData_pg_database; a plain heap scan (index lookups need pg_class, which a
        // process without a database cannot read), as the autovacuum launcher does. The scan
        // and relation are closed before returning.
        unsafe {
            let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
            let relation = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
            let scan = pg_sys::table_beginscan_catalog(relation, 0, std::ptr::null_mut());
            let mut open = Vec::new();
            loop {
                let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if tuple.is_null() {
                    break;
                }
                let database = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
                if !(*database).datistemplate {
                    open.push(Database {
                        oid: (*database).oid,
                        name: std::ffi::CStr::from_ptr((*database).datname.data.as_ptr())
                            .to_string_lossy()
                            .into_owned(),
                        allows_connections: (*database).datallowconn,
                    });
                }
            }
            pg_sys::heap_endscan(scan);
            pg_sys::table_close(relation, lock);
            open
        }
    })
}
