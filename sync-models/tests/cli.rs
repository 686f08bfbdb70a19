//! The command as a shell runs it: what it prints, and its exit status.

use std::process::{Command, Stdio};

fn command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_backfill-sync-models"))
}

/// `backfill-sync-models --help | grep -q usage`: grep exits at its first match and the rest
/// of the usage goes to a closed pipe. A reader that is gone is no error of this command's
/// (CI once failed on a panic "failed printing to stdout: Broken pipe").
#[test]
fn output_to_a_closed_pipe_is_no_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let run = command()
        .arg("--help")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(run.status.code(), Some(0), "{stderr}");
}

#[test]
fn help_prints_the_usage_and_exits_0() {
    let run = command().arg("--help").output().unwrap();
    assert_eq!(run.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&run.stdout).starts_with("usage: backfill-sync-models"));
}

#[test]
fn a_bad_argument_exits_2_with_the_usage_on_stderr() {
    let run = command().arg("--bogus").output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("unknown option --bogus"));
}
