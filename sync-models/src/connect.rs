//! The connection: a connection string completed from libpq's environment and password file,
//! TLS as its settings say (tls.rs).

use crate::tls::TlsSettings;
use postgres::{Client, Config};
use std::fs;
use std::path::{Path, PathBuf};

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

/// Where to connect, and how: built once, connected to as often as needed (`--watch`
/// connects again after the server restarts).
pub struct Target {
    config: Config,
    tls: TlsSettings,
}

impl Target {
    pub fn new(dsn: Option<&str>) -> Result<Target, String> {
        let (dsn, tls) = TlsSettings::take_from(dsn)?;
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
        // libpq does not use TLS on a Unix-domain socket, whatever sslmode says.
        let socket_only = config
            .get_hosts()
            .iter()
            .all(|host| matches!(host, postgres::config::Host::Unix(_)));
        config.ssl_mode(if socket_only {
            postgres::config::SslMode::Disable
        } else {
            tls.wire_mode()
        });
        // The server's notices say which job an update queued.
        config.notice_callback(|notice| eprintln!("{}: {}", notice.severity(), notice.message()));
        Ok(Target { config, tls })
    }

    pub fn connect(&self) -> Result<Client, String> {
        let (connector, refusal) = self.tls.connector()?;
        self.config.connect(connector).map_err(|e| {
            let why = self.tls.refused(&refusal).unwrap_or_else(|| describe(&e));
            format!("cannot connect: {why}")
        })
    }
}

/// `config` with what it leaves out taken from `defaults` (libpq's environment), as libpq
/// completes a connection string.
pub fn with_defaults(mut config: Config, defaults: &Config) -> Config {
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
        let dbname = environment("PGDATABASE").or_else(|| config.get_user().map(str::to_owned));
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

/// A libpq environment variable's value; libpq takes an empty one as unset.
pub fn environment(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// libpq's environment variables, as far as this command needs them.
pub fn config_from_environment() -> Result<Config, String> {
    let mut config = Config::new();
    let user = environment("PGUSER")
        .or_else(|| environment("USER"))
        .unwrap_or_else(|| "postgres".into());
    config.user(&user);
    config.dbname(environment("PGDATABASE").as_deref().unwrap_or(&user));
    match environment("PGHOST") {
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
    if let Some(port) = environment("PGPORT") {
        config.port(
            port.parse()
                .map_err(|_| format!("PGPORT is not a port: {port}"))?,
        );
    }
    if let Some(password) = environment("PGPASSWORD") {
        config.password(password);
    }
    if let Some(name) = environment("PGAPPNAME") {
        config.application_name(&name);
    } else {
        config.application_name("backfill-sync-models");
    }
    if let Some(seconds) = environment("PGCONNECT_TIMEOUT").and_then(|s| s.parse().ok()) {
        config.connect_timeout(std::time::Duration::from_secs(seconds));
    }
    Ok(config)
}

/// The password ~/.pgpass (or PGPASSFILE) gives for this connection, as libpq reads it.
pub fn password_from_file(config: &Config) -> Option<String> {
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
pub fn pgpass_fields(line: &str) -> Vec<String> {
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

pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(hint) => format!("{} ({}); hint: {hint}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => e.to_string(),
    }
}

/// A value quoted for a `key=value` connection string.
pub fn conninfo_quote(s: &str) -> String {
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
}
