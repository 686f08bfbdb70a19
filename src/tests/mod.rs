//! SQL-level tests that run inside the pgrx test server, each in a transaction that is rolled
//! back. Behaviour that needs commits (the worker, per-batch commits, crashes) is tested from
//! `tests/` against servers of its own.

#[cfg(test)]
mod docs;
mod extraction;
mod hardening;
#[cfg(test)]
mod layering;
#[cfg(test)]
mod safety_notes;
mod schema;
mod validation;

use crate::pg::subxact::{in_subtransaction, Failure};
use pgrx::prelude::*;

/// Runs `sql` in a subtransaction and returns the error it raised, if any.
pub fn error_of(sql: &str) -> Option<Failure> {
    match in_subtransaction(|| Spi::run(sql)) {
        Ok(Ok(())) => None,
        Ok(Err(spi_error)) => panic!("SPI error (not an SQL ERROR) from {sql}: {spi_error}"),
        Err(failure) => Some(failure),
    }
}

/// Asserts that `sql` fails with `sqlstate` and a message containing `fragment`.
pub fn assert_fails(sql: &str, sqlstate: &str, fragment: &str) {
    let failure = error_of(sql).unwrap_or_else(|| panic!("no error from {sql}"));
    assert_eq!(failure.sqlstate, sqlstate, "{sql}: {}", failure.message);
    assert!(
        failure.message.contains(fragment),
        "{sql}: message {:?} lacks {fragment:?}",
        failure.message
    );
}

/// Quotes text as an SQL literal.
pub fn lit(text: &str) -> String {
    pgrx::spi::quote_literal(text)
}
