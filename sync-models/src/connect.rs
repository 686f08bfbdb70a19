//! Where to connect: the connection string given (`--dsn`, `--dsn-file`), which libpq
//! completes from its environment, service files and password file (pq.rs).

use crate::pq::Client;
use std::fs;
use std::path::Path;

/// The connection string in `file` (its first line), which must not be readable or writable
/// by anyone but its owner, as libpq requires of a password file.
#[cfg(unix)]
pub fn read_dsn_file(file: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |e: std::io::Error| format!("{}: {e}", file.display());
    let mode = fs::metadata(file).map_err(failed)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {:o}: a connection string file must be readable by its owner only (chmod 600 it)",
            file.display(),
            mode & 0o777
        ));
    }
    let text = fs::read_to_string(file).map_err(failed)?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// Where to connect: checked once, connected to as often as needed (`--watch` connects again
/// after the server restarts).
pub struct Target {
    conninfo: String,
}

impl Target {
    /// The connection string (none: libpq's environment alone), refused now when libpq cannot
    /// read it, with libpq's reason (which names the setting).
    pub fn new(dsn: Option<&str>) -> Result<Target, String> {
        let conninfo = dsn.unwrap_or_default().to_owned();
        crate::pq::parse_conninfo(&conninfo)
            .map_err(|why| format!("invalid connection string: {why}"))?;
        Ok(Target { conninfo })
    }

    pub fn connect(&self) -> Result<Client, String> {
        Client::connect(&self.conninfo)
    }
}
