//! The `backfill.*` settings (GUCs).

use crate::extract::python::PythonVersion;
use crate::extract::render::{Style, ValueFormat};
use crate::pg::window::{self, Window};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use pgrx::pg_sys;
use std::ffi::{c_char, c_void, CStr, CString};
use std::time::Duration;

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ValueFormatSetting {
    #[name = c"python"]
    Python,
    #[name = c"json"]
    Json,
}

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum PythonVersionSetting {
    #[name = c"3.11"]
    V3_11,
    #[name = c"3.12"]
    V3_12,
    #[name = c"3.13"]
    V3_13,
    #[name = c"3.14"]
    V3_14,
}

pub static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(8);
pub static WORKERS_PER_JOB: GucSetting<i32> = GucSetting::<i32>::new(2);
/// The most workers there can be: the slots in shared memory.
pub const WORKER_SLOTS: usize = 64;
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(100);
pub static BATCH_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static ADAPTIVE_THROTTLE: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static VALUE_FORMAT: GucSetting<ValueFormatSetting> =
    GucSetting::<ValueFormatSetting>::new(ValueFormatSetting::Python);
/// SpiffWorkflow's backend image: `FROM python:3.13-alpine`.
pub static PYTHON_VERSION: GucSetting<PythonVersionSetting> =
    GucSetting::<PythonVersionSetting>::new(PythonVersionSetting::V3_13);
/// backfill.active_hours, owned by PostgreSQL's GUC machinery (defined directly, for its check
/// hook: a malformed window is refused by ALTER SYSTEM, SET and a reload, never guessed at).
static mut ACTIVE_HOURS: *mut c_char = std::ptr::null_mut();

pub fn init() {
    GucRegistry::define_bool_guc(
        c"backfill.enabled",
        c"Whether process model updates enqueue backfill jobs.",
        c"When off, a change of metadata_extraction_paths enqueues nothing (a NOTICE says so); \
          backfill.enqueue() still works.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // PostgreSQL refuses to define a postmaster-context setting after server start (the
    // session loading the library would end with FATAL); without the preload there are no
    // workers for it to bound anyway.
    // SAFETY: reading a postmaster global set while shared_preload_libraries are loaded.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_int_guc(
            c"backfill.max_workers",
            c"Most backfill worker processes running at once, across all databases.",
            c"The launcher starts a worker for a database when a job is queued there (and once \
              for every database at server start, to resume interrupted jobs); it exits when \
              the database has nothing left to run. The launcher itself is not counted; \
              max_worker_processes must leave room for the launcher and these. 0: no workers, \
              jobs run with CALL backfill.run.",
            &MAX_WORKERS,
            0,
            WORKER_SLOTS as i32,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"backfill.workers_per_job",
        c"Most workers one job's instances are split across.",
        c"When a worker starts a job, it splits the job's id range into up to this many parts \
          of equal instance counts, each with its own cursor and counters, and has the launcher \
          start workers for the others. A part gets at least 10 batches: a job smaller than 20 \
          batches stays whole. Read when a job starts (a job already split keeps its parts); \
          bounded by backfill.max_workers. 1: every job runs in one worker.",
        &WORKERS_PER_JOB,
        1,
        WORKER_SLOTS as i32,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"backfill.batch_size",
        c"Process instances per batch; each batch commits on its own.",
        c"A batch writes its rows and advances the job's cursor in one transaction, so a crash \
          loses at most one batch. Larger batches commit less often; the default of 100 is as \
          fast as 1,000 here. Read at the start of every batch.",
        &BATCH_SIZE,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"backfill.batch_delay",
        c"Pause between two batches, to throttle a backfill.",
        c"0 runs batches back to back. A pause leaves the server to the application between \
          batches, at the cost of a longer job; CALL backfill.run pauses too.",
        &BATCH_DELAY_MS,
        0,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"backfill.adaptive_throttle",
        c"Whether a worker pauses between batches while the application is busy.",
        c"After each batch a worker pauses for as long as the batch took, times the share of the \
          server's CPUs that other client sessions were busy on (0 when the server is idle, 1 \
          when every CPU has a busy session), times 4n - 1 when n workers run jobs, on top of \
          backfill.batch_delay: while the application keeps every CPU busy, all workers \
          together run about a quarter of the time. It keeps the application's latency close to what it \
          is without a backfill; off runs batches back to back.",
        &ADAPTIVE_THROTTLE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"backfill.naptime",
        c"How long an idle worker waits for more work before it exits (at most 2 s), and the launcher's longest sleep.",
        c"A committed enqueue or model update wakes the database's worker (or has the \
          launcher start one) at once. A worker with nothing to run waits this long (2 s at \
          most) for more work, then exits, so that no idle worker stays connected to a \
          database: DROP DATABASE waits 5 s for other sessions to leave.",
        &NAPTIME_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_enum_guc(
        c"backfill.value_format",
        c"How extracted values are rendered: python (as SpiffWorkflow stores them) or json.",
        c"python renders as Python's str() does (True, None, ['a', 1], 1e+16); json renders as \
          jsonb #>> '{}' does.",
        &VALUE_FORMAT,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"backfill.python_version",
        c"The Python whose str() the python value format reproduces: 3.11, 3.12, 3.13 or 3.14.",
        c"Set it to the Python that runs SpiffWorkflow (its backend image runs 3.13). It selects \
          the Unicode data deciding which characters repr() escapes inside lists and dicts \
          (3.11: Unicode 14.0, 3.12: 15.0, 3.13: 15.1, 3.14: 16.0) and how deeply nested a \
          document json.loads reads and str() prints.",
        &PYTHON_VERSION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: defines a string setting whose variable PostgreSQL owns from here on.
    unsafe {
        pg_sys::DefineCustomStringVariable(
            c"backfill.active_hours".as_ptr(),
            c"When workers run batches: empty for any time, or ranges of the day such as 22:00-06:00.".as_ptr(),
            c"In the server's time zone; several ranges are separated by commas \
              (12:00-13:00, 20:00-24:00). Outside them no worker starts a batch: a job in \
              progress stops at its batch boundary and continues when the window opens, and the \
              progress view says when. CALL backfill.run is not held back."
                .as_ptr(),
            &raw mut ACTIVE_HOURS,
            c"".as_ptr(),
            pg_sys::GucContext::PGC_SIGHUP,
            0,
            Some(check_active_hours),
            None,
            None,
        );
    }
    // SAFETY: called from _PG_init after the variables above are defined.
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    unsafe {
        pg_sys::MarkGUCPrefixReserved(c"backfill".as_ptr())
    };
    #[cfg(any(feature = "pg13", feature = "pg14"))]
    // SAFETY: as above.
    unsafe {
        pg_sys::EmitWarningsOnPlaceholders(c"backfill".as_ptr())
    };
}

/// How values are rendered: backfill.value_format and backfill.python_version.
pub fn style() -> Style {
    let format = match VALUE_FORMAT.get() {
        ValueFormatSetting::Python => ValueFormat::Python,
        ValueFormatSetting::Json => ValueFormat::Json,
    };
    Style {
        format,
        python: python_version(),
    }
}

pub fn python_version() -> PythonVersion {
    match PYTHON_VERSION.get() {
        PythonVersionSetting::V3_11 => PythonVersion::V3_11,
        PythonVersionSetting::V3_12 => PythonVersion::V3_12,
        PythonVersionSetting::V3_13 => PythonVersion::V3_13,
        PythonVersionSetting::V3_14 => PythonVersion::V3_14,
    }
}

pub fn enabled() -> bool {
    ENABLED.get()
}

pub fn max_workers() -> usize {
    MAX_WORKERS.get().max(0) as usize
}

/// How many parts a job starting now may be split into (never more than there are workers).
pub fn workers_per_job() -> usize {
    (WORKERS_PER_JOB.get().max(1) as usize).min(max_workers().max(1))
}

pub fn batch_size() -> i64 {
    i64::from(BATCH_SIZE.get())
}

pub fn batch_delay() -> Duration {
    Duration::from_millis(BATCH_DELAY_MS.get().max(0) as u64)
}

pub fn adaptive_throttle() -> bool {
    ADAPTIVE_THROTTLE.get()
}

pub fn naptime() -> Duration {
    Duration::from_millis(NAPTIME_MS.get().max(10) as u64)
}

/// How long an idle worker waits for more work before it exits.
pub fn idle_linger() -> Duration {
    naptime().min(Duration::from_secs(2))
}

/// Refuses a malformed backfill.active_hours with what is wrong in it.
// SAFETY (caller): PostgreSQL's GUC machinery calls it with `newval` pointing at the proposed
// value (a C string or NULL), as a GucStringCheckHook.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_active_hours(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes the proposed value, a C string or NULL.
    let text = unsafe {
        if newval.is_null() || (*newval).is_null() {
            return true;
        }
        CStr::from_ptr(*newval).to_string_lossy().into_owned()
    };
    match window::parse(&text) {
        Ok(_) => true,
        Err(problem) => {
            let detail = CString::new(problem).unwrap_or_default();
            // SAFETY: what GUC_check_errdetail does: a palloc'd copy the caller reports.
            unsafe {
                pg_sys::GUC_check_errcode(
                    pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32,
                );
                pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr());
            }
            false
        }
    }
}

/// The setting as written (empty when none).
pub fn active_hours_text() -> String {
    // SAFETY: the variable PostgreSQL keeps for the setting: NULL or a C string.
    unsafe {
        let value = ACTIVE_HOURS;
        if value.is_null() {
            String::new()
        } else {
            CStr::from_ptr(value).to_string_lossy().into_owned()
        }
    }
}

/// The window of backfill.active_hours; None when batches may start at any time.
pub fn active_hours() -> Option<Window> {
    // Checked when set, so this parses.
    window::parse(&active_hours_text()).ok().flatten()
}
