//! The states of a job, as `backfill.job.state` stores them (its CHECK lists the same five).

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state a stored value names; `None` for anything else (the table's CHECK keeps
    /// other values out, so a caller treats `None` as a damaged row).
    pub fn parse(stored: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == stored)
    }

    /// Queued or running: a runner has something to do.
    pub fn is_unfinished(self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }

    /// Failed or cancelled: only a deliberate `CALL backfill.run` resumes it.
    pub fn is_stopped(self) -> bool {
        matches!(self, JobState::Failed | JobState::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::JobState;

    #[test]
    fn the_states_are_the_ones_the_table_allows() {
        let schema = include_str!("../../sql/schema.sql");
        let check = schema
            .split("CHECK (state IN (")
            .nth(1)
            .and_then(|rest| rest.split("))").next())
            .expect("sql/schema.sql checks backfill.job.state");
        let allowed: Vec<&str> = check
            .split(',')
            .map(|s| s.trim().trim_matches('\''))
            .collect();
        let ours: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(allowed, ours);
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
        }
        assert_eq!(JobState::parse("Running"), None);
    }
}
