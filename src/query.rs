//! Queries whose result shape pgrx's `Spi::get_*` helpers do not cover.

use crate::jsonb::JsonbArg;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::Value;

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

/// The jsonb in the first column of the first row of `sql`, converted while the row is at hand
/// with JsonbArg::to_value_capped (bounded work however deep the value); `None` when there is
/// no row or it is NULL.
pub fn optional_jsonb(sql: &str, args: &[DatumWithOid]) -> Option<Value> {
    Spi::connect(|client| {
        let table = client.select(sql, Some(1), args)?;
        if table.is_empty() {
            return Ok(None);
        }
        Ok(table
            .first()
            .get::<JsonbArg>(1)?
            .map(|value| value.to_value_capped()))
    })
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
