//! The tables a job reads and writes, locked and checked for its role at each batch.

use super::failure::caught_unless_interrupt;
use crate::pg::subxact::Failure;
use crate::pg::tables::{Table, Tables};
use pgrx::pg_sys::Oid;

/// A job's tables (those of `schema`), with `reading` locked (`Tables::locked_for`, `writing`
/// as the statement that writes it locks it) and checked,
/// and the role its statements run as on them for `queued_by`, the role that queued it
/// (`Tables::reader`: that role, or the tables' owner, as PostgreSQL runs a table's
/// maintenance as its owner). Tables that are unusable (dropped, a column changed type since
/// they were attached) or refused to that role are a failure that a retry cannot cure
/// (`is_permanent`), with the reason and what to do.
pub(super) fn usable_tables(
    schema: Oid,
    queued_by: Oid,
    reading: &[Table],
    writing: Option<Table>,
) -> Result<(Tables, Oid), Failure> {
    caught_unless_interrupt(|| {
        Tables::locked_for(schema, reading, writing)
            .and_then(|tables| {
                let reader = tables.reader(queued_by)?;
                Ok((tables, reader))
            })
            .unwrap_or_else(|unusable| unusable.raise())
    })
}
