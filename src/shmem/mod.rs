//! What backends, the launcher and the workers share in shared memory: the launcher's latch,
//! one slot per worker (its database, state, pid and latch), and the databases waiting for a
//! worker; waking a worker at commit and sleeping on a latch; the batch turn; the load the
//! throttle reads; why no worker would run a job; the jobs waiting out a lock; the databases
//! whose objects are another version's.

mod diagnostics;
mod latch;
mod load;
mod lock_notes;
mod registry;
mod requests;
mod slots;
mod turn;
mod version_notes;

pub use diagnostics::*;
pub use latch::*;
pub use load::*;
pub use lock_notes::*;
pub use registry::{init, launcher_gone, launcher_ready, Purpose, LAUNCHER_TYPE, WORKER_TYPE};
pub use requests::*;
pub use slots::*;
pub use turn::*;
pub use version_notes::*;
