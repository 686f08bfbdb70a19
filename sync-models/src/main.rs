//! backfill-sync-models: makes `backfill.process_model` say what SpiffWorkflow's spec directory
//! says. Every `process_model.json` under SPEC_DIR is a model whose id is its directory relative
//! to SPEC_DIR (`finance/invoice`); process groups (`process_group.json`) are not models. The
//! models go to `backfill.sync_process_models`, which inserts new ones and updates changed ones
//! (a change of paths queues a backfill job, as a hand-written UPDATE does).
//!
//! Prints one line per model that changed or was rejected; exits 1 when any was rejected, 2
//! when it could not run at all, 3 when a job it waited for (`--wait`) did not succeed.
//! `--watch` keeps syncing as the directory changes.

mod args;
mod connect;
mod hook;
mod out;
mod pq;
mod spec;
mod sync;
mod wait;
mod watch;

use args::{parse_args, Args, Mode, Then, USAGE};
use connect::{read_dsn_file, Target};
use std::process::ExitCode;

/// How the command ends, as its exit status says.
enum Exit {
    Done,
    ModelsRejected,
    JobsNotSucceeded,
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.iter().any(|arg| arg == "-h" || arg == "--help") {
        out::line(USAGE.trim_end());
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(raw) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("backfill-sync-models: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(Exit::Done) => ExitCode::SUCCESS,
        Ok(Exit::ModelsRejected) => ExitCode::from(1),
        Ok(Exit::JobsNotSucceeded) => ExitCode::from(3),
        Err(message) => {
            eprintln!("backfill-sync-models: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<Exit, String> {
    let dsn = match &args.dsn_file {
        Some(file) => Some(read_dsn_file(file)?),
        None => args.dsn.clone(),
    };
    let target = Target::new(dsn.as_deref())?;
    let canonical = |dir: &std::path::Path| {
        dir.canonicalize()
            .map_err(|e| format!("{}: {e}", dir.display()))
    };
    match &args.mode {
        Mode::Watch { spec_dir } => {
            watch::watch(&canonical(spec_dir)?, &target)?;
            Ok(Exit::Done)
        }
        Mode::WaitOnly { jobs } => {
            let mut client = target.connect()?;
            let jobs = match jobs.is_empty() {
                true => wait::unfinished_jobs(&mut client).map_err(|e| e.to_string())?,
                false => jobs.clone(),
            };
            Ok(match wait::follow(&mut client, &jobs)? {
                wait::Ended::AllSucceeded => Exit::Done,
                wait::Ended::NotAllSucceeded => Exit::JobsNotSucceeded,
            })
        }
        Mode::Sync {
            spec_dir,
            catch_up,
            then,
        } => {
            let spec_dir = canonical(spec_dir)?;
            if args.install_hook {
                hook::install_hook(&spec_dir, dsn.as_deref())?;
            }
            let models = spec::read_models(&spec_dir)?;
            let mut client = target.connect()?;
            let synced = sync::sync(&mut client, &models, *catch_up).map_err(|e| e.to_string())?;
            let jobs_ended = match then {
                Then::WaitForJobs => wait::follow(&mut client, &synced.jobs)?,
                Then::Exit => wait::Ended::AllSucceeded,
            };
            Ok(match (synced.rejected, jobs_ended) {
                (_, wait::Ended::NotAllSucceeded) => Exit::JobsNotSucceeded,
                (0, wait::Ended::AllSucceeded) => Exit::Done,
                (_, wait::Ended::AllSucceeded) => Exit::ModelsRejected,
            })
        }
    }
}
