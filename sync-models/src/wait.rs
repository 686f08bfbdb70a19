//! `--wait` and `--wait-only`: jobs followed to their end through `backfill.progress`. On a
//! terminal a progress bar a job (processed of total, rate, ETA, errors); otherwise a line a
//! job every few seconds, for logs. The end of each job is also the end of what it owes:
//! `backfill.wait` returns only once the job's coverage is counted, so a script that reads
//! `backfill.coverage` after this command sees the job's figures.

use crate::out;
use crate::pq::{bigint_array, Client, DbError};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often the jobs are read.
const POLL: Duration = Duration::from_millis(500);
/// How often a line is printed for a job that is not finished, when not on a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// How the followed jobs ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    AllSucceeded,
    /// At least one failed or was cancelled (each said so on its final line).
    NotAllSucceeded,
}

/// One job as `backfill.progress` shows it.
struct Seen {
    model: String,
    state: String,
    processed: i64,
    total: Option<i64>,
    rate: Option<f64>,
    eta: Option<f64>,
    elapsed: Option<f64>,
    errors: i64,
    last_error: Option<String>,
}

impl Seen {
    fn unfinished(&self) -> bool {
        matches!(self.state.as_str(), "queued" | "running")
    }

    fn counts(&self) -> String {
        match self.total {
            Some(total) => format!("{}/{total}", self.processed),
            None => format!("{}/?", self.processed),
        }
    }

    /// The line for a job: its state and figures; a finished job's time and last error.
    fn line(&self, id: i64) -> String {
        let mut line = format!(
            "job {id} {} {}: {} instances, {} errors",
            self.model,
            self.state,
            self.counts(),
            self.errors
        );
        if self.unfinished() {
            if let Some(rate) = self.rate {
                line.push_str(&format!(", {rate:.0}/s"));
            }
            if let Some(eta) = self.eta {
                line.push_str(&format!(", ETA {}", seconds(eta)));
            }
        } else if let Some(elapsed) = self.elapsed {
            line.push_str(&format!(" in {}", seconds(elapsed)));
        }
        if !self.unfinished() && self.state != "succeeded" {
            if let Some(error) = &self.last_error {
                line.push_str(&format!("; last error: {error}"));
            }
        }
        line
    }
}

fn seconds(seconds: f64) -> String {
    let whole = seconds.round() as i64;
    match whole {
        ..60 => format!("{seconds:.1} s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
    }
}

/// The jobs queued or running now (for `--wait-only` without ids), oldest first.
pub fn unfinished_jobs(client: &mut Client) -> Result<Vec<i64>, DbError> {
    Ok(client
        .query(
            "SELECT id FROM backfill.job WHERE state IN ('queued', 'running') AND parent_id IS NULL ORDER BY id",
            &[],
        )?
        .iter()
        .filter_map(|row| row.get(0))
        .collect())
}

/// Follows `jobs` until each has ended.
pub fn follow(client: &mut Client, jobs: &[i64]) -> Result<Ended, String> {
    let terminal = std::io::stdout().is_terminal();
    let bars = MultiProgress::with_draw_target(if terminal {
        ProgressDrawTarget::stdout()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
        .map_err(|e| e.to_string())?
        .progress_chars("=> ");
    // Before its start a job has no total yet: no bar, only what it waits in.
    let style_queued = ProgressStyle::with_template("{prefix} {msg}").map_err(|e| e.to_string())?;
    let mut bar_of: BTreeMap<i64, ProgressBar> = BTreeMap::new();
    let mut open: Vec<i64> = jobs.to_vec();
    let mut last_line = Instant::now();
    let mut all_succeeded = true;
    if !terminal && !jobs.is_empty() {
        out::line(&format!(
            "waiting for job{} {}",
            if jobs.len() == 1 { "" } else { "s" },
            jobs.iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    while !open.is_empty() {
        let seen = read(client, &open).map_err(|e| e.to_string())?;
        let print_lines = !terminal && last_line.elapsed() >= LINE_EVERY;
        if print_lines {
            last_line = Instant::now();
        }
        let mut still_open = Vec::new();
        for id in open {
            let Some(job) = seen.get(&id) else {
                return Err(format!("job {id} does not exist"));
            };
            if job.unfinished() {
                still_open.push(id);
                if terminal {
                    let bar = bar_of.entry(id).or_insert_with(|| {
                        bars.add(
                            ProgressBar::new(0)
                                .with_style(style_queued.clone())
                                .with_prefix(format!("job {id} {}", job.model)),
                        )
                    });
                    match job.total {
                        Some(total) => {
                            bar.set_style(style.clone());
                            bar.set_length(total.max(0) as u64);
                            bar.set_position(job.processed.max(0) as u64);
                            let mut message = format!("{} errors", job.errors);
                            if let Some(rate) = job.rate {
                                message.push_str(&format!(", {rate:.0}/s"));
                            }
                            if let Some(eta) = job.eta {
                                message.push_str(&format!(", ETA {}", seconds(eta)));
                            }
                            bar.set_message(message);
                        }
                        None => bar.set_message(format!("{} (not started)", job.state)),
                    }
                } else if print_lines {
                    out::line(&job.line(id));
                }
                continue;
            }
            // Its end, and the coverage it owes: backfill.wait returns once that is counted.
            client
                .query(
                    "SELECT backfill.wait($1::bigint, '60 s')",
                    &[&id.to_string()],
                )
                .map_err(|e| e.to_string())?;
            all_succeeded &= job.state == "succeeded";
            match bar_of.remove(&id) {
                Some(bar) => {
                    bar.finish_and_clear();
                    // Printed above the bars still drawn.
                    let _ = bars.println(job.line(id));
                }
                None if terminal => {
                    let _ = bars.println(job.line(id));
                }
                None => out::line(&job.line(id)),
            }
        }
        open = still_open;
        if !open.is_empty() {
            std::thread::sleep(POLL);
        }
    }
    Ok(if all_succeeded {
        Ended::AllSucceeded
    } else {
        Ended::NotAllSucceeded
    })
}

fn read(client: &mut Client, jobs: &[i64]) -> Result<BTreeMap<i64, Seen>, DbError> {
    let rows = client.query(
        "SELECT id, model, state, coalesce(processed, 0), total, instances_per_second::float8,
                extract(epoch FROM eta)::float8, extract(epoch FROM elapsed)::float8,
                coalesce(errors, 0), last_error
           FROM backfill.progress WHERE id = ANY ($1::bigint[])",
        &[&bigint_array(jobs)],
    )?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                row.get(0).unwrap_or_default(),
                Seen {
                    model: row.text(1).unwrap_or_default().to_owned(),
                    state: row.text(2).unwrap_or_default().to_owned(),
                    processed: row.get(3).unwrap_or_default(),
                    total: row.get(4),
                    rate: row.get(5),
                    eta: row.get(6),
                    elapsed: row.get(7),
                    errors: row.get(8).unwrap_or_default(),
                    last_error: row.text(9).map(str::to_owned),
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_job_says_how_it_ended() {
        let mut job = Seen {
            model: "finance/invoice".into(),
            state: "running".into(),
            processed: 1200,
            total: Some(2500),
            rate: Some(400.4),
            eta: Some(3.25),
            elapsed: Some(3.0),
            errors: 1,
            last_error: None,
        };
        assert_eq!(
            job.line(42),
            "job 42 finance/invoice running: 1200/2500 instances, 1 errors, 400/s, ETA 3.2 s"
        );
        job.state = "cancelled".into();
        job.last_error = Some("cancelled by alice".into());
        job.elapsed = Some(125.0);
        assert_eq!(
            job.line(42),
            "job 42 finance/invoice cancelled: 1200/2500 instances, 1 errors in 2m05s; last error: cancelled by alice"
        );
    }
}
