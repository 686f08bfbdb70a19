//! The job queue: `backfill.job` rows (every statement on them in `store`), their states, the
//! paths a job fills, who may act on a job, and the run lock that lets one process run it.

mod active_hours;
mod claim;
mod path;
mod queue;
mod state;
pub mod store;

pub use active_hours::window_closed_for;
pub use claim::{claim, holds_claim, is_free, release_claim, Claim};
pub use path::{models, paths_of_model, valid_paths, JobPath, Origin};
pub use queue::{cancel, check_acts_for, no_such_job, queue_job};
pub use state::JobState;
