//! The command line.

use std::path::PathBuf;

pub const USAGE: &str = "\
usage: backfill-sync-models [--dsn DSN | --dsn-file FILE] [--install-git-hook] [--catch-up] [--wait] SPEC_DIR
       backfill-sync-models [--dsn DSN | --dsn-file FILE] --watch SPEC_DIR
       backfill-sync-models [--dsn DSN | --dsn-file FILE] --wait-only [JOB_ID...]

Reads every process_model.json under SPEC_DIR (SpiffWorkflow's BPMN spec directory) and syncs
the models' display_name and metadata_extraction_paths into backfill.process_model. A model
whose paths changed queues a backfill job, as an UPDATE of backfill.process_model does; a
model inserted with paths while it has instances queues a catch-up job (its instances without
a row for a key get one).

  --dsn DSN           connection string (\"host=... dbname=... user=...\" or postgresql://...);
                      what it leaves out comes from PGHOST, PGPORT, PGUSER, PGDATABASE,
                      PGPASSWORD (or ~/.pgpass), PGAPPNAME, PGCONNECT_TIMEOUT, PGSSLMODE
                      and PGSSLROOTCERT, as in libpq; sslmode disable, allow, prefer (the
                      default), require, verify-ca or verify-full and sslrootcert (a file,
                      or \"system\") mean what they mean to libpq
  --dsn-file FILE     the connection string, read from FILE, which only its owner may read
                      (mode 600): a password kept off command lines
  --install-git-hook  install a post-commit hook in SPEC_DIR's git repository that runs this
                      sync after every commit (SpiffWorkflow commits there on every save),
                      then sync once; a connection string or PGPASSWORD given now is kept in
                      a file of mode 600 in the repository's git directory
  --catch-up          also queue a catch-up job (backfill.catch_up) for every model of
                      SPEC_DIR that was already in the database, has paths and has
                      instances: each (instance, key) without a row gets one, the rows
                      there are kept
  --wait              after the sync, follow the jobs it queued to their end: a progress bar
                      a job on a terminal, a line every 5 seconds otherwise
  --watch             sync, then follow changes to the process_model.json files below
                      SPEC_DIR and sync each (one line a change) until SIGTERM or SIGINT;
                      a lost connection is made again, with back-off
  --wait-only         follow the jobs named (all queued or running ones when none is) to
                      their end, syncing nothing

Exit status: 0 done; 1 a model was rejected; 2 the command could not run; 3 a job it waited
for failed or was cancelled.
";

/// What the command is asked to do.
#[derive(Debug, PartialEq)]
pub enum Mode {
    /// Sync once (and queue the catch-up of the models already there, or not), then
    /// (`Then::Wait`) follow the jobs queued, or not.
    Sync {
        spec_dir: PathBuf,
        catch_up: bool,
        then: Then,
    },
    /// Sync, then follow the spec directory until a signal.
    Watch { spec_dir: PathBuf },
    /// Follow these jobs (all unfinished ones when empty).
    WaitOnly { jobs: Vec<i64> },
}

/// What a sync is followed by.
#[derive(Debug, PartialEq)]
pub enum Then {
    Exit,
    WaitForJobs,
}

#[derive(Debug)]
pub struct Args {
    pub dsn: Option<String>,
    pub dsn_file: Option<PathBuf>,
    pub install_hook: bool,
    pub mode: Mode,
}

pub fn parse_args(raw: Vec<String>) -> Result<Args, String> {
    let mut dsn = None;
    let mut dsn_file = None;
    let mut install_hook = false;
    let mut wait = false;
    let mut watch = false;
    let mut wait_only = false;
    let mut catch_up = false;
    let mut operands = Vec::new();
    let mut raw = raw.into_iter();
    while let Some(arg) = raw.next() {
        match arg.as_str() {
            "--dsn" => dsn = Some(raw.next().ok_or("--dsn needs a value")?),
            _ if arg.starts_with("--dsn=") => dsn = Some(arg["--dsn=".len()..].to_owned()),
            "--dsn-file" => {
                dsn_file = Some(PathBuf::from(raw.next().ok_or("--dsn-file needs a value")?))
            }
            _ if arg.starts_with("--dsn-file=") => {
                dsn_file = Some(PathBuf::from(&arg["--dsn-file=".len()..]))
            }
            "--install-git-hook" => install_hook = true,
            "--wait" => wait = true,
            "--catch-up" => catch_up = true,
            "--watch" => watch = true,
            "--wait-only" => wait_only = true,
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}")),
            _ => operands.push(arg),
        }
    }
    if dsn.is_some() && dsn_file.is_some() {
        return Err("--dsn and --dsn-file exclude each other".into());
    }
    let mode = if wait_only {
        if watch || wait || install_hook || catch_up {
            return Err(
                "--wait-only syncs nothing: it takes no --watch, --wait, --catch-up or --install-git-hook"
                    .into(),
            );
        }
        let jobs = operands
            .iter()
            .map(|job| {
                job.parse::<i64>()
                    .map_err(|_| format!("--wait-only takes job ids, not {job}"))
            })
            .collect::<Result<_, _>>()?;
        Mode::WaitOnly { jobs }
    } else {
        let mut operands = operands.into_iter();
        let spec_dir = PathBuf::from(operands.next().ok_or("SPEC_DIR is missing")?);
        if let Some(extra) = operands.next() {
            return Err(format!("unexpected argument {extra}"));
        }
        match (watch, wait) {
            (true, true) => return Err("--watch never ends: it takes no --wait".into()),
            (true, false) if catch_up => {
                return Err(
                    "--watch takes no --catch-up: run one sync with --catch-up first".into(),
                )
            }
            (true, false) if install_hook => {
                return Err(
                    "--watch and --install-git-hook are two ways of doing the same: choose one"
                        .into(),
                )
            }
            (true, false) => Mode::Watch { spec_dir },
            (false, wait) => Mode::Sync {
                spec_dir,
                catch_up,
                then: if wait { Then::WaitForJobs } else { Then::Exit },
            },
        }
    };
    Ok(Args {
        dsn,
        dsn_file,
        install_hook,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|a| a.to_string()).collect())
    }

    #[test]
    fn arguments() {
        let args = parse(&["--dsn=host=x", "--install-git-hook", "spec"]).unwrap();
        assert_eq!(args.dsn.as_deref(), Some("host=x"));
        assert!(args.install_hook);
        assert_eq!(
            args.mode,
            Mode::Sync {
                spec_dir: "spec".into(),
                catch_up: false,
                then: Then::Exit
            }
        );
        assert!(parse(&[]).is_err());
        assert!(parse(&["--bogus", "spec"]).is_err());
        assert!(parse(&["spec", "other"]).is_err());
        let args = parse(&["--dsn-file", "f", "spec"]).unwrap();
        assert_eq!(args.dsn_file, Some(PathBuf::from("f")));
        assert!(parse(&["--dsn=x", "--dsn-file=f", "spec"]).is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(
            parse(&["--wait", "spec"]).unwrap().mode,
            Mode::Sync {
                spec_dir: "spec".into(),
                catch_up: false,
                then: Then::WaitForJobs
            }
        );
        assert_eq!(
            parse(&["--catch-up", "--wait", "spec"]).unwrap().mode,
            Mode::Sync {
                spec_dir: "spec".into(),
                catch_up: true,
                then: Then::WaitForJobs
            }
        );
        assert!(parse(&["--watch", "--catch-up", "spec"]).is_err());
        assert!(parse(&["--wait-only", "--catch-up"]).is_err());
        assert_eq!(
            parse(&["--watch", "spec"]).unwrap().mode,
            Mode::Watch {
                spec_dir: "spec".into()
            }
        );
        assert_eq!(
            parse(&["--wait-only", "4", "7"]).unwrap().mode,
            Mode::WaitOnly { jobs: vec![4, 7] }
        );
        assert_eq!(
            parse(&["--wait-only"]).unwrap().mode,
            Mode::WaitOnly { jobs: vec![] }
        );
        assert!(parse(&["--wait-only", "x"]).is_err());
        assert!(parse(&["--wait-only", "--wait", "1"]).is_err());
        assert!(parse(&["--watch", "--wait", "spec"]).is_err());
        assert!(parse(&["--watch", "--install-git-hook", "spec"]).is_err());
        assert!(parse(&["--watch"]).is_err());
    }
}
