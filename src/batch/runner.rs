//! The runner's side of the engine: what the process running a job decides for its batches
//! (the engine itself sniffs nothing), and what it gets back from `begin` and `run_batch`.

use crate::job::JobState;

/// What the process running a job decides for its batches; the engine itself sniffs nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Runner {
    /// A job row locked by someone else (an uncommitted cancel) is skipped, not waited for:
    /// the runner goes on with other work and comes back to it.
    pub skip_locked_jobs: bool,
    /// The foreign-key fast path (ForeignKeyCheck::LockedInstances) may be used.
    pub foreign_key_fast_path: bool,
    /// Into how many parts a job that starts may be split (1: never), for other runners to
    /// run at the same time.
    pub split_into: usize,
    /// A lock someone holds is waited out, however long: a batch (or a job's start) whose
    /// lock wait times out gives the job back as blocked (`Batch::Blocked`, `Begin::Blocked`)
    /// instead of counting a failure, and the runner tries it again later.
    pub wait_out_locks: bool,
    /// A failed or cancelled job continues from its cursor (a deliberate `CALL run`); the
    /// worker never resumes those.
    pub resume_stopped: bool,
}

impl Runner {
    /// `CALL backfill.run` in a user's session: waits as the session's settings say.
    pub const SESSION: Runner = Runner {
        skip_locked_jobs: false,
        foreign_key_fast_path: false,
        split_into: 1,
        // The session's lock_timeout is its caller's: a batch that meets it is retried, then
        // fails the job, as any failing batch.
        wait_out_locks: false,
        resume_stopped: true,
    };
}

/// What one call of `run_batch` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch {
    /// A batch was committed-to-be; call again for the next.
    More,
    /// The job's row is locked by another transaction (a cancel not yet committed) and the
    /// runner does not wait: nothing was done; try again later.
    Busy,
    /// The job is finished: its state is now this (succeeded or failed), or it was found
    /// stopped (cancelled).
    Finished(JobState),
    /// The batch timed out waiting for a lock (the runner waits out locks): nothing was done,
    /// nothing is counted; what it waits for.
    Blocked(String),
}

/// What `begin` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// The job is running and this process holds it.
    Started,
    /// Nothing to do: the job is in this state (succeeded, or stopped and not to be resumed).
    NotRunnable(JobState),
    /// Another process runs it.
    Busy(Option<i32>),
    /// The job is split into this many parts, each a job row of its own to begin (it was split
    /// just now, or before).
    Split(i32),
    /// Its start timed out waiting for a lock (the runner waits out locks): what it waits for.
    Blocked(String),
}
