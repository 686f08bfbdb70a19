//! The background worker: one process, `backend_type = 'backfill worker'`, serving the
//! database named by `backfill.database`. It drains queued jobs oldest first through the same
//! batch engine as `CALL backfill.run`, one transaction per batch, and sleeps on its latch when
//! idle; a committed enqueue sets that latch (see `wake`).

use crate::engine::{self, Batch, Begin, Runner};
use crate::query;
use crate::settings;
use crate::subxact::{in_subtransaction, Failure};
use crate::wake;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::ffi::CStr;
use std::time::Duration;

pub const BACKEND_TYPE: &str = "backfill worker";
/// How long the postmaster waits before starting the worker again after it exits abnormally.
const RESTART_DELAY: Duration = Duration::from_secs(1);

pub fn init() {
    // SAFETY: reading a postmaster global set while shared_preload_libraries are loaded.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new(BACKEND_TYPE)
        .set_type(BACKEND_TYPE)
        .set_library("backfill")
        .set_function("backfill_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(RESTART_DELAY))
        .load();
}

fn reload_config_if_asked() {
    if BackgroundWorker::sighup_received() {
        // SAFETY: what the postmaster's children do on SIGHUP.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        log!("{BACKEND_TYPE}: configuration reloaded");
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn backfill_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = settings::database();
    if wake::database_missing() {
        wait_for_database(&database);
        exit_for_restart();
    }
    // If connecting fails (no such database, or it refuses connections), the next start waits
    // instead.
    wake::set_database_missing(true);
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    wake::set_database_missing(false);
    BackgroundWorker::transaction(fix_session_settings);
    // SAFETY: both are set once the connection is made.
    wake::worker_ready(unsafe { pg_sys::MyProcPid }, unsafe {
        pg_sys::MyDatabaseId
    });
    log!("{BACKEND_TYPE} started for database \"{database}\"");

    let mut extension_present = None;
    let mut trouble = Trouble::default();
    while !wake::shutdown_requested() {
        reload_config_if_asked();
        let present = match guarded(extension_installed) {
            Ok(present) => present,
            Err(failure) => {
                trouble.wait_after(&failure, "looking for the extension");
                continue;
            }
        };
        if extension_present != Some(present) {
            if !present {
                log!(
                    "{BACKEND_TYPE}: extension backfill is not installed in database \"{database}\"; \
                     waiting for CREATE EXTENSION backfill"
                );
            }
            extension_present = Some(present);
        }
        if present {
            match drain_one_job(&mut trouble) {
                Drained::Ran => {
                    trouble.clear();
                    continue;
                }
                Drained::Idle => trouble.clear(),
                Drained::Failed => continue,
            }
        }
        // What the batches did shows in pg_stat_* views once the worker is idle.
        // SAFETY: called between transactions, as backends do before going idle.
        unsafe { pg_sys::pgstat_report_stat(true) };
        BackgroundWorker::wait_latch(Some(settings::naptime()));
    }
    wake::worker_gone();
    log!("{BACKEND_TYPE} exiting on shutdown request");
    exit_for_restart();
}

/// The longest the worker waits for a lock unless lock_timeout is configured.
const LOCK_WAIT: &CStr = c"10s";

/// The worker's batches: it skips a job whose row someone holds locked (an uncommitted
/// cancel) instead of waiting, and may use the foreign-key fast path. (Its lock waits are
/// bounded by `guarded`, for every transaction.)
const WORKER: Runner = Runner {
    skip_locked_jobs: true,
    foreign_key_fast_path: true,
};

/// A lock wait of at most `timeout` for this transaction unless lock_timeout is configured: a
/// batch stuck behind someone's lock fails, is retried, and after the last attempt fails the
/// job, and the worker goes on to the next job instead of waiting for ever.
fn bound_lock_wait(timeout: &CStr) {
    // SAFETY: reading the setting's variable; SET LOCAL through the GUC machinery.
    unsafe {
        if pg_sys::LockTimeout == 0 {
            pg_sys::set_config_option(
                c"lock_timeout".as_ptr(),
                timeout.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_LOCAL,
                true,
                0,
                false,
            );
        }
    }
}

/// The worker's session: a search path no database user can write to (database and role
/// defaults such as ALTER DATABASE ... SET search_path are overridden), READ COMMITTED, so
/// every statement sees what committed before it, and writable transactions.
fn fix_session_settings() {
    Spi::run(
        "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false),
                pg_catalog.set_config('default_transaction_isolation', 'read committed', false),
                pg_catalog.set_config('default_transaction_read_only', 'off', false),
                pg_catalog.set_config('row_security', 'on', false)",
    )
    .unwrap_or_else(|e| error!("{BACKEND_TYPE}: could not set its session settings: {e}"));
}

/// Runs `work` in a transaction of its own and catches an ERROR in it (rolled back with a
/// subtransaction) instead of letting it end the process. Every lock the transaction waits
/// for, job rows and tables alike, is waited for at most LOCK_WAIT unless lock_timeout is
/// configured: a lock someone holds never stalls the worker.
fn guarded<R>(work: impl FnOnce() -> R) -> Result<R, Failure> {
    let work = std::panic::AssertUnwindSafe(work);
    BackgroundWorker::transaction(move || {
        let work = work;
        bound_lock_wait(LOCK_WAIT);
        in_subtransaction(work.0)
    })
}

/// Consecutive failures outside any batch, and the waits between them.
#[derive(Default)]
struct Trouble {
    failures: u32,
    last_message: Option<String>,
}

/// Longest wait after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Trouble {
    /// Logs the failure (once while it repeats) and waits, twice as long each time.
    fn wait_after(&mut self, failure: &Failure, doing: &str) {
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
        wake::sleep(delay);
    }

    fn clear(&mut self) {
        if self.failures > 0 {
            log!("{BACKEND_TYPE}: working again");
        }
        self.failures = 0;
        self.last_message = None;
    }
}

/// Exits with code 1: unless the server is shutting down, the postmaster starts the worker
/// again after RESTART_DELAY (code 0 would unregister it for good).
fn exit_for_restart() -> ! {
    // SAFETY: the normal way for a backend to exit.
    unsafe { pg_sys::proc_exit(1) }
}

fn extension_installed() -> bool {
    query::optional_value::<i32>("SELECT 1 FROM pg_extension WHERE extname = 'backfill'", &[])
        .is_some()
}

/// Without a database connection: waits, logging once, until the configured database exists
/// and allows connections, then exits so that the postmaster starts a worker that connects.
fn wait_for_database(database: &str) {
    BackgroundWorker::connect_worker_to_spi(None, None);
    let name = std::ffi::CString::new(database).unwrap_or_default();
    let why = match BackgroundWorker::transaction(|| database_state(&name)) {
        DatabaseState::Missing => "does not exist",
        DatabaseState::RefusesConnections => "does not allow connections (ALLOW_CONNECTIONS false)",
        DatabaseState::Open => "could not be connected to",
    };
    log!("{BACKEND_TYPE}: database \"{database}\" (backfill.database) {why}; waiting for it");
    while !wake::shutdown_requested() {
        let state = BackgroundWorker::transaction(|| database_state(&name));
        if state == DatabaseState::Open {
            log!("{BACKEND_TYPE}: database \"{database}\" can be connected to; restarting to connect to it");
            wake::set_database_missing(false);
            return;
        }
        BackgroundWorker::wait_latch(Some(settings::naptime().max(Duration::from_secs(5))));
        reload_config_if_asked();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DatabaseState {
    Missing,
    RefusesConnections,
    Open,
}

/// Whether a database of that name exists and allows connections, read from pg_database with
/// a plain heap scan: the only way without a database connection (index lookups need
/// pg_class), as the autovacuum launcher does.
fn database_state(name: &std::ffi::CStr) -> DatabaseState {
    // SAFETY: inside a transaction; pg_database is a shared catalog, its tuples are
    // FormData_pg_database; the scan and relation are closed before returning.
    unsafe {
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let relation = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
        let scan = pg_sys::table_beginscan_catalog(relation, 0, std::ptr::null_mut());
        let mut found = DatabaseState::Missing;
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let database = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            if std::ffi::CStr::from_ptr((*database).datname.data.as_ptr()) == name {
                found = if (*database).datallowconn {
                    DatabaseState::Open
                } else {
                    DatabaseState::RefusesConnections
                };
                break;
            }
        }
        pg_sys::heap_endscan(scan);
        pg_sys::table_close(relation, lock);
        found
    }
}

enum Drained {
    /// A job was run (to its end, to a stop, or until its row was found locked).
    Ran,
    /// There was nothing to run.
    Idle,
    /// Something failed outside a batch; the worker waited before coming back.
    Failed,
}

/// How often a job may fail outside its batches (taking it, recording a batch, finishing it)
/// before it is marked failed.
const JOB_ATTEMPTS: u32 = 3;

/// Runs the oldest runnable job to its end (or until shutdown).
fn drain_one_job(trouble: &mut Trouble) -> Drained {
    let job_id = match guarded(claim_next_job) {
        Ok(Some(job_id)) => job_id,
        Ok(None) => return Drained::Idle,
        Err(failure) => {
            trouble.wait_after(&failure, "looking for a job");
            return Drained::Failed;
        }
    };
    let mut failures = 0;
    loop {
        if wake::shutdown_requested() {
            log!("{BACKEND_TYPE}: stopping job {job_id} at a batch boundary on shutdown request");
            release(job_id);
            return Drained::Ran;
        }
        reload_config_if_asked();
        match guarded(|| engine::run_batch(job_id, WORKER)) {
            Ok(Batch::More) => {
                failures = 0;
                wake::sleep(settings::batch_delay());
            }
            Ok(Batch::Busy) => {
                // Someone holds the job row (an open transaction that cancels it): other jobs
                // go first, and this one is looked at again later.
                release(job_id);
                return Drained::Ran;
            }
            Ok(Batch::Finished(_)) => {
                release(job_id);
                return Drained::Ran;
            }
            Err(failure) => {
                failures += 1;
                let message = failure.to_string();
                if failures >= JOB_ATTEMPTS {
                    warning!(
                        "{BACKEND_TYPE}: job {job_id} failed {failures} times outside a batch; marking it failed: {message}"
                    );
                    if let Err(again) = guarded(|| engine::fail_job(job_id, &message)) {
                        warning!("{BACKEND_TYPE}: could not mark job {job_id} failed: {again}");
                        trouble.wait_after(&again, "marking a job failed");
                    }
                    release(job_id);
                    return Drained::Ran;
                }
                let delay = Duration::from_secs(1) * (1 << (failures - 1));
                warning!(
                    "{BACKEND_TYPE}: job {job_id} failed outside a batch (attempt {failures} of {JOB_ATTEMPTS}), \
                     trying again in {} s: {message}",
                    delay.as_secs()
                );
                wake::sleep(delay);
            }
        }
    }
}

/// Lets go of a job: its run lock is released directly (no SQL), outside any transaction.
fn release(job_id: i64) {
    engine::end(job_id);
}

/// The oldest queued or running job that no one else runs, now held by this process.
fn claim_next_job() -> Option<i64> {
    query::ids(
        "SELECT id FROM backfill.job WHERE state IN ('queued', 'running') ORDER BY id",
        &[],
    )
    .into_iter()
    .find(|&id| engine::begin(id, false, WORKER) == Begin::Started)
}
