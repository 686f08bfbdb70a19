//! Queries whose result shape pgrx's `Spi::get_*` helpers do not cover.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// The first column of the first row of `sql`, or `None` when it returns no row (or NULL).
/// (pgrx's `Spi::get_one` reports an empty result as an error.)
pub fn optional_value<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    Spi::connect_mut(|client| {
        let table = client.update(sql, Some(1), args)?;
        if table.is_empty() {
            Ok(None)
        } else {
            table.first().get_one::<T>()
        }
    })
    .unwrap_or_else(|e| error!("backfill: query failed: {e}: {sql}"))
}

/// The ids `sql` returns in its first column, in order. For id columns, never NULL.
pub fn ids(sql: &str, args: &[DatumWithOid]) -> Vec<i64> {
    Spi::connect(|client| {
        client
            .select(sql, None, args)?
            .filter_map(|row| row.get::<i64>(1).transpose())
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap_or_else(|e| error!("backfill: query failed: {e}: {sql}"))
}
