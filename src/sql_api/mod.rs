//! The entry points SQL calls: the functions of schema `backfill`, preview, and the triggers.

pub mod api;
pub mod preview;
pub mod trigger;
