//! The next batch of a job: what it is of (the job, its tables, whose privileges) and where it
//! starts; and how this process's batches of a job have come to insert.

use super::statements::Insert;
use crate::job::store::LockedJob as Job;
use crate::pg::tables::Tables;
use pgrx::pg_sys::Oid;
use std::cell::Cell;

pub(super) const UNIQUE_VIOLATION: &str = "23505";

thread_local! {
    /// How the batches of the job this process runs insert, once one met a row that was
    /// there (see `Insert`).
    pub(super) static INSERT_WAY: Cell<Option<(i64, Insert)>> = const { Cell::new(None) };
}

/// The next batch of a job: the next `limit` instances of its model after its cursor, up to
/// `max_id`, in its tables.
pub(super) struct BatchOf<'j> {
    pub(super) job: &'j Job,
    /// Whose privileges the batch has (`Tables::reader`).
    pub(super) role: Oid,
    pub(super) tables: Tables,
    pub(super) max_id: i64,
    pub(super) limit: i64,
}

impl BatchOf<'_> {
    /// The first id after `cursor` (after none: the smallest the id column holds), as a lower
    /// bound the id column's type can hold. (Citus casts a bound on its distribution column to
    /// the column's type, so i64::MIN against an integer id fails with 22003.) A cursor at the
    /// type's largest id has ended the job before this is asked.
    pub(super) fn first_after(&self, cursor: Option<i64>) -> i64 {
        cursor.map_or(self.tables.first_instance_id(), |c| c.saturating_add(1))
    }
}
