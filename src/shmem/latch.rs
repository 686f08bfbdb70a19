//! Sleeping on this process's latch, which a wake or a signal cuts short.

use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Sleeps up to `duration` on this process's latch, returning early when the process is asked
/// to stop; a backend's cancel request interrupts it with the usual error. The latch waits in
/// whole milliseconds, so what is left under one is not slept: rounded up, every pause of a
/// few microseconds would cost a millisecond or more.
pub fn sleep(duration: Duration) {
    let deadline = Instant::now() + duration;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) || shutdown_requested() {
            return;
        }
        // SAFETY: the standard wait on MyLatch, as pg_sleep does.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                left.as_millis().clamp(1, i64::MAX as u128) as i64,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
}

pub fn shutdown_requested() -> bool {
    // SAFETY: a sig_atomic_t flag set by the SIGTERM handler.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}
