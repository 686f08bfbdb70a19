//! TLS as libpq means `sslmode` and `sslrootcert`. The connection-string parser of the
//! `postgres` crate knows only `disable`, `prefer` and `require`, so these two settings are
//! taken out of the connection string here and applied through OpenSSL.

use crate::connect::environment;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use postgres::config::SslMode as WireMode;
use postgres_openssl::MakeTlsConnector;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SslMode {
    Disable,
    /// libpq tries without TLS first; this command tries with TLS first (as `prefer`): both
    /// end with a connection whenever either way is accepted.
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return Err(format!(
                "invalid sslmode value: \"{text}\" (disable, allow, prefer, require, verify-ca or verify-full)"
            )),
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the certificates that may sign the server's come from.
#[derive(Clone, Debug, PartialEq)]
pub enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`: the roots the system's OpenSSL trusts.
    System,
}

/// The TLS settings of a connection, as given (connection string first, then PGSSLMODE and
/// PGSSLROOTCERT, then libpq's defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// Given explicitly (or by PGSSLROOTCERT); otherwise ~/.postgresql/root.crt, as in libpq.
    pub root_cert: Option<RootCert>,
}

/// How the server's certificate is checked, once the settings are resolved.
#[derive(Clone, Debug, PartialEq)]
enum Check {
    /// Encrypted, the certificate not checked (`prefer`, `require` without a root file).
    Nothing,
    /// Signed by a root of `RootCert` (`verify-ca`, and `require` when a root file exists).
    Chain(RootCert),
    /// Signed so, and naming the host connected to (`verify-full`).
    ChainAndHost(RootCert),
}

/// The reason OpenSSL gave for refusing the server's certificate, kept for the error message
/// (the handshake's own error says only "certificate verify failed").
pub type Refusal = Arc<Mutex<Option<String>>>;

impl TlsSettings {
    /// The settings of `dsn`, and `dsn` without them; `None` for no connection string.
    pub fn take_from(dsn: Option<&str>) -> Result<(Option<String>, TlsSettings), String> {
        let (rest, mode, root) = match dsn {
            Some(dsn) => {
                let (rest, taken) = remove_settings(dsn, &["sslmode", "sslrootcert"])?;
                let get = |key: &str| {
                    taken
                        .iter()
                        .rev()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.clone())
                };
                (Some(rest), get("sslmode"), get("sslrootcert"))
            }
            None => (None, None, None),
        };
        let root_cert =
            root.or_else(|| environment("PGSSLROOTCERT"))
                .map(|root| match root.as_str() {
                    "system" => RootCert::System,
                    _ => RootCert::File(PathBuf::from(root)),
                });
        let mode = match mode.or_else(|| environment("PGSSLMODE")) {
            Some(mode) => SslMode::parse(&mode)?,
            // libpq 16: sslrootcert=system makes verify-full the default.
            None if root_cert == Some(RootCert::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(format!(
                "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
                mode.name()
            ));
        }
        Ok((rest, TlsSettings { mode, root_cert }))
    }

    /// What the `postgres` crate is told: whether TLS is tried, and whether it is required.
    pub fn wire_mode(&self) -> WireMode {
        match self.mode {
            SslMode::Disable => WireMode::Disable,
            SslMode::Allow | SslMode::Prefer => WireMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
        }
    }

    fn check(&self) -> Result<Check, String> {
        let default_root =
            || std::env::var_os("HOME").map(|home| Path::new(&home).join(".postgresql/root.crt"));
        let root = match &self.root_cert {
            Some(root) => Some(root.clone()),
            None => default_root().filter(|f| f.exists()).map(RootCert::File),
        };
        let needed = |root: Option<RootCert>| {
            root.ok_or_else(|| {
                let file = default_root().unwrap_or_else(|| "~/.postgresql/root.crt".into());
                format!(
                    "root certificate file \"{}\" does not exist: give one with sslrootcert (or PGSSLROOTCERT), \
                     trust the system's roots with sslrootcert=system, or change sslmode to disable server \
                     certificate verification",
                    file.display()
                )
            })
        };
        Ok(match self.mode {
            SslMode::Disable | SslMode::Allow | SslMode::Prefer => Check::Nothing,
            // libpq: "if a root CA file exists, the behavior of sslmode=require will be the
            // same as that of verify-ca".
            SslMode::Require => root.map_or(Check::Nothing, Check::Chain),
            SslMode::VerifyCa => Check::Chain(needed(root)?),
            SslMode::VerifyFull => Check::ChainAndHost(needed(root)?),
        })
    }

    /// The connector for these settings, and where it keeps the reason it refused a server's
    /// certificate.
    pub fn connector(&self) -> Result<(MakeTlsConnector, Refusal), String> {
        let check = self.check()?;
        let failed = |e: openssl::error::ErrorStack| format!("cannot set up TLS: {e}");
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(failed)?;
        let refusal: Refusal = Arc::default();
        let root = match &check {
            Check::Nothing => None,
            Check::Chain(root) | Check::ChainAndHost(root) => Some(root),
        };
        match root {
            None => builder.set_verify(SslVerifyMode::NONE),
            Some(root) => {
                match root {
                    // The file's certificates and no others (SslConnector starts out trusting
                    // the system's roots, which libpq does not when given a file).
                    RootCert::File(file) => {
                        let pem = std::fs::read(file).map_err(|e| {
                            format!(
                                "could not read root certificate file \"{}\": {e}",
                                file.display()
                            )
                        })?;
                        let certificates = X509::stack_from_pem(&pem).map_err(|e| {
                            format!(
                                "could not read root certificate file \"{}\": {e}",
                                file.display()
                            )
                        })?;
                        if certificates.is_empty() {
                            return Err(format!(
                                "root certificate file \"{}\" holds no certificate",
                                file.display()
                            ));
                        }
                        let mut store = X509StoreBuilder::new().map_err(failed)?;
                        for certificate in certificates {
                            store.add_cert(certificate).map_err(failed)?;
                        }
                        builder.set_cert_store(store.build());
                    }
                    RootCert::System => builder.set_default_verify_paths().map_err(failed)?,
                }
                let kept = Arc::clone(&refusal);
                builder.set_verify_callback(SslVerifyMode::PEER, move |ok, context| {
                    if !ok {
                        if let Ok(mut reason) = kept.lock() {
                            reason.get_or_insert_with(|| context.error().error_string().to_owned());
                        }
                    }
                    ok
                });
            }
        }
        let check_host = matches!(check, Check::ChainAndHost(_));
        let verify = !matches!(check, Check::Nothing);
        let mut connector = MakeTlsConnector::new(builder.build());
        connector.set_callback(move |config, _host| {
            config.set_verify_hostname(check_host);
            if !verify {
                config.set_verify(SslVerifyMode::NONE);
            }
            Ok(())
        });
        Ok((connector, refusal))
    }

    /// Why a connection with these settings was refused, when it was the server's certificate.
    pub fn refused(&self, refusal: &Refusal) -> Option<String> {
        let reason = refusal.lock().ok()?.clone()?;
        Some(format!(
            "the server's certificate was refused (sslmode={}): {reason}",
            self.mode.name()
        ))
    }
}

/// How a connection string in URI form begins (libpq takes both).
const URI_PREFIXES: [&str; 2] = ["postgresql://", "postgres://"];

/// Whether `dsn` is a URI (`postgresql://...`) rather than `key=value` settings.
pub fn is_uri(dsn: &str) -> bool {
    URI_PREFIXES.iter().any(|prefix| dsn.starts_with(prefix))
}

/// `dsn` without the settings named `keys`, and their values (in the order written). Both
/// forms libpq takes: `key=value ...` (values quoted with '' and \ as libpq quotes them) and
/// `postgresql://...?key=value&...` (percent-encoded).
pub fn remove_settings(
    dsn: &str,
    keys: &[&str],
) -> Result<(String, Vec<(String, String)>), String> {
    let mut taken = Vec::new();
    for prefix in URI_PREFIXES {
        if let Some(rest) = dsn.strip_prefix(prefix) {
            let Some((head, query)) = rest.split_once('?') else {
                return Ok((dsn.to_owned(), taken));
            };
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let key_text = percent_decode(key)?;
                if keys.contains(&key_text.as_str()) {
                    taken.push((key_text, percent_decode(value)?));
                } else {
                    kept.push(pair);
                }
            }
            let rest = if kept.is_empty() {
                format!("{prefix}{head}")
            } else {
                format!("{prefix}{head}?{}", kept.join("&"))
            };
            return Ok((rest, taken));
        }
    }
    let mut kept = String::new();
    let mut chars = dsn.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(format!(
                "invalid connection string: missing \"=\" after \"{key}\""
            ));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                    Some((_, '\'')) => break,
                    Some((_, c)) => value.push(c),
                    None => {
                        return Err("invalid connection string: unterminated quoted value".into())
                    }
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    _ => value.push(c),
                }
            }
        }
        let end = chars.peek().map_or(dsn.len(), |&(i, _)| i);
        if keys.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            kept.push_str(dsn[start..end].trim_end());
            kept.push(' ');
        }
    }
    Ok((kept.trim_end().to_owned(), taken))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid percent-encoding in connection URI: {text}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| format!("invalid percent-encoding in connection URI: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(dsn: &str) -> (String, Vec<(String, String)>) {
        remove_settings(dsn, &["sslmode", "sslrootcert"]).unwrap()
    }

    #[test]
    fn settings_are_taken_out_of_a_key_value_string() {
        let (rest, taken) =
            take("host=db sslmode=verify-full  sslrootcert='/etc/my ca.crt' password='a b\\'c' port = 5433");
        assert_eq!(rest, "host=db password='a b\\'c' port = 5433");
        assert_eq!(
            taken,
            [
                ("sslmode".into(), "verify-full".into()),
                ("sslrootcert".into(), "/etc/my ca.crt".into())
            ]
        );
        let config: postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(take("host=db").0, "host=db");
        assert!(remove_settings("host", &["sslmode"]).is_err());
        assert!(remove_settings("host='x", &["sslmode"]).is_err());
    }

    #[test]
    fn settings_are_taken_out_of_a_uri() {
        let (rest, taken) =
            take("postgresql://u:p@db:5433/app?sslmode=require&application_name=x&sslrootcert=%2Ftmp%2Fca.crt");
        assert_eq!(rest, "postgresql://u:p@db:5433/app?application_name=x");
        assert_eq!(
            taken,
            [
                ("sslmode".into(), "require".into()),
                ("sslrootcert".into(), "/tmp/ca.crt".into())
            ]
        );
        assert_eq!(
            take("postgres://db/app?sslmode=disable").0,
            "postgres://db/app"
        );
        assert_eq!(take("postgres://db/app").0, "postgres://db/app");
    }

    #[test]
    fn modes_mean_what_they_mean_to_libpq() {
        let settings = |dsn: &str| TlsSettings::take_from(Some(dsn)).map(|(_, s)| s);
        assert_eq!(
            settings("sslmode=require").unwrap().wire_mode(),
            WireMode::Require
        );
        assert_eq!(
            settings("sslmode=verify-ca").unwrap().wire_mode(),
            WireMode::Require
        );
        assert_eq!(
            settings("sslmode=allow").unwrap().wire_mode(),
            WireMode::Prefer
        );
        assert_eq!(
            settings("sslmode=disable").unwrap().wire_mode(),
            WireMode::Disable
        );
        assert!(settings("sslmode=bogus")
            .unwrap_err()
            .contains("invalid sslmode"));
        let system = settings("sslrootcert=system").unwrap();
        assert_eq!(system.mode, SslMode::VerifyFull);
        assert!(settings("sslrootcert=system sslmode=require")
            .unwrap_err()
            .contains("weak sslmode"));
        let missing = settings("sslmode=verify-full sslrootcert=/nonexistent/ca.crt").unwrap();
        assert!(missing.connector().is_err());
        let file = TlsSettings {
            mode: SslMode::Require,
            root_cert: Some(RootCert::File("/x".into())),
        };
        assert_eq!(
            file.check().unwrap(),
            Check::Chain(RootCert::File("/x".into()))
        );
    }
}
