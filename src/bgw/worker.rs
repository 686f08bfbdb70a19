//! A worker: `backend_type = 'backfill worker'`, started by the launcher (src/launcher.rs)
//! for one database, in a slot of shared memory reserved for it. It drains that database's
//! queued jobs oldest first through the same batch engine as `CALL backfill.run`, one
//! transaction per batch; a committed enqueue sets its latch (see `wake`). With nothing left
//! to run it waits `backfill.naptime` (2 s at most) for more, then exits: no idle worker stays
//! connected to a database, so DROP DATABASE and DROP EXTENSION never wait for one.

use crate::batch::{self, Batch, Begin, Runner};
use crate::job::{self, store};
use crate::pg::query;
use crate::pg::settings;
use crate::pg::subxact::{in_subtransaction, Failure};
use crate::shmem::{self, Purpose, WORKER_TYPE as BACKEND_TYPE};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::time::{Duration, Instant};

fn reload_config_if_asked() {
    if BackgroundWorker::sighup_received() {
        // SAFETY: what the postmaster's children do on SIGHUP.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        log!("{BACKEND_TYPE}: configuration reloaded");
    }
}

/// On any exit of the process, a FATAL while connecting included: frees the worker's slot.
// SAFETY (caller): an on_proc_exit callback registered with the packed slot reservation as
// its argument, which it only unpacks.
unsafe extern "C-unwind" fn free_slot(_code: std::ffi::c_int, reservation: pg_sys::Datum) {
    let packed = reservation.value() as u64;
    shmem::release_slot((packed >> 32) as usize, packed as u32);
}

// SAFETY: an exported symbol name of this library's own prefix, looked up by the postmaster
// when it starts the worker (bgw_function_name); no other symbol has it.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn backfill_worker_main(slot: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let slot = slot.value();
    let Some((database, generation)) = shmem::slot_reservation(slot) else {
        // Not a reservation of the launcher's (the slot was freed meanwhile).
        return;
    };
    // SAFETY: registers a callback with its argument; it runs at exit while shared memory is
    // still attached (on_proc_exit callbacks run after it is detached).
    unsafe {
        pg_sys::before_shmem_exit(
            Some(free_slot),
            pg_sys::Datum::from(((slot as u64) << 32) | u64::from(generation)),
        )
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    BackgroundWorker::transaction(fix_session_settings);
    // SAFETY: set once the process has started.
    let pid = unsafe { pg_sys::MyProcPid };
    shmem::worker_serving(slot, pid);
    let name = BackgroundWorker::transaction(database_name);
    // Started for the launcher's periodic look: nothing to wait for once idle (unless it
    // found something to run: then it serves the database as any worker).
    let mut looks = shmem::purpose(slot) == Purpose::Look;
    let mut lock_waits = LockWaits::default();

    let mut announced = false;
    let mut trouble = Trouble::default();
    let mut idle_since: Option<Instant> = None;
    while !shmem::shutdown_requested() {
        reload_config_if_asked();
        match in_own_transaction(extension_installed) {
            Ok(true) if !announced => {
                // A look, once a minute, says nothing unless it finds something to run.
                if looks {
                    debug1!("{BACKEND_TYPE} looking at database \"{name}\"");
                } else {
                    log!("{BACKEND_TYPE} started for database \"{name}\"");
                }
                announced = true;
            }
            Ok(true) => {}
            Ok(false) => {
                // The launcher's pass over every database at its start meets many of these.
                debug1!("{BACKEND_TYPE}: extension backfill is not installed in database \"{name}\"; exiting");
                return;
            }
            Err(failure) => {
                trouble.wait_after(&failure, "looking for the extension");
                if trouble.persists() && leave_for_a_while(slot, database) {
                    break;
                }
                continue;
            }
        }
        match drain_one_job(slot, &mut trouble, &mut lock_waits) {
            Drained::Ran => {
                trouble.clear();
                idle_since = None;
                looks = false;
                continue;
            }
            Drained::Idle => trouble.clear(),
            Drained::Failed if trouble.persists() && leave_for_a_while(slot, database) => break,
            Drained::Failed => continue,
        }
        // What the batches did shows in pg_stat_* views once the worker is idle.
        // SAFETY: called between transactions, as backends do before going idle.
        unsafe { pg_sys::pgstat_report_stat(true) };
        let since = *idle_since.get_or_insert_with(Instant::now);
        let linger = if looks {
            Duration::ZERO
        } else {
            settings::idle_linger()
        };
        if since.elapsed() >= linger {
            // From here on an enqueue asks the launcher, which starts a new worker once this
            // one is gone; a last look finds whatever committed before.
            shmem::worker_leaving(slot);
            match in_own_transaction(work_left) {
                Ok(Work::None) => break,
                // Not connected until then (DROP DATABASE would wait for it): the launcher
                // starts a worker when the hold lifts.
                Ok(Work::Later(seconds)) if shmem::request_later(database, seconds) => break,
                // What a look could not run now has a runner, or gets one when the next
                // look comes.
                _ if looks => break,
                Ok(_) | Err(_) => {
                    // Jobs someone else runs (CALL backfill.run) or that were just queued:
                    // stay, to take them when they are free.
                    shmem::worker_serving(slot, pid);
                    idle_since = Some(Instant::now());
                }
            }
        }
        BackgroundWorker::wait_latch(Some(
            linger
                .saturating_sub(since.elapsed())
                .max(Duration::from_millis(10)),
        ));
    }
    if shmem::shutdown_requested() {
        // A job stopped at a batch boundary (SIGTERM to this worker alone) goes on in a new
        // worker; in a server shutting down, the launcher is stopping too and starts none.
        if matches!(in_own_transaction(store::any_unfinished), Ok(true)) {
            shmem::worker_leaving(slot);
            // SAFETY: the database this process is connected to.
            shmem::request(unsafe { pg_sys::MyDatabaseId });
        }
        log!("{BACKEND_TYPE} exiting on shutdown request (database \"{name}\")");
    }
}

fn database_name() -> String {
    // SAFETY: the name of the database this process is connected to.
    unsafe { CStr::from_ptr(pg_sys::get_database_name(pg_sys::MyDatabaseId)) }
        .to_string_lossy()
        .into_owned()
}

/// What this database's unfinished jobs ask of a worker.
enum Work {
    /// Some may run now (someone else may be running them).
    Now,
    /// All are held back (enqueue's not_before, backfill.active_hours) for at least this many
    /// seconds.
    Later(u64),
    None,
}

fn work_left() -> Work {
    let store::Outlook {
        unfinished,
        runnable,
        held_for,
    } = store::outlook();
    if unfinished == 0 {
        return Work::None;
    }
    if shmem::restore_in_progress() {
        return Work::Later(RESTORE_LOOK_AGAIN);
    }
    let window = job::window_closed_for();
    match (runnable, window) {
        (true, None) => Work::Now,
        // The earliest a job may become runnable; a worker started then that finds another
        // hold asks again.
        (runnable, window) => {
            let times = [
                window.filter(|_| runnable).map(u64::from),
                held_for.map(|s| s.max(1) as u64),
            ];
            times
                .into_iter()
                .flatten()
                .min()
                .map_or(Work::Now, Work::Later)
        }
    }
}

/// The longest the worker waits for a lock unless lock_timeout is configured.
const LOCK_WAIT: &CStr = c"10s";
/// Longest wait for the batch turn: a batch stuck behind a lock keeps other workers' batches
/// waiting no longer than this.
const TURN_PATIENCE: Duration = Duration::from_secs(1);

/// The worker's batches: it skips a job whose row someone holds locked (an uncommitted
/// cancel) instead of waiting, may use the foreign-key fast path, splits a job that starts
/// across backfill.workers_per_job workers, and waits out locks (`LockWaits`). (Its lock
/// waits are bounded by `in_own_transaction`, for every transaction.)
fn worker_runner() -> Runner {
    Runner {
        skip_locked_jobs: true,
        foreign_key_fast_path: true,
        split_into: settings::workers_per_job(),
        wait_out_locks: true,
        resume_stopped: false,
    }
}

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

/// The worker's session, whatever the database's or role's defaults say (a database owner
/// may ALTER DATABASE ... SET any of these, and a background worker's connection applies
/// them): the bootstrap superuser it connected as, session user and current role alike
/// (`session_authorization` and `role` would otherwise make it another role, which may not
/// even read the job table), a search path no database user can write to, READ COMMITTED,
/// so every statement sees what committed before it, writable transactions, and row-level
/// security applied as to any session.
fn fix_session_settings() {
    Spi::run(
        "SELECT pg_catalog.set_config('session_authorization', r.rolname, false),
                pg_catalog.set_config('role', 'none', false),
                pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false),
                pg_catalog.set_config('default_transaction_isolation', 'read committed', false),
                pg_catalog.set_config('default_transaction_read_only', 'off', false),
                pg_catalog.set_config('row_security', 'on', false)
           FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) 10",
    )
    .unwrap_or_else(|e| error!("{BACKEND_TYPE}: could not set its session settings: {e}"));
    let bootstrap = pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID);
    // SAFETY: reading the session's and the current user id.
    let (session, current) = unsafe { (pg_sys::GetSessionUserId(), pg_sys::GetUserId()) };
    if session != bootstrap || current != bootstrap {
        error!(
            "{BACKEND_TYPE}: runs as role {} (session {}) instead of the bootstrap superuser",
            current.to_u32(),
            session.to_u32()
        );
    }
}

/// Runs `work` in a transaction of its own and catches an ERROR in it (rolled back with a
/// subtransaction) instead of letting it end the process. Every lock the transaction waits
/// for, job rows and tables alike, is waited for at most LOCK_WAIT unless lock_timeout is
/// configured: a lock someone holds never stalls the worker.
fn in_own_transaction<R>(work: impl FnOnce() -> R) -> Result<R, Failure> {
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
/// Failures in a row outside any job after which the worker leaves rather than stay
/// connected (it would hold up DROP DATABASE) ...
const LEAVE_AFTER: u32 = 3;
/// ... and asks the launcher for another worker this much later (a committed enqueue or
/// model update asks for one at once).
const COME_BACK_AFTER: u64 = 60;

/// Leaves the database after failures that keep coming back (its extension's schema renamed,
/// say), asking the launcher for a worker later; false when the launcher's table of such
/// requests is full, and the worker stays.
fn leave_for_a_while(slot: usize, database: pg_sys::Oid) -> bool {
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
        shmem::sleep(delay);
    }

    /// Whether the failures came LEAVE_AFTER times in a row.
    fn persists(&self) -> bool {
        self.failures >= LEAVE_AFTER
    }

    fn clear(&mut self) {
        if self.failures > 0 {
            log!("{BACKEND_TYPE}: working again");
        }
        self.failures = 0;
        self.last_message = None;
    }
}

fn extension_installed() -> bool {
    query::optional_value::<i32>("SELECT 1 FROM pg_extension WHERE extname = 'backfill'", &[])
        .is_some()
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

thread_local! {
    /// The log has said that jobs wait for backfill.active_hours (said once until it opens).
    static WINDOW_NOTED: Cell<bool> = const { Cell::new(false) };
    /// The log has said that jobs wait for a pg_restore (said once until it is gone).
    static RESTORE_NOTED: Cell<bool> = const { Cell::new(false) };
}

/// How soon a worker that left a database pg_restore is restoring looks again.
const RESTORE_LOOK_AGAIN: u64 = 5;

/// Whether pg_restore is restoring this database (`shmem::restore_in_progress`): its jobs
/// must not read tables that are half loaded (`stopping`: the job this process would run a
/// batch of next). The first time, the log says so.
fn held_by_restore(stopping: Option<i64>) -> bool {
    if !shmem::restore_in_progress() {
        RESTORE_NOTED.set(false);
        return false;
    }
    match stopping {
        Some(job_id) => log!("{BACKEND_TYPE}: job {job_id} stops at a batch boundary: pg_restore is restoring this database"),
        None if !RESTORE_NOTED.get() => log!(
            "{BACKEND_TYPE}: jobs wait while pg_restore is restoring this database (its tables may be half loaded)"
        ),
        None => {}
    }
    RESTORE_NOTED.set(true);
    true
}

/// Whether backfill.active_hours keeps batches from starting now (`stopping`: the job this
/// process would run a batch of next). Without a window no transaction is started.
fn outside_active_hours(stopping: Option<i64>) -> Result<bool, Failure> {
    if settings::active_hours().is_none() {
        WINDOW_NOTED.set(false);
        return Ok(false);
    }
    in_own_transaction(|| window_closed_now(stopping))
}

/// `outside_active_hours` in a transaction; the first time the window holds jobs back, the
/// log says until when.
fn window_closed_now(stopping: Option<i64>) -> bool {
    let Some(seconds) = job::window_closed_for() else {
        WINDOW_NOTED.set(false);
        return false;
    };
    let hours = settings::active_hours_text();
    let opens = format!("it opens in {}h{:02}m", seconds / 3600, seconds % 3600 / 60);
    match stopping {
        Some(job_id) => {
            log!("{BACKEND_TYPE}: job {job_id} stops at a batch boundary outside backfill.active_hours '{hours}'; {opens}");
            WINDOW_NOTED.set(true);
        }
        None if !WINDOW_NOTED.get() && store::any_unfinished() => {
            log!("{BACKEND_TYPE}: jobs wait for backfill.active_hours '{hours}'; {opens}");
            WINDOW_NOTED.set(true);
        }
        None => {}
    }
    true
}

/// Jobs waiting out a lock someone holds (`Batch::Blocked`, `Begin::Blocked`): the worker goes
/// on with other jobs, tries each again LOCK_RETRY later (each try waits for the lock for as
/// long as the worker's lock waits are bounded, 10 s unless lock_timeout says), and the log
/// says what it waits for once a minute.
#[derive(Default)]
struct LockWaits {
    jobs: HashMap<i64, LockWait>,
}

struct LockWait {
    since: Instant,
    retry_at: Instant,
    said_at: Option<Instant>,
}

/// How soon a job found waiting for a lock is tried again (other jobs go first).
const LOCK_RETRY: Duration = Duration::from_secs(1);
/// How often the log says again that a job waits for a lock.
const LOCK_SAY_EVERY: Duration = Duration::from_secs(60);

impl LockWaits {
    /// `job_id` waits for a lock (`why`, from the engine): tried again later.
    fn blocked(&mut self, job_id: i64, why: &str) {
        let now = Instant::now();
        let wait = self.jobs.entry(job_id).or_insert(LockWait {
            since: now,
            retry_at: now,
            said_at: None,
        });
        wait.retry_at = now + LOCK_RETRY;
        if wait.said_at.is_none_or(|at| at.elapsed() >= LOCK_SAY_EVERY) {
            log!("{BACKEND_TYPE}: {why} (it goes on once the lock is released)");
            wait.said_at = Some(now);
        }
    }

    /// The jobs not to try before their time.
    fn waiting(&self) -> Vec<i64> {
        let now = Instant::now();
        self.jobs
            .iter()
            .filter(|(_, wait)| wait.retry_at > now)
            .map(|(&job_id, _)| job_id)
            .collect()
    }

    /// `job_id` ran a batch (or ended): it waits no more.
    fn went_on(&mut self, job_id: i64) {
        if let Some(wait) = self.jobs.remove(&job_id) {
            if wait.said_at.is_some() {
                log!(
                    "{BACKEND_TYPE}: job {job_id} goes on after waiting {} s for a lock",
                    wait.since.elapsed().as_secs()
                );
            }
        }
    }
}

/// Runs the oldest runnable job (or part of a split job) to its end (or until shutdown).
fn drain_one_job(slot: usize, trouble: &mut Trouble, lock_waits: &mut LockWaits) -> Drained {
    if held_by_restore(None) {
        return Drained::Idle;
    }
    match outside_active_hours(None) {
        Ok(false) => {}
        Ok(true) => return Drained::Idle,
        Err(failure) => {
            trouble.wait_after(&failure, "reading the time of day");
            return Drained::Failed;
        }
    }
    let job_id = match in_own_transaction(|| claim_next_job(lock_waits)) {
        Ok(Some(Claimed { job_id, parts_left })) => {
            // After the commit: the split and the part's start are visible to the helper.
            if parts_left {
                shmem::ask_for_helper(slot);
            }
            shmem::mark_running_job(slot);
            job_id
        }
        Ok(None) => return Drained::Idle,
        Err(failure) => {
            trouble.wait_after(&failure, "looking for a job");
            return Drained::Failed;
        }
    };
    let mut failures = 0;
    let mut throttle = Throttle::default();
    // Standing aside for a lower part of the same job, and whether none is left to.
    let mut aside = false;
    let mut lowest_part = false;
    loop {
        if shmem::shutdown_requested() {
            log!("{BACKEND_TYPE}: stopping job {job_id} at a batch boundary on shutdown request");
            release(slot, job_id, &throttle);
            return Drained::Ran;
        }
        reload_config_if_asked();
        if outside_active_hours(Some(job_id)).unwrap_or(false) || held_by_restore(Some(job_id)) {
            release(slot, job_id, &throttle);
            return Drained::Ran;
        }
        if throttle.application_busy() && !lowest_part {
            match in_own_transaction(|| lower_part_running(job_id)) {
                Ok(true) => {
                    if !aside {
                        shmem::mark_no_job(slot);
                        aside = true;
                    }
                    shmem::sleep(ASIDE_LOOK);
                    throttle.look();
                    continue;
                }
                // Parts do not come back: once none below runs, none will.
                Ok(false) => lowest_part = true,
                Err(_) => {}
            }
        }
        if aside {
            shmem::mark_running_job(slot);
            aside = false;
        }
        let turn = throttle.application_busy() && shmem::take_batch_turn(slot, TURN_PATIENCE);
        let started = Instant::now();
        let batch = in_own_transaction(|| batch::run_batch(job_id, worker_runner()));
        let took = started.elapsed();
        if turn {
            shmem::end_batch_turn(slot, throttle.turn_gap(took));
        }
        match batch {
            Ok(Batch::More) => {
                failures = 0;
                lock_waits.went_on(job_id);
                shmem::sleep(settings::batch_delay() + throttle.pause(took));
            }
            Ok(Batch::Blocked(why)) => {
                // Nothing done, nothing counted: other jobs go first, this one comes back.
                lock_waits.blocked(job_id, &why);
                release(slot, job_id, &throttle);
                return Drained::Ran;
            }
            Ok(Batch::Busy) => {
                // Someone holds the job row (an open transaction that cancels it): other jobs
                // go first, and this one is looked at again later.
                release(slot, job_id, &throttle);
                return Drained::Ran;
            }
            Ok(Batch::Finished(_)) => {
                lock_waits.went_on(job_id);
                release(slot, job_id, &throttle);
                if let Err(failure) = in_own_transaction(batch::count_due_coverage) {
                    warning!("{BACKEND_TYPE}: job {job_id}: could not count the coverage of its keys: {failure}");
                }
                return Drained::Ran;
            }
            Err(failure) => {
                failures += 1;
                let message = failure.to_string();
                if failures >= JOB_ATTEMPTS {
                    warning!(
                        "{BACKEND_TYPE}: job {job_id} failed {failures} times outside a batch; marking it failed: {message}"
                    );
                    if let Err(again) = in_own_transaction(|| batch::fail_job(job_id, &message)) {
                        warning!("{BACKEND_TYPE}: could not mark job {job_id} failed: {again}");
                        trouble.wait_after(&again, "marking a job failed");
                    }
                    release(slot, job_id, &throttle);
                    return Drained::Ran;
                }
                let delay = Duration::from_secs(1) * (1 << (failures - 1));
                warning!(
                    "{BACKEND_TYPE}: job {job_id} failed outside a batch (attempt {failures} of {JOB_ATTEMPTS}), \
                     trying again in {} s: {message}",
                    delay.as_secs()
                );
                shmem::sleep(delay);
            }
        }
    }
}

/// How often a worker standing aside for a lower part of its job looks again.
const ASIDE_LOOK: Duration = Duration::from_millis(100);

/// Whether a lower-numbered part of the job `job_id` is a part of is unfinished and being run
/// by some process. While the application keeps the server busy the batches run one at a
/// time anyway (`shmem::take_batch_turn`); a split job's parts then go one after another, in
/// one process each, instead of alternating between processes, each of whose batches comes
/// after a longer pause and in another place of the tables, and runs a tenth to a fifth
/// longer in front of the application's saves. A part whose runner is gone is not waited for.
fn lower_part_running(job_id: i64) -> bool {
    store::unfinished_other_parts(job_id)
        .into_iter()
        .any(|part| part < job_id && !job::is_free(part))
}

/// The adaptive throttle (backfill.adaptive_throttle): a pause after each batch in proportion
/// to the batch's time, to how busy the server's other client sessions are (smoothed over the
/// last batches) and to how many backfill workers run jobs. On a server with nothing else to
/// do the workers run flat out; while the application keeps every CPU busy, all of them
/// together take about a quarter of one (n workers each pause 4n - 1 times their batch's
/// time), so a job split across workers weighs on the application no more than one worker
/// does.
struct Throttle {
    /// Busy sessions, smoothed.
    load: f64,
    /// The server's CPUs, read once per job (on Linux it reads cgroup files).
    cpus: f64,
    /// This job so far: the batches, their time, and the pauses after them.
    batches: u64,
    working: Duration,
    paused: Duration,
    /// Pause owed but not yet taken: `shmem::sleep` sleeps whole milliseconds, so the
    /// fractions add up here until they make one.
    owed: Duration,
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
    fn application_busy(&self) -> bool {
        settings::adaptive_throttle() && self.load / self.cpus >= 0.5
    }

    /// The pause after a batch of `batch`'s length that keeps `workers` running jobs at
    /// about a quarter of one CPU together while the application keeps every CPU busy.
    fn share(&self, batch: Duration, workers: usize) -> Duration {
        batch.mul_f64((self.load / self.cpus).min(1.0) * (4.0 * workers.max(1) as f64 - 1.0))
    }

    /// The gap a batch that had the turn leaves before the next batch on the server: the
    /// pause one worker alone would take, so that batches under load come one at a time and
    /// evenly spaced rather than two back to back and then none (each worker's own pause
    /// ends wherever another worker's batch happens to be).
    fn turn_gap(&self, batch: Duration) -> Duration {
        self.share(batch, 1)
    }

    /// Takes one more look at how busy the server's other sessions are.
    fn look(&mut self) {
        self.load = 0.7 * self.load + 0.3 * shmem::busy_sessions() as f64;
    }

    fn pause(&mut self, batch: Duration) -> Duration {
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

/// Lets go of a job: its run lock is released directly (no SQL), outside any transaction.
/// The log says how long the throttle held this process back on it, so that an operator
/// can tell a slow job from a throttled one.
fn release(slot: usize, job_id: i64, throttle: &Throttle) {
    batch::end(job_id);
    shmem::mark_no_job(slot);
    if throttle.batches > 0 {
        log!(
            "{BACKEND_TYPE}: job {job_id}: {} batches took {:.3} s; the adaptive throttle paused {:.3} s after them for the server's load",
            throttle.batches,
            throttle.working.as_secs_f64(),
            throttle.paused.as_secs_f64()
        );
    }
}

/// A job this process now holds.
struct Claimed {
    job_id: i64,
    /// It is a part of a split job, and another part has no runner yet.
    parts_left: bool,
}

/// The oldest queued or running job that no one else runs, now held by this process. A
/// split job's parts come where the job does, in id order; a job split just now is looked at
/// again for its first part. Jobs waiting out a lock are skipped until their time
/// (`lock_waits`), and a start that meets a lock makes the job one of them.
fn claim_next_job(lock_waits: &mut LockWaits) -> Option<Claimed> {
    let runner = worker_runner();
    let waiting = lock_waits.waiting();
    let mut looked_again = false;
    'look: loop {
        let unfinished = store::runnable();
        for job_id in unfinished.into_iter().filter(|id| !waiting.contains(id)) {
            match batch::begin(job_id, runner) {
                Begin::Started => {
                    return Some(Claimed {
                        job_id,
                        parts_left: other_parts_free(job_id),
                    })
                }
                Begin::Split(_) if !looked_again => {
                    looked_again = true;
                    continue 'look;
                }
                Begin::Blocked(why) => lock_waits.blocked(job_id, &why),
                _ => {}
            }
        }
        return None;
    }
}

/// Whether `job_id` is a part of a job whose other unfinished parts no process holds.
fn other_parts_free(job_id: i64) -> bool {
    store::unfinished_other_parts(job_id)
        .into_iter()
        .any(job::is_free)
}
