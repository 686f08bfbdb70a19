//! The background workers: the launcher that starts them, and a database's worker loop.

pub mod launcher;
pub mod worker;
