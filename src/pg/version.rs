//! Whether this database's extension objects are those of the library the server loaded.
//! A package upgrade replaces the library at the next restart, while each database keeps the
//! objects of the version it was created or last updated to until `ALTER EXTENSION backfill
//! UPDATE` runs there: the library's SQL against older tables would fail deep inside (a
//! column that is not there yet), so the workers leave such a database alone and the SQL
//! functions refuse, saying what to run.

use crate::pg::error;
use crate::pg::query;
use pgrx::prelude::*;
use std::cmp::Ordering;

/// The version of the loaded library (and of the objects it expects).
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version of the extension's objects in this database, `None` where it is not installed.
fn installed() -> Option<String> {
    query::optional_value::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'backfill'",
        &[],
    )
}

/// The extension's objects in this database, as the library sees them.
pub enum Objects {
    None,
    Current,
    /// Another version's: what to say, and what to do.
    Other {
        message: String,
        hint: String,
    },
}

/// This database's objects: none, the library's version's, or another's.
pub fn objects() -> Objects {
    let Some(installed) = installed() else {
        return Objects::None;
    };
    let newer = match compare(&installed, LIBRARY_VERSION) {
        Ordering::Equal => return Objects::Current,
        Ordering::Less => false,
        Ordering::Greater => true,
    };
    let database = current_database();
    let (message, hint) = if newer {
        (
            format!(
                "database \"{database}\" has backfill {installed}, newer than the backfill {LIBRARY_VERSION} the server runs"
            ),
            format!(
                "Install the package of backfill {installed} for this server and restart it; until then the jobs of database \"{database}\" wait."
            ),
        )
    } else {
        (
            format!(
                "database \"{database}\" has backfill {installed}; the server runs backfill {LIBRARY_VERSION}"
            ),
            format!(
                "Run ALTER EXTENSION backfill UPDATE in database \"{database}\"; until then its jobs wait and backfill's functions there refuse to run."
            ),
        )
    };
    Objects::Other { message, hint }
}

/// Raises 55000 (object_not_in_prerequisite_state) with what to do when this database's
/// objects are not the library's: the caller would otherwise fail inside, on a column or a
/// function its objects do not have yet.
pub fn require_current_objects() {
    if let Objects::Other { message, hint } = objects() {
        error::raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            message,
            hint,
        );
    }
}

/// `require_current_objects` for a function a query may call once a row: after the objects
/// are found current, this backend does not look again (they stay so unless the transaction
/// that updated them is rolled back, which is why that one's answer is not kept).
pub fn require_current_objects_once() {
    thread_local! {
        static CURRENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if CURRENT.get() {
        return;
    }
    require_current_objects();
    let settled = query::optional_value::<bool>(
        "SELECT NOT coalesce(e.xmin::text::bigint
                             = pg_catalog.txid_current_if_assigned() % 4294967296, false)
           FROM pg_catalog.pg_extension e WHERE e.extname = 'backfill'",
        &[],
    );
    CURRENT.set(settled.unwrap_or(false));
}

/// Versions compare by their numbers in turn ("0.10.0" is after "0.9.1"); a part that is not
/// a number compares as text.
fn compare(a: &str, b: &str) -> Ordering {
    let parts = |v: &'_ str| -> Vec<(u64, String)> {
        v.split('.')
            .map(|p| (p.parse().unwrap_or(u64::MAX), p.to_owned()))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

fn current_database() -> String {
    query::optional_value::<String>("SELECT pg_catalog.current_database()::text", &[])
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::compare;
    use std::cmp::Ordering;

    #[test]
    fn versions_compare_by_number() {
        assert_eq!(compare("0.6.0", "0.7.0"), Ordering::Less);
        assert_eq!(compare("0.10.0", "0.9.1"), Ordering::Greater);
        assert_eq!(compare("0.7.0", "0.7.0"), Ordering::Equal);
        assert_eq!(compare("1.0.0", "0.99.0"), Ordering::Greater);
    }
}
