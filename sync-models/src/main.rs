//! backfill-sync-models: makes `backfill.process_model` say what SpiffWorkflow's spec directory
//! says. Every `process_model.json` under SPEC_DIR is a model whose id is its directory relative
//! to SPEC_DIR (`finance/invoice`); process groups (`process_group.json`) are not models. The
//! models go to `backfill.sync_process_models`, which inserts new ones and updates changed ones
//! (a change of paths queues a backfill job, as a hand-written UPDATE does).
//!
//! Prints one line per model that changed or was rejected; exits 1 when any was rejected, 2
//! when it could not run at all.

use postgres::{Client, Config, NoTls};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: backfill-sync-models [--dsn DSN | --dsn-file FILE] [--install-git-hook] SPEC_DIR

Reads every process_model.json under SPEC_DIR (SpiffWorkflow's BPMN spec directory) and syncs
the models' display_name and metadata_extraction_paths into backfill.process_model.

  --dsn DSN           connection string (\"host=... dbname=... user=...\" or postgresql://...);
                      what it leaves out comes from PGHOST, PGPORT, PGUSER, PGDATABASE,
                      PGPASSWORD (or ~/.pgpass), PGAPPNAME and PGCONNECT_TIMEOUT, as in libpq
  --dsn-file FILE     the connection string, read from FILE, which only its owner may read
                      (mode 600): a password kept off command lines
  --install-git-hook  install a post-commit hook in SPEC_DIR's git repository that runs this
                      sync after every commit (SpiffWorkflow commits there on every save),
                      then sync once; a connection string or PGPASSWORD given now is kept in
                      a file of mode 600 in the repository's git directory
";

/// Marks a hook this command wrote, so it may replace it and no other.
const HOOK_MARKER: &str = "# installed by backfill-sync-models";

struct Args {
    dsn: Option<String>,
    dsn_file: Option<PathBuf>,
    install_hook: bool,
    spec_dir: PathBuf,
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.iter().any(|arg| arg == "-h" || arg == "--help") {
        println!("{USAGE}");
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
        Ok(rejected) if rejected > 0 => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("backfill-sync-models: {message}");
            ExitCode::from(2)
        }
    }
}

fn parse_args(raw: Vec<String>) -> Result<Args, String> {
    let mut dsn = None;
    let mut dsn_file = None;
    let mut install_hook = false;
    let mut spec_dir = None;
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
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}")),
            _ if spec_dir.is_none() => spec_dir = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg}")),
        }
    }
    let spec_dir = spec_dir.ok_or("SPEC_DIR is missing")?;
    if dsn.is_some() && dsn_file.is_some() {
        return Err("--dsn and --dsn-file exclude each other".into());
    }
    Ok(Args {
        dsn,
        dsn_file,
        install_hook,
        spec_dir,
    })
}

/// Syncs; the number of models rejected.
fn run(args: &Args) -> Result<usize, String> {
    let spec_dir = args
        .spec_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", args.spec_dir.display()))?;
    let dsn = match &args.dsn_file {
        Some(file) => Some(read_dsn_file(file)?),
        None => args.dsn.clone(),
    };
    if args.install_hook {
        install_hook(&spec_dir, dsn.as_deref())?;
    }
    let (models, unreadable) = read_models(&spec_dir)?;
    for (id, why) in &unreadable {
        println!("rejected  {id}: {why}");
    }
    let mut client = connect(dsn.as_deref())?;
    let actions = match sync(&mut client, &models) {
        Ok(actions) => actions,
        // The whole array was refused before any model was written: the text of one of them
        // is what jsonb cannot hold (\u0000, a number beyond numeric's range). Each model is
        // sent alone then, and those the server refuses are rejected with its reason.
        Err(e) if is_data_error(&e) => one_by_one(&mut client, &models)?,
        Err(e) => return Err(describe(&e)),
    };
    let mut rejected = unreadable.len();
    for (id, action) in actions {
        match action.strip_prefix("rejected: ") {
            Some(why) => {
                rejected += 1;
                println!("rejected  {id}: {why}");
            }
            None if action == "unchanged" => {}
            None => println!("{action:<9} {id}"),
        }
    }
    Ok(rejected)
}

/// `backfill.sync_process_models` of `models`: (id, action) for each.
fn sync(client: &mut Client, models: &[Value]) -> Result<Vec<(String, String)>, postgres::Error> {
    let rows = client.query(
        "SELECT id, action FROM backfill.sync_process_models($1::text::jsonb)",
        &[&Value::Array(models.to_vec()).to_string()],
    )?;
    Ok(rows
        .iter()
        .map(|row| {
            let id: Option<String> = row.get(0);
            (id.unwrap_or_default(), row.get(1))
        })
        .collect())
}

/// `sync` of each model alone: one the server refuses for its data is rejected with the
/// server's reason, and the others are synced.
fn one_by_one(client: &mut Client, models: &[Value]) -> Result<Vec<(String, String)>, String> {
    let mut actions = Vec::new();
    for model in models {
        match sync(client, std::slice::from_ref(model)) {
            Ok(done) => actions.extend(done),
            Err(e) if is_data_error(&e) => {
                let id = model["id"].as_str().unwrap_or_default().to_owned();
                actions.push((id, format!("rejected: {}", describe(&e))));
            }
            Err(e) => return Err(describe(&e)),
        }
    }
    Ok(actions)
}

/// Whether the server refused data (SQLSTATE class 22, or 54: a value too big).
fn is_data_error(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|code| matches!(&code.code()[..2], "22" | "54"))
}

/// The models of the spec directory, in id order, and the files that could not be read (id,
/// reason).
#[allow(clippy::type_complexity)]
fn read_models(spec_dir: &Path) -> Result<(Vec<Value>, Vec<(String, String)>), String> {
    let mut files = Vec::new();
    find_model_files(spec_dir, &mut files)
        .map_err(|e| format!("cannot read {}: {e}", spec_dir.display()))?;
    files.sort();
    let mut models = Vec::new();
    let mut unreadable = Vec::new();
    for file in files {
        let dir = file.parent().unwrap_or(spec_dir);
        let id = dir
            .strip_prefix(spec_dir)
            .unwrap_or(dir)
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if id.is_empty() {
            unreadable.push((
                "process_model.json".to_owned(),
                "a model file directly in the spec directory has no model id".to_owned(),
            ));
            continue;
        }
        let parsed = fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()));
        match parsed {
            Ok(Value::Object(model)) => models.push(json!({
                "id": id,
                "display_name": model.get("display_name").cloned().unwrap_or(Value::Null),
                "metadata_extraction_paths":
                    model.get("metadata_extraction_paths").cloned().unwrap_or(Value::Null),
            })),
            Ok(_) => unreadable.push((id, "process_model.json is not a JSON object".to_owned())),
            Err(why) => {
                unreadable.push((id, format!("process_model.json is not valid JSON: {why}")))
            }
        }
    }
    Ok((models, unreadable))
}

/// Every process_model.json below `dir`, hidden directories (.git) left out.
fn find_model_files(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let kind = entry.file_type()?;
        if kind.is_dir() && !hidden {
            find_model_files(&path, found)?;
        } else if kind.is_file() && entry.file_name() == "process_model.json" {
            found.push(path);
        }
    }
    Ok(())
}

/// The connection string in `file` (its first line), which must not be readable or writable
/// by anyone but its owner, as libpq requires of a password file.
#[cfg(unix)]
fn read_dsn_file(file: &Path) -> Result<String, String> {
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

fn connect(dsn: Option<&str>) -> Result<Client, String> {
    let environment = config_from_environment()?;
    let mut config = match dsn {
        Some(dsn) => with_defaults(
            dsn.parse::<Config>()
                .map_err(|e| format!("invalid connection string: {e}"))?,
            &environment,
        ),
        None => environment,
    };
    if config.get_password().is_none() {
        if let Some(password) = password_from_file(&config) {
            config.password(password);
        }
    }
    // The server's notices say which job an update queued.
    config.notice_callback(|notice| eprintln!("{}: {}", notice.severity(), notice.message()));
    config.connect(NoTls).map_err(|e| {
        format!(
            "cannot connect: {} (this command connects without TLS: use a local or trusted connection)",
            describe(&e)
        )
    })
}

/// `config` with what it leaves out taken from `defaults` (libpq's environment), as libpq
/// completes a connection string.
fn with_defaults(mut config: Config, defaults: &Config) -> Config {
    if config.get_hosts().is_empty() {
        for host in defaults.get_hosts() {
            match host {
                postgres::config::Host::Tcp(name) => config.host(name),
                postgres::config::Host::Unix(path) => config.host_path(path),
            };
        }
    }
    if config.get_ports().is_empty() {
        for port in defaults.get_ports() {
            config.port(*port);
        }
    }
    if let (None, Some(user)) = (config.get_user(), defaults.get_user()) {
        config.user(user);
    }
    // libpq's default database is PGDATABASE, or else the user's name (the one connecting).
    if config.get_dbname().is_none() {
        let dbname = std::env::var("PGDATABASE")
            .ok()
            .filter(|name| !name.is_empty())
            .or_else(|| config.get_user().map(str::to_owned));
        if let Some(dbname) = dbname {
            config.dbname(&dbname);
        }
    }
    if let (None, Some(password)) = (config.get_password(), defaults.get_password()) {
        config.password(password);
    }
    if let (None, Some(name)) = (
        config.get_application_name(),
        defaults.get_application_name(),
    ) {
        config.application_name(name);
    }
    if let (None, Some(timeout)) = (config.get_connect_timeout(), defaults.get_connect_timeout()) {
        config.connect_timeout(*timeout);
    }
    config
}

/// libpq's environment variables, as far as this command needs them.
fn config_from_environment() -> Result<Config, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut config = Config::new();
    let user = var("PGUSER")
        .or_else(|| var("USER"))
        .unwrap_or_else(|| "postgres".into());
    config.user(&user);
    config.dbname(var("PGDATABASE").as_deref().unwrap_or(&user));
    match var("PGHOST") {
        Some(hosts) => {
            for host in hosts.split(',') {
                if host.starts_with('/') {
                    config.host_path(host);
                } else {
                    config.host(host);
                }
            }
        }
        None => {
            config.host_path("/var/run/postgresql");
        }
    }
    if let Some(port) = var("PGPORT") {
        config.port(
            port.parse()
                .map_err(|_| format!("PGPORT is not a port: {port}"))?,
        );
    }
    if let Some(password) = var("PGPASSWORD") {
        config.password(password);
    }
    if let Some(name) = var("PGAPPNAME") {
        config.application_name(&name);
    } else {
        config.application_name("backfill-sync-models");
    }
    if let Some(seconds) = var("PGCONNECT_TIMEOUT").and_then(|s| s.parse().ok()) {
        config.connect_timeout(std::time::Duration::from_secs(seconds));
    }
    if var("PGSSLMODE").is_some_and(|mode| !matches!(mode.as_str(), "disable" | "allow" | "prefer"))
    {
        return Err("PGSSLMODE asks for TLS, which this command does not speak".into());
    }
    Ok(config)
}

/// The password ~/.pgpass (or PGPASSFILE) gives for this connection, as libpq reads it.
fn password_from_file(config: &Config) -> Option<String> {
    let file = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pgpass")))?;
    let text = fs::read_to_string(file).ok()?;
    let host = match config.get_hosts().first()? {
        postgres::config::Host::Tcp(host) => host.clone(),
        postgres::config::Host::Unix(_) => "localhost".to_owned(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let wanted = [
        host.as_str(),
        port.as_str(),
        config.get_dbname().unwrap_or(""),
        config.get_user().unwrap_or(""),
    ];
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(pgpass_fields)
        .find(|fields| {
            fields.len() == 5
                && fields[..4]
                    .iter()
                    .zip(wanted)
                    .all(|(field, want)| field == "*" || field == want)
        })
        .map(|fields| fields[4].clone())
}

/// The fields of a .pgpass line: separated by `:`, with `\:` and `\\` escaped.
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' => fields.push(String::new()),
            _ => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(hint) => format!("{} ({}); hint: {hint}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => e.to_string(),
    }
}

/// Writes a post-commit hook that runs this sync, in the git repository holding `spec_dir`.
/// The connection string (`dsn`, or the password of PGPASSWORD), which may hold a password,
/// goes into a file of the repository's git directory that only its owner may read, and the
/// hook names that file: a command line is visible to every local user (ps). Both files are
/// written whole under a temporary name with their final mode and renamed into place, so that
/// neither is readable by others for an instant, and neither is written into an existing file
/// (another name of it, a hard link, would get the content) or through a symbolic link.
fn install_hook(spec_dir: &Path, dsn: Option<&str>) -> Result<(), String> {
    let hook = git_path(spec_dir, "hooks/post-commit")?;
    let dsn_file = git_path(spec_dir, "backfill-sync-models.dsn")?;
    // The connection as it is now: the process that commits may have another environment.
    let secret = match dsn {
        Some(dsn) => Some(dsn.to_owned()),
        None => std::env::var("PGPASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
            .map(|password| format!("password={}", conninfo_quote(&password))),
    };
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
    if dsn.is_none() {
        for name in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSFILE",
            "PGAPPNAME",
        ] {
            if let Ok(value) = std::env::var(name) {
                script.push_str(&format!("export {name}={}\n", shell_quote(&value)));
            }
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
fn git_path(spec_dir: &Path, name: &str) -> Result<PathBuf, String> {
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
fn refuse_symlink(path: &Path) -> Result<bool, String> {
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
fn write_whole(path: &Path, content: &str, mode: u32) -> Result<(), String> {
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
fn sync_command(spec_dir: &Path, dsn_file: Option<&Path>) -> Result<String, String> {
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

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A value quoted for a `key=value` connection string.
fn conninfo_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_split_on_unescaped_colons() {
        assert_eq!(
            pgpass_fields(r"db\:host:5432:*:me:pa\:ss\\word"),
            ["db:host", "5432", "*", "me", r"pa:ss\word"]
        );
    }

    #[test]
    fn arguments() {
        let args = parse_args(vec![
            "--dsn=host=x".into(),
            "--install-git-hook".into(),
            "spec".into(),
        ])
        .unwrap();
        assert_eq!(args.dsn.as_deref(), Some("host=x"));
        assert!(args.install_hook);
        assert_eq!(args.spec_dir, PathBuf::from("spec"));
        assert!(parse_args(vec![]).is_err());
        assert!(parse_args(vec!["--bogus".into(), "spec".into()]).is_err());
        let args = parse_args(vec!["--dsn-file".into(), "f".into(), "spec".into()]).unwrap();
        assert_eq!(args.dsn_file, Some(PathBuf::from("f")));
        assert!(parse_args(vec!["--dsn=x".into(), "--dsn-file=f".into(), "spec".into()]).is_err());
    }

    #[test]
    fn a_quoted_password_reads_back_as_it_was() {
        for password in ["plain", "it's", r"back\slash", "sp ace", r"\'"] {
            let config: Config = format!("host=h password={}", conninfo_quote(password))
                .parse()
                .unwrap();
            assert_eq!(config.get_password(), Some(password.as_bytes()));
        }
    }

    #[test]
    fn a_connection_string_is_completed_from_the_defaults() {
        let mut defaults = Config::new();
        defaults
            .host("envhost")
            .port(6543)
            .user("envuser")
            .password("envpw");
        let config = with_defaults("password=secret".parse().unwrap(), &defaults);
        assert_eq!(config.get_password(), Some(&b"secret"[..]));
        assert_eq!(config.get_user(), Some("envuser"));
        assert_eq!(config.get_ports(), [6543]);
        let config = with_defaults("host=h user=u".parse().unwrap(), &defaults);
        assert_eq!(config.get_ports(), [6543]);
        assert_eq!(config.get_user(), Some("u"));
        assert_eq!(config.get_password(), Some(&b"envpw"[..]));
    }

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

    #[test]
    fn models_are_found_by_directory_and_groups_skipped() {
        let dir = std::env::temp_dir().join(format!("sync-models-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("finance/invoice")).unwrap();
        fs::create_dir_all(dir.join(".git/x")).unwrap();
        fs::write(dir.join("finance/process_group.json"), "{}").unwrap();
        fs::write(
            dir.join("finance/invoice/process_model.json"),
            r#"{"display_name": "Invoice", "metadata_extraction_paths": [{"key": "n", "path": "a.b"}], "other": 1}"#,
        )
        .unwrap();
        fs::write(dir.join(".git/x/process_model.json"), "{}").unwrap();
        let (models, unreadable) = read_models(&dir).unwrap();
        assert_eq!(
            models,
            vec![json!({"id": "finance/invoice", "display_name": "Invoice",
                        "metadata_extraction_paths": [{"key": "n", "path": "a.b"}]})]
        );
        assert!(unreadable.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
