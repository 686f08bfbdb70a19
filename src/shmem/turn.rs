//! The batch turn: while the application keeps the server busy, one backfill batch at a time
//! on the whole server, each leaving a gap after itself.

use super::latch::{shutdown_requested, sleep};
use super::registry::{unix_micros, REGISTRY};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Takes the batch turn for the worker of slot `index`: while the application keeps the
/// server busy, one backfill batch runs at a time, whatever the jobs and databases, and each
/// leaves a gap after itself before the next one starts (`end_batch_turn`). Batches at the
/// same moment, or one right after another, put their WAL in front of the application's
/// commits together, and the application's slowest saves are what that grows; spaced out
/// they take as long in all (the adaptive throttle sets how much they run). True when the
/// worker has the turn, to give back with `end_batch_turn` once its batch has committed;
/// false after `patience` without it (a batch stuck behind a lock holds no one up for
/// longer), or on shutdown. The gap is waited for after taking the turn, so that no batch
/// can slip in between, and for no longer than `patience` either.
pub fn take_batch_turn(index: usize, patience: Duration) -> bool {
    let registry = REGISTRY.get();
    let me = index as u32 + 1;
    let deadline = Instant::now() + patience;
    loop {
        let taken = registry
            .batch_turn
            .compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst);
        match taken {
            Ok(_) => break,
            Err(holder) if holder == me => break,
            Err(_) => {}
        }
        if Instant::now() >= deadline || shutdown_requested() {
            return false;
        }
        sleep(Duration::from_millis(1));
    }
    let gap_left = registry
        .turn_free_at
        .load(Ordering::SeqCst)
        .saturating_sub(unix_micros());
    if gap_left > 0 {
        sleep(
            Duration::from_micros(gap_left as u64)
                .min(deadline.saturating_duration_since(Instant::now())),
        );
    }
    true
}

/// Gives the batch turn back if the worker of slot `index` has it (also when its process
/// exits, with no gap), and has the next batch wait `gap` from now.
pub fn end_batch_turn(index: usize, gap: Duration) {
    let registry = REGISTRY.get();
    let me = index as u32 + 1;
    if registry.batch_turn.load(Ordering::SeqCst) != me {
        return;
    }
    // Before the turn is free: whoever takes it next sees this gap.
    registry.turn_free_at.store(
        unix_micros().saturating_add(gap.as_micros().min(i64::MAX as u128) as i64),
        Ordering::SeqCst,
    );
    let _ = registry
        .batch_turn
        .compare_exchange(me, 0, Ordering::SeqCst, Ordering::SeqCst);
}
