//! A worker: `backend_type = 'backfill worker'`, started by the launcher for one database, in a
//! slot of shared memory reserved for it. It drains that database's queued jobs oldest first
//! through the same batch engine as `CALL backfill.run`, one transaction per batch; a committed
//! enqueue sets its latch. With nothing left to run it waits `backfill.naptime` (2 s at most)
//! for more, then exits: no idle worker stays connected to a database, so DROP DATABASE and
//! DROP EXTENSION never wait for one.

use super::drain::{drain_one_job, Drained};
use super::holds::{restore_in_progress, RESTORE_LOOK_AGAIN};
use super::lock_waits::{LockWaits, LOCK_AWAY_SECONDS};
use super::session::{fix_session_settings, in_own_transaction, reload_config_if_asked};
use super::trouble::{leave_for_a_while, Trouble};
use crate::job::{self, store};
use crate::pg::settings;
use crate::pg::version::{self, Objects};
use crate::shmem::{self, Purpose, WORKER_TYPE as BACKEND_TYPE};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use std::ffi::CStr;
use std::time::{Duration, Instant};

/// On any exit of the process, a FATAL while connecting included: frees the worker's slot.
// SAFETY (caller): an on_proc_exit callback registered with the packed slot reservation as
// its argument, which it only unpacks.
pub(super) unsafe extern "C-unwind" fn free_slot(
    _code: std::ffi::c_int,
    reservation: pg_sys::Datum,
) {
    let packed = reservation.value() as u64;
    shmem::release_slot((packed >> 32) as usize, packed as u32);
}

// SAFETY: an exported symbol name of this library's own prefix, looked up by the postmaster
// when it starts the worker (bgw_function_name); no other symbol has it.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn backfill_worker_main(slot: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    if let Some(mut worker) = Worker::start(slot.value()) {
        worker.serve();
    }
}

/// How soon a worker comes back to a database whose objects are another version's while it
/// has unfinished jobs: they resume this soon after `ALTER EXTENSION backfill UPDATE`.
const VERSION_LOOK_AGAIN_SECONDS: u64 = 10;

/// A worker's state across the turns of its loop.
struct Worker {
    slot: usize,
    database: pg_sys::Oid,
    pid: i32,
    /// The database's name, for log lines.
    name: String,
    /// Started for the launcher's periodic look: nothing to wait for once idle (unless it
    /// found something to run: then it serves the database as any worker).
    looks: bool,
    /// The log has said that the worker serves the database.
    announced: bool,
    trouble: Trouble,
    lock_waits: LockWaits,
    /// Since when the worker has found nothing to run.
    idle_since: Option<Instant>,
}

/// What one turn of the loop leaves the worker to do.
enum Next {
    /// Look for work again at once.
    Look,
    /// Sleep on the latch, then look again.
    Sleep,
    /// Leave (the loop ends; a shutdown request is handled after it).
    Leave,
    /// Exit at once, saying nothing more (the extension is not installed).
    Exit,
}

impl Worker {
    /// Takes slot `slot` reserved by the launcher, connects to its database and announces
    /// the worker there; `None` when the reservation is gone (the slot was freed meanwhile).
    fn start(slot: usize) -> Option<Worker> {
        let (database, generation) = shmem::slot_reservation(slot)?;
        // SAFETY: registers a callback with its argument; it runs at exit while shared memory
        // is still attached (on_proc_exit callbacks run after it is detached).
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
        Some(Worker {
            slot,
            database,
            pid,
            name: BackgroundWorker::transaction(database_name),
            looks: shmem::purpose(slot) == Purpose::Look,
            announced: false,
            trouble: Trouble::default(),
            lock_waits: LockWaits::default(),
            idle_since: None,
        })
    }

    /// The loop: jobs drained while there are any, a short linger when there are none, and
    /// a last look before leaving.
    fn serve(&mut self) {
        while !shmem::shutdown_requested() {
            reload_config_if_asked();
            match self.turn() {
                Next::Look => continue,
                Next::Sleep => {}
                Next::Leave => break,
                Next::Exit => return,
            }
        }
        if shmem::shutdown_requested() {
            self.hand_on_at_shutdown();
        }
    }

    fn turn(&mut self) -> Next {
        match in_own_transaction(version::objects) {
            Ok(Objects::Current) => {
                shmem::version_matches(self.database.to_u32());
                self.announce();
            }
            Ok(Objects::Other { message, hint }) => {
                // The library's statements would fail on the older tables: nothing runs here
                // until ALTER EXTENSION backfill UPDATE (a look once a minute finds out).
                if shmem::version_mismatch_to_say(self.database.to_u32()) {
                    log!("{BACKEND_TYPE}: {message}; its jobs wait. {hint}");
                }
                debug1!(
                    "{BACKEND_TYPE} leaves database \"{}\": its extension objects are not those of the library",
                    self.name
                );
                // Jobs waiting for the update start soon after it, not at the next minute's
                // look. (The query reads what every version's job table has.)
                if in_own_transaction(store::any_unfinished).unwrap_or(false) {
                    shmem::request_later(self.database, VERSION_LOOK_AGAIN_SECONDS);
                }
                return Next::Exit;
            }
            Ok(Objects::None) => {
                // The launcher's pass over every database at its start meets many of these.
                debug1!(
                    "{BACKEND_TYPE}: extension backfill is not installed in database \"{}\"; exiting",
                    self.name
                );
                return Next::Exit;
            }
            Err(failure) => {
                self.trouble
                    .wait_after(&failure, "looking for the extension");
                return self.after_trouble();
            }
        }
        match drain_one_job(self.slot, &mut self.trouble, &mut self.lock_waits) {
            Drained::Ran => {
                self.trouble.clear();
                self.idle_since = None;
                self.looks = false;
                return Next::Look;
            }
            Drained::Blocked => {
                self.trouble.clear();
                self.idle_since = None;
                self.looks = false;
                return self.give_way_while_locked().unwrap_or(Next::Look);
            }
            Drained::Idle => self.trouble.clear(),
            Drained::Failed => return self.after_trouble(),
        }
        if let Some(next) = self.give_way_while_locked() {
            return next;
        }
        self.idle()
    }

    /// When every job this worker could run waits out someone's lock, it leaves: its slot goes
    /// back to the launcher for other databases' jobs, and a worker comes back to try again
    /// LOCK_AWAY_SECONDS later. A role that may lock a table (UPDATE on it is enough for
    /// SHARE) thus holds back the jobs on that table, and never the server's workers.
    fn give_way_while_locked(&mut self) -> Option<Next> {
        if self.lock_waits.jobs.is_empty() {
            return None;
        }
        // From here on an enqueue asks the launcher, as when an idle worker leaves.
        shmem::worker_leaving(self.slot);
        let all_wait = in_own_transaction(|| self.lock_waits.all_runnable_wait()).unwrap_or(false);
        if all_wait && shmem::request_later(self.database, LOCK_AWAY_SECONDS) {
            return Some(Next::Leave);
        }
        shmem::worker_serving(self.slot, self.pid);
        None
    }

    /// Once: a look, once a minute, says nothing unless it finds something to run.
    fn announce(&mut self) {
        if self.announced {
            return;
        }
        if self.looks {
            debug1!("{BACKEND_TYPE} looking at database \"{}\"", self.name);
        } else {
            log!("{BACKEND_TYPE} started for database \"{}\"", self.name);
        }
        self.announced = true;
    }

    /// After a failure outside any batch: leave the database for a while when failures
    /// persist, or else look again (the trouble's own wait came first).
    fn after_trouble(&mut self) -> Next {
        if self.trouble.persists() && leave_for_a_while(self.slot, self.database) {
            Next::Leave
        } else {
            Next::Look
        }
    }

    /// Nothing ran: linger for what is queued next, then a last look before leaving.
    fn idle(&mut self) -> Next {
        // What the batches did shows in pg_stat_* views once the worker is idle.
        // SAFETY: called between transactions, as backends do before going idle.
        unsafe { pg_sys::pgstat_report_stat(true) };
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        let linger = if self.looks {
            Duration::ZERO
        } else {
            settings::idle_linger()
        };
        if since.elapsed() >= linger {
            // From here on an enqueue asks the launcher, which starts a new worker once this
            // one is gone; a last look finds whatever committed before.
            shmem::worker_leaving(self.slot);
            match in_own_transaction(work_left) {
                Ok(Work::None) => return Next::Leave,
                // Not connected until then (DROP DATABASE would wait for it): the launcher
                // starts a worker when the hold lifts.
                Ok(Work::Later(seconds)) if shmem::request_later(self.database, seconds) => {
                    return Next::Leave
                }
                // What a look could not run now has a runner, or gets one when the next
                // look comes.
                _ if self.looks => return Next::Leave,
                Ok(_) | Err(_) => {
                    // Jobs someone else runs (CALL backfill.run) or that were just queued:
                    // stay, to take them when they are free.
                    shmem::worker_serving(self.slot, self.pid);
                    self.idle_since = Some(Instant::now());
                }
            }
        }
        BackgroundWorker::wait_latch(Some(
            linger
                .saturating_sub(since.elapsed())
                .max(Duration::from_millis(10)),
        ));
        Next::Sleep
    }

    /// A job stopped at a batch boundary (SIGTERM to this worker alone) goes on in a new
    /// worker; in a server shutting down, the launcher is stopping too and starts none.
    fn hand_on_at_shutdown(&self) {
        if matches!(in_own_transaction(store::any_unfinished), Ok(true)) {
            shmem::worker_leaving(self.slot);
            // SAFETY: the database this process is connected to.
            shmem::request(unsafe { pg_sys::MyDatabaseId });
        }
        log!(
            "{BACKEND_TYPE} exiting on shutdown request (database \"{}\")",
            self.name
        );
    }
}

pub(super) fn database_name() -> String {
    // SAFETY: the name of the database this process is connected to.
    unsafe { CStr::from_ptr(pg_sys::get_database_name(pg_sys::MyDatabaseId)) }
        .to_string_lossy()
        .into_owned()
}

/// What this database's unfinished jobs ask of a worker.
pub(super) enum Work {
    /// Some may run now (someone else may be running them).
    Now,
    /// All are held back (enqueue's not_before, backfill.active_hours) for at least this many
    /// seconds.
    Later(u64),
    None,
}

pub(super) fn work_left() -> Work {
    let store::Outlook {
        unfinished,
        runnable,
        held_for,
    } = store::outlook();
    if unfinished == 0 {
        return Work::None;
    }
    if restore_in_progress() {
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
