//! The batch engine: runs a job in batches of instances, each batch and the job's cursor and
//! counters written in the caller's transaction, so a commit per batch makes progress durable
//! and a crash loses at most the batch in flight. `CALL backfill.run` and the worker both go
//! through `begin`, `run_batch` and `end`; the coverage of a job's keys is counted after it
//! succeeds.

mod batch_of;
pub mod coverage;
mod distributed;
mod failure;
mod fast_path;
mod finish;
mod job_row;
mod run;
mod runner;
mod start;
mod statements;
mod tables;

pub(crate) use failure::{is_instance_failure, is_node_unreachable};
pub use finish::{count_due_coverage, count_owed_coverage, fail_job};
pub use run::run_batch;
pub use runner::{Batch, Begin, Runner};
pub use start::{begin, end};
pub(crate) use statements::latest_task_data_join;
// For the SQL tests, which check the batch statement's plan.
#[cfg(any(test, feature = "pg_test"))]
pub(crate) use statements::{batch_sql, Insert};
