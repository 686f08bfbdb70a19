//! The databases whose extension objects the log has said are not the library's version:
//! every worker that comes to such a database (a request, the launcher's look once a minute)
//! leaves it, and the log says why once per database, not once per worker.

use super::registry::REGISTRY;
use std::sync::atomic::Ordering;

/// Whether the log is to say now that `database`'s objects are not the library's: not said
/// since the server started (or since they last matched). Notes that it is said; with the
/// table full, the answer is yes.
pub fn version_mismatch_to_say(database: u32) -> bool {
    let notes = &REGISTRY.get().version_note_database;
    if notes
        .iter()
        .any(|noted| noted.load(Ordering::SeqCst) == database)
    {
        return false;
    }
    // Taken by another process between the two looks: both say it, once each.
    let _ = notes.iter().find(|slot| {
        slot.compare_exchange(0, database, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    });
    true
}

/// `database`'s objects match the library (`ALTER EXTENSION backfill UPDATE` ran): a later
/// mismatch is said again.
pub fn version_matches(database: u32) {
    for noted in &REGISTRY.get().version_note_database {
        let _ = noted.compare_exchange(database, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}
