//! Whether `backfill.active_hours` lets batches start now, on the server's clock.

use crate::pg::query::optional_value;

/// None while backfill.active_hours lets batches start (or is empty); otherwise how many
/// seconds until it does, read against the server's local time of day: the transaction's
/// start in the server's time zone (TimeZone as configured, not as a session may have set it,
/// so that a client's view of the window is the workers').
pub fn window_closed_for() -> Option<u32> {
    let window = crate::pg::settings::active_hours()?;
    let second = optional_value::<i32>(
        "SELECT extract(epoch FROM (now() AT TIME ZONE s.reset_val)::time)::int
           FROM pg_catalog.pg_settings s WHERE s.name = 'TimeZone'",
        &[],
    )
    .unwrap_or(0);
    window.closed_for(second.max(0) as u32)
}
