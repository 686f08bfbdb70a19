//! The background workers: the launcher that starts them, and a database's worker loop.

mod drain;
mod holds;
pub mod launcher;
mod lock_waits;
mod session;
mod throttle;
mod trouble;
pub mod worker;
