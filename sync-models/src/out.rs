//! What the command prints on its standard output. A reader that has gone away (`| head`,
//! `| grep -q`) is not this command's failure: the sync's work is in the database, not in
//! its output, so a line nobody can read any more is dropped and the command goes on.

use std::io::Write;

/// Prints `line` and a newline to standard output, flushed at once (a log follows it live).
pub fn line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    // A write error here is a closed or full pipe, nothing a retry or a message could mend.
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}
