//! The entry points SQL calls: the functions of schema `backfill`, preview, and the triggers.

mod attach;
mod catch_up;
mod extraction;
pub mod jobs;
mod preview;
mod run;
mod trigger;
