//! Queries whose result shape pgrx's `Spi::get_*` helpers do not cover.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// The first column of the first row of `sql`, a read, or `None` when it returns no row (or
/// NULL). (pgrx's `Spi::get_one` reports an empty result as an error.) It sees what a
/// statement starting now would see, as read-write SPI does, so that a loop (backfill.wait)
/// sees each commit; but it runs read-only, and so takes no transaction id, which read-write
/// SPI takes at once and a hot standby has none to give.
pub fn optional_value<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    // SAFETY: a snapshot for the transaction, pushed for the query and popped after it
    // however it ends (an ERROR's abort would pop it as well).
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        Spi::connect(|client| {
            let table = client.select(sql, Some(1), args)?;
            if table.is_empty() {
                Ok(None)
            } else {
                table.first().get_one::<T>()
            }
        })
    }))
    // SAFETY: pops what was pushed above.
    .finally(|| unsafe { pg_sys::PopActiveSnapshot() })
    .execute()
    .unwrap_or_else(|e: pgrx::spi::Error| error!("backfill: query failed: {e}: {sql}"))
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
