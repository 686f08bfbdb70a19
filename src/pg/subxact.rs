//! Running a piece of work in a subtransaction, so that an ERROR in it rolls back only that
//! piece and the caller's transaction goes on (what PL/pgSQL's EXCEPTION blocks do).

use pgrx::pg_sys::panic::{CaughtError, ErrorReportWithLevel};
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;

/// An ERROR caught and rolled back.
#[derive(Debug)]
pub struct Failure {
    /// Five-character SQLSTATE, e.g. "40P01".
    pub sqlstate: String,
    pub message: String,
    /// What to do about it, when the error says.
    pub hint: Option<String>,
    caught: Box<CaughtError>,
}

impl Failure {
    /// The failure an ERROR caught by `PgTryBuilder` was.
    pub fn new(caught: CaughtError) -> Failure {
        let report = report_of(&caught);
        Failure {
            sqlstate: sqlstate_text(report.sql_error_code()),
            message: report.message().to_owned(),
            hint: report.hint().map(str::to_owned),
            caught: Box::new(caught),
        }
    }

    /// "message (SQLSTATE): hint", or without the hint when there is none: a job's last error
    /// when the failure ends the job, so that it says what to do.
    pub fn with_hint(&self) -> String {
        match &self.hint {
            Some(hint) => format!("{self}: {hint}"),
            None => self.to_string(),
        }
    }

    /// Raises the error again, as if it had never been caught.
    pub fn rethrow(self) -> ! {
        self.caught.rethrow()
    }
}

/// "message (SQLSTATE)", as logs and `job.last_error` show a failure.
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.sqlstate)
    }
}

fn report_of(caught: &CaughtError) -> &ErrorReportWithLevel {
    match caught {
        CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => report,
        CaughtError::RustPanic { ereport, .. } => ereport,
    }
}

/// The text form of a packed SQLSTATE (six bits a character, first character lowest).
pub fn sqlstate_text(code: PgSqlErrorCode) -> String {
    let packed = code as i32;
    (0..5)
        .map(|i| char::from(b'0' + ((packed >> (6 * i)) & 0x3f) as u8))
        .collect()
}

/// Runs `work` in an internal subtransaction: committed into the current transaction when it
/// returns, rolled back (and the error returned) when it raises. Values returned must be
/// owned by Rust: memory of the subtransaction is gone afterwards.
pub fn in_subtransaction<R>(work: impl FnOnce() -> R) -> Result<R, Failure> {
    // SAFETY: the standard BeginInternalSubTransaction protocol, as in PL/pgSQL's exception
    // blocks: remember the memory context and resource owner, restore both on either exit.
    let (context, owner) = unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        (context, owner)
    };
    // SAFETY: puts back the context and owner saved above, which outlive the subtransaction.
    let restore = move || unsafe {
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    };
    PgTryBuilder::new(AssertUnwindSafe(|| {
        let result = work();
        // SAFETY: the subtransaction begun above, still the current one.
        unsafe { pg_sys::ReleaseCurrentSubTransaction() };
        restore();
        Ok(result)
    }))
    .catch_others(move |caught| {
        // SAFETY: after an error in the subtransaction begun above: back to the saved
        // context, then the subtransaction is rolled back, as PL/pgSQL does.
        unsafe {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        restore();
        Err(Failure::new(caught))
    })
    .execute()
}
