//! Databases asking for a worker: a committed enqueue wakes its database's worker or asks the
//! launcher for one now; later (a hold or a closed window ending); or all of them (the table
//! was full).

use super::registry::{preloaded, set_latch, unix_now, REGISTRY};
use super::slots::{served, Serving};
use pgrx::prelude::*;
use pgrx::{register_xact_callback, PgXactCallbackEvent};
use std::cell::Cell;
use std::sync::atomic::Ordering;

/// Asks the launcher for a worker in `database` and wakes it.
pub fn request(database: pg_sys::Oid) {
    let registry = REGISTRY.get();
    let wanted = database.to_u32();
    if !registry
        .requests
        .iter()
        .any(|r| r.load(Ordering::SeqCst) == wanted)
    {
        let queued = registry.requests.iter().any(|request| {
            request
                .compare_exchange(0, wanted, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        });
        if !queued {
            registry.look_everywhere.store(true, Ordering::SeqCst);
        }
    }
    set_latch(registry.launcher_latch.load(Ordering::SeqCst));
}

/// Asks the launcher for a worker in `database` in `seconds` (the earliest if asked twice).
/// False when the table is full: the caller then stays.
pub fn request_later(database: pg_sys::Oid, seconds: u64) -> bool {
    let registry = REGISTRY.get();
    let wanted = database.to_u32();
    let at = unix_now().saturating_add(seconds.min(i64::MAX as u64) as i64);
    let slot = registry
        .later_database
        .iter()
        .position(|d| d.load(Ordering::SeqCst) == wanted)
        .or_else(|| {
            registry.later_database.iter().position(|d| {
                d.compare_exchange(0, wanted, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            })
        });
    match slot {
        Some(index) => {
            // A slot taken just now still holds 0 (due at once) until this store: at worst
            // an early look, never a late one.
            let time = &registry.later_at[index];
            let earlier = match time.load(Ordering::SeqCst) {
                0 => at,
                t => t.min(at),
            };
            time.store(earlier, Ordering::SeqCst);
            true
        }
        None => false,
    }
}

/// Which held databases `take_due` hands back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Those whose time has come.
    Now,
    /// All of them: after a reload, which may have moved backfill.active_hours.
    All,
}

/// The held databases `which` says, taken off the table.
pub fn take_due(which: Due) -> Vec<pg_sys::Oid> {
    let registry = REGISTRY.get();
    let now = unix_now();
    registry
        .later_database
        .iter()
        .zip(&registry.later_at)
        .filter_map(|(database, at)| {
            let db = database.load(Ordering::SeqCst);
            if db == 0 || !(which == Due::All || at.load(Ordering::SeqCst) <= now) {
                return None;
            }
            at.store(0, Ordering::SeqCst);
            database.store(0, Ordering::SeqCst);
            Some(pg_sys::Oid::from(db))
        })
        .collect()
}

/// Whether a request found the table full since the last call: then every database counts
/// as asking.
pub fn take_look_everywhere() -> bool {
    REGISTRY.get().look_everywhere.swap(false, Ordering::SeqCst)
}

/// The databases asking for a worker, taken off the table.
pub fn take_requests() -> Vec<pg_sys::Oid> {
    REGISTRY
        .get()
        .requests
        .iter()
        .map(|r| r.swap(0, Ordering::SeqCst))
        .filter(|&db| db != 0)
        .map(pg_sys::Oid::from)
        .collect()
}

thread_local! {
    pub(super) static WAKE_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// When the current transaction commits (not before: it would find nothing), wakes this
/// database's worker, or has the launcher start one.
pub fn wake_at_commit() {
    if !preloaded() || WAKE_REGISTERED.get() {
        return;
    }
    WAKE_REGISTERED.set(true);
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        WAKE_REGISTERED.set(false);
        // SAFETY: MyDatabaseId is set in every backend connected to a database.
        let here = unsafe { pg_sys::MyDatabaseId };
        if !matches!(served(here), Serving::Yes) {
            request(here);
        }
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || WAKE_REGISTERED.set(false));
}
