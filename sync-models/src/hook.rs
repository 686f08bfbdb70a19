//! The git post-commit hook that runs the sync after every commit to the spec directory.

use crate::pq::{conninfo_quote, environment_settings, parse_conninfo};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Marks a hook this command wrote, so it may replace it and no other.
const HOOK_MARKER: &str = "# installed by backfill-sync-models";

/// The connection string the hook connects with: every setting `dsn` gives (a URI's too),
/// with every setting libpq's environment gives now that `dsn` leaves out (`PGSSLMODE`,
/// `PGSSLCERT`, `PGSERVICE`, ...), so that the hook's connection is this one whatever the
/// environment of the process that commits. `None` when nothing is set, and the hook connects
/// as libpq's defaults say.
pub fn hook_connection(dsn: Option<&str>) -> Result<Option<String>, String> {
    let given = parse_conninfo(dsn.unwrap_or_default())
        .map_err(|why| format!("invalid connection string: {why}"))?;
    let missing: Vec<(String, String)> = environment_settings()
        .into_iter()
        .filter(|(key, _)| !given.iter().any(|(k, _)| k == key))
        .collect();
    let connection = given
        .iter()
        .chain(&missing)
        .map(|(key, value)| format!("{key}={}", conninfo_quote(value)))
        .collect::<Vec<_>>()
        .join(" ");
    if connection.is_empty() {
        return Ok(None);
    }
    // What the hook will read must be what this command can read.
    parse_conninfo(&connection).map_err(|e| format!("the hook could not connect as this: {e}"))?;
    Ok(Some(connection))
}

/// Writes a post-commit hook that runs this sync, in the git repository holding `spec_dir`.
/// The connection (`dsn` completed from the environment, `hook_connection`), which may hold a
/// password, goes into a file of the repository's git directory that only its owner may read,
/// and the hook names that file: a command line is visible to every local user (ps). Both
/// files are written whole under a temporary name with their final mode and renamed into
/// place, so that neither is readable by others for an instant, and neither is written into
/// an existing file (another name of it, a hard link, would get the content) or through a
/// symbolic link.
pub fn install_hook(spec_dir: &Path, dsn: Option<&str>) -> Result<(), String> {
    let hook = git_path(spec_dir, "hooks/post-commit")?;
    let dsn_file = git_path(spec_dir, "backfill-sync-models.dsn")?;
    // The connection as it is now: the process that commits may have another environment.
    let secret = hook_connection(dsn)?;
    let command = sync_command(spec_dir, secret.as_ref().map(|_| dsn_file.as_path()))?;
    if refuse_symlink(&hook)? {
        let existing = fs::read_to_string(&hook).map_err(|e| format!("{}: {e}", hook.display()))?;
        if !existing.contains(HOOK_MARKER) {
            let file = if secret.is_some() {
                format!(
                    " (with the connection string in {}, mode 600)",
                    dsn_file.display()
                )
            } else {
                String::new()
            };
            return Err(format!(
                "{} exists and was not written by backfill-sync-models; add this line to it instead{file}:\n  {command}",
                hook.display(),
            ));
        }
    }
    let mut script = format!("#!/bin/sh\n{HOOK_MARKER}: keeps backfill.process_model in step with this spec directory.\n");
    // Where libpq finds service files: no connection-string key names them.
    for name in ["PGSERVICEFILE", "PGSYSCONFDIR"] {
        if let Some(value) = std::env::var(name).ok().filter(|v| !v.is_empty()) {
            script.push_str(&format!("export {name}={}\n", shell_quote(&value)));
        }
    }
    script.push_str(&format!("{command} || true\n"));
    if let Some(secret) = secret {
        write_whole(&dsn_file, &format!("{secret}\n"), 0o600)?;
    }
    write_whole(&hook, &script, 0o700)?;
    eprintln!("installed {}", hook.display());
    Ok(())
}

/// `git rev-parse --git-path NAME` in the repository holding `spec_dir`.
pub fn git_path(spec_dir: &Path, name: &str) -> Result<PathBuf, String> {
    let git = Command::new("git")
        .arg("-C")
        .arg(spec_dir)
        .args(["rev-parse", "--git-path", name])
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !git.status.success() {
        return Err(format!(
            "{} is not in a git repository: {}",
            spec_dir.display(),
            String::from_utf8_lossy(&git.stderr).trim()
        ));
    }
    Ok(spec_dir.join(String::from_utf8_lossy(&git.stdout).trim()))
}

/// Whether `path` exists; an error when it is a symbolic link, which is never followed.
pub fn refuse_symlink(path: &Path) -> Result<bool, String> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(format!(
            "{} is a symbolic link; backfill-sync-models does not write through one (remove it first)",
            path.display()
        )),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes `path` as a new file with `content` and `mode` (created so, whatever the umask),
/// renamed over whatever was there.
#[cfg(unix)]
pub fn write_whole(path: &Path, content: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    refuse_symlink(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let failed = |e: std::io::Error| format!("{}: {e}", temporary.display());
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(failed)?;
    let written = file
        .set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(content.as_bytes()))
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&temporary, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&temporary);
        return Err(failed(e));
    }
    Ok(())
}

/// The command line the hook runs: this program, reading the connection string from
/// `dsn_file` when there is one.
pub fn sync_command(spec_dir: &Path, dsn_file: Option<&Path>) -> Result<String, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut command = shell_quote(&me.to_string_lossy());
    if let Some(file) = dsn_file {
        command.push_str(&format!(
            " --dsn-file {}",
            shell_quote(&file.to_string_lossy())
        ));
    }
    command.push_str(&format!(" {}", shell_quote(&spec_dir.to_string_lossy())));
    Ok(command)
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::read_dsn_file;

    #[test]
    fn files_are_written_whole_with_their_mode_and_never_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sync-models-write-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        // Over a file of another mode, hard-linked elsewhere: a new file, the other untouched.
        fs::write(dir.join("other"), "old").unwrap();
        fs::set_permissions(dir.join("other"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::hard_link(dir.join("other"), &file).unwrap();
        write_whole(&file, "new", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "new");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_to_string(dir.join("other")).unwrap(), "old");
        assert_eq!(read_dsn_file(&file).unwrap(), "new");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_dsn_file(&file).unwrap_err().contains("chmod 600"));
        let link = dir.join("link");
        std::os::unix::fs::symlink(dir.join("other"), &link).unwrap();
        assert!(write_whole(&link, "x", 0o600)
            .unwrap_err()
            .contains("symbolic link"));
        assert_eq!(fs::read_to_string(dir.join("other")).unwrap(), "old");
        fs::remove_dir_all(&dir).unwrap();
    }
}
