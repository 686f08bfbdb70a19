//! Errors and messages with the SQLSTATE a PostgreSQL user expects, and a hint when there is
//! something to do.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Reports a message with a hint at `level` (NOTICE, WARNING; ERROR does not return: see
/// `raise`).
pub fn report_with_hint(level: PgLogLevel, code: PgSqlErrorCode, message: String, hint: String) {
    ErrorReport::new(code, message, "backfill")
        .set_hint(hint)
        .report(level);
}

/// Raises ERROR `code` with a hint.
pub fn raise(code: PgSqlErrorCode, message: String, hint: impl Into<String>) -> ! {
    report_with_hint(PgLogLevel::ERROR, code, message, hint.into());
    unreachable!("ereport(ERROR) does not return")
}

/// Raises ERROR `code` without a hint.
pub fn raise_plain(code: PgSqlErrorCode, message: String) -> ! {
    ErrorReport::new(code, message, "backfill").report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) does not return")
}

/// Raises ERROR 22023 (invalid_parameter_value): the user's input is wrong.
pub fn invalid_parameter(message: &str) -> ! {
    raise_plain(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message.to_owned(),
    )
}

/// The value of a nullable argument, or ERROR 22004 (null_value_not_allowed) naming it.
pub fn required<T>(value: Option<T>, function: &str, argument: &str) -> T {
    value.unwrap_or_else(|| {
        raise_plain(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{function}: {argument} must not be NULL"),
        )
    })
}

/// Raises 25006 (read_only_sql_transaction) on a hot standby: `function` changes backfill's
/// jobs or counts, which only the primary can (PostgreSQL would fail it deeper down, as an
/// internal error).
pub fn require_primary(function: &str) {
    // SAFETY: reads a flag in shared memory, as any backend may.
    if unsafe { pg_sys::RecoveryInProgress() } {
        raise(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            format!("{function} cannot run on a hot standby: jobs are queued and run on the primary"),
            "Call it on the primary; here backfill.progress, backfill.wait and backfill.latest_task_data show what the primary's jobs did, as it replays.",
        );
    }
}
