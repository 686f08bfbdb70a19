//! The connection is libpq's own (through `pq-sys`): a connection string or URI, service
//! files, `.pgpass`, every `PG*` variable, TLS with every `sslmode` and client certificates,
//! several hosts with `target_session_attrs`: whatever psql and SpiffWorkflow's psycopg
//! accept, this command accepts, and means the same by it, because the same library reads it.
//! What libpq refuses it refuses in its own words, which name the setting at fault.
//!
//! Only what the command needs is wrapped: statements with text parameters and text results.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::ptr::NonNull;

/// An open connection; closed when dropped.
pub struct Client {
    conn: NonNull<pq_sys::PGconn>,
}

/// An error the server reported (with its SQLSTATE), or one of libpq's (none).
#[derive(Debug)]
pub struct DbError {
    pub code: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.code, &self.hint) {
            (Some(code), Some(hint)) => write!(f, "{} ({code}); hint: {hint}", self.message),
            (Some(code), None) => write!(f, "{} ({code})", self.message),
            (None, _) => write!(f, "{}", self.message),
        }
    }
}

/// One row of a result, as text.
pub struct Row(Vec<Option<String>>);

impl Row {
    pub fn text(&self, column: usize) -> Option<&str> {
        self.0.get(column).and_then(|v| v.as_deref())
    }

    /// The column parsed as `T`; None when it is NULL or does not parse.
    pub fn get<T: std::str::FromStr>(&self, column: usize) -> Option<T> {
        self.text(column).and_then(|v| v.parse().ok())
    }
}

fn c_string(text: &str, what: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("{what} holds a NUL character"))
}

/// libpq's text, without the newline it ends its messages with.
///
/// SAFETY (caller): `text` is NULL or a NUL-terminated string that outlives the call.
unsafe fn owned(text: *const c_char) -> Option<String> {
    if text.is_null() {
        return None;
    }
    // SAFETY: not NULL, and NUL-terminated per the caller.
    let text = unsafe { CStr::from_ptr(text) };
    Some(text.to_string_lossy().trim_end().to_owned())
}

impl Client {
    /// Connects as libpq does with `conninfo` (a `key=value` string or a URI; empty: from the
    /// environment alone), the command's name as the fallback application name.
    pub fn connect(conninfo: &str) -> Result<Client, String> {
        let conninfo = c_string(conninfo, "the connection string")?;
        let keys = [
            c"dbname".as_ptr(),
            c"fallback_application_name".as_ptr(),
            std::ptr::null(),
        ];
        let values = [
            conninfo.as_ptr(),
            c"backfill-sync-models".as_ptr(),
            std::ptr::null(),
        ];
        // SAFETY: two NULL-terminated arrays of NUL-terminated strings, alive for the call;
        // expand_dbname = 1 makes libpq read the first value as a whole connection string.
        let conn = unsafe { pq_sys::PQconnectdbParams(keys.as_ptr(), values.as_ptr(), 1) };
        let Some(conn) = NonNull::new(conn) else {
            return Err("cannot connect: libpq is out of memory".to_owned());
        };
        let client = Client { conn };
        if client.is_closed() {
            // SAFETY: the connection's message, copied before the connection is freed (drop).
            let why = unsafe { owned(pq_sys::PQerrorMessage(client.conn.as_ptr())) };
            return Err(format!("cannot connect: {}", why.unwrap_or_default()));
        }
        Ok(client)
    }

    /// Whether the connection is gone (the server restarted, a network failure).
    pub fn is_closed(&self) -> bool {
        // SAFETY: a connection this client owns, not yet freed.
        let status = unsafe { pq_sys::PQstatus(self.conn.as_ptr()) };
        status != pq_sys::ConnStatusType::CONNECTION_OK
    }

    /// Runs `sql` with `params` ($1, $2, ... as text; the statement casts them) and returns
    /// its rows.
    pub fn query(&mut self, sql: &str, params: &[&str]) -> Result<Vec<Row>, DbError> {
        let client_error = |message: String| DbError {
            code: None,
            message,
            hint: None,
        };
        let sql = c_string(sql, "a statement").map_err(client_error)?;
        let params: Vec<CString> = params
            .iter()
            .map(|p| c_string(p, "a parameter"))
            .collect::<Result<_, _>>()
            .map_err(client_error)?;
        let values: Vec<*const c_char> = params.iter().map(|p| p.as_ptr()).collect();
        let count =
            i32::try_from(values.len()).map_err(|_| client_error("too many parameters".into()))?;
        // SAFETY: the statement and `count` text parameters are NUL-terminated strings alive
        // for the call; NULL types, lengths and formats mean text parameters, and 0 text results.
        let result = unsafe {
            pq_sys::PQexecParams(
                self.conn.as_ptr(),
                sql.as_ptr(),
                count,
                std::ptr::null(),
                values.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                0,
            )
        };
        let Some(result) = NonNull::new(result) else {
            // SAFETY: a connection this client owns.
            let why = unsafe { owned(pq_sys::PQerrorMessage(self.conn.as_ptr())) };
            return Err(client_error(why.unwrap_or_else(|| "no result".into())));
        };
        let result = PgResult(result);
        result.rows()
    }

    /// Runs statements without parameters or rows (BEGIN, COMMIT).
    pub fn execute(&mut self, sql: &str) -> Result<(), DbError> {
        self.query(sql, &[]).map(|_| ())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // SAFETY: the connection is this client's and is freed once, here.
        unsafe { pq_sys::PQfinish(self.conn.as_ptr()) }
    }
}

/// A result, cleared when dropped.
struct PgResult(NonNull<pq_sys::PGresult>);

impl PgResult {
    fn field(&self, code: u8) -> Option<String> {
        // SAFETY: a result this value owns; the field is copied before the result is cleared.
        unsafe { owned(pq_sys::PQresultErrorField(self.0.as_ptr(), code as i32)) }
    }

    fn rows(&self) -> Result<Vec<Row>, DbError> {
        let result = self.0.as_ptr();
        // SAFETY: a result this value owns.
        let status = unsafe { pq_sys::PQresultStatus(result) };
        match status {
            pq_sys::ExecStatusType::PGRES_TUPLES_OK | pq_sys::ExecStatusType::PGRES_COMMAND_OK => {}
            _ => {
                return Err(DbError {
                    code: self.field(pq_sys::PG_DIAG_SQLSTATE),
                    message: self
                        .field(pq_sys::PG_DIAG_MESSAGE_PRIMARY)
                        // SAFETY: a result this value owns.
                        .or_else(|| unsafe { owned(pq_sys::PQresultErrorMessage(result)) })
                        .unwrap_or_else(|| "the statement failed".into()),
                    hint: self.field(pq_sys::PG_DIAG_MESSAGE_HINT),
                });
            }
        }
        // SAFETY: a result this value owns; every index is within its rows and columns, and
        // each value is copied before the result is cleared.
        unsafe {
            let (rows, columns) = (pq_sys::PQntuples(result), pq_sys::PQnfields(result));
            Ok((0..rows)
                .map(|row| {
                    Row((0..columns)
                        .map(|column| match pq_sys::PQgetisnull(result, row, column) {
                            0 => Some(
                                CStr::from_ptr(pq_sys::PQgetvalue(result, row, column))
                                    .to_string_lossy()
                                    .into_owned(),
                            ),
                            _ => None,
                        })
                        .collect())
                })
                .collect())
        }
    }
}

impl Drop for PgResult {
    fn drop(&mut self) {
        // SAFETY: the result is this value's and is cleared once, here.
        unsafe { pq_sys::PQclear(self.0.as_ptr()) }
    }
}

/// The settings of libpq's option array `options` for which `pick` gives a value, in libpq's
/// order; the array is freed.
///
/// SAFETY (caller): `options` is an array libpq returned (PQconninfoParse, PQconndefaults),
/// ended by an element without keyword, and is not used afterwards.
unsafe fn settings_of(
    options: NonNull<pq_sys::PQconninfoOption>,
    pick: impl Fn(&str, Option<String>, Option<String>) -> Option<String>,
) -> Vec<(String, String)> {
    let mut settings = Vec::new();
    let mut option = options.as_ptr();
    // SAFETY: elements up to the one without keyword are in the array; their strings are
    // libpq's and copied (owned) before the array is freed.
    unsafe {
        while !(*option).keyword.is_null() {
            let keyword = owned((*option).keyword).unwrap_or_default();
            if let Some(value) = pick(&keyword, owned((*option).envvar), owned((*option).val)) {
                settings.push((keyword, value));
            }
            option = option.add(1);
        }
        pq_sys::PQconninfoFree(options.as_ptr());
    }
    settings
}

/// The settings a connection string (or URI) gives, as libpq reads it; libpq's message when
/// it cannot (`invalid connection option "sslcrt"`, `invalid sslmode value: "x"` is the
/// server's side: that one is found when connecting).
pub fn parse_conninfo(conninfo: &str) -> Result<Vec<(String, String)>, String> {
    let text = c_string(conninfo, "the connection string")?;
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: a NUL-terminated string, and a place for libpq's message.
    let options = unsafe { pq_sys::PQconninfoParse(text.as_ptr(), &mut error) };
    match NonNull::new(options) {
        // SAFETY: the array libpq returned, used only here.
        Some(options) => Ok(unsafe { settings_of(options, |_, _, value| value) }),
        None => {
            // SAFETY: libpq's message (or NULL when out of memory), freed once copied.
            let why = unsafe { owned(error) };
            if !error.is_null() {
                // SAFETY: the message libpq allocated for this call.
                unsafe { pq_sys::PQfreemem(error.cast()) };
            }
            Err(why.unwrap_or_else(|| "libpq is out of memory".into()))
        }
    }
}

/// The settings libpq's environment variables (`PGHOST`, `PGSSLMODE`, `PGSSLCERT`, ...) give
/// now: every connection option libpq reads from one, with the variable's value.
pub fn environment_settings() -> Vec<(String, String)> {
    // SAFETY: no arguments; NULL when out of memory.
    let Some(options) = NonNull::new(unsafe { pq_sys::PQconndefaults() }) else {
        return Vec::new();
    };
    // SAFETY: the array libpq returned, used only here.
    unsafe {
        settings_of(options, |_, variable, _| {
            variable
                .and_then(|name| std::env::var(name).ok())
                .filter(|value| !value.is_empty())
        })
    }
}

/// A value quoted for a `key=value` connection string.
pub fn conninfo_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A list of ids as a PostgreSQL array literal, for a `$1::bigint[]` parameter.
pub fn bigint_array(ids: &[i64]) -> String {
    format!(
        "{{{}}}",
        ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
    )
}

/// Texts as a JSON array, for a `jsonb_array_elements_text($1::jsonb)` parameter.
pub fn json_texts(texts: &[&str]) -> String {
    serde_json::Value::from(texts.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_as_text() {
        assert_eq!(bigint_array(&[4, 17]), "{4,17}");
        assert_eq!(bigint_array(&[]), "{}");
        assert_eq!(
            json_texts(&["a/b", "it's \"x\""]),
            r#"["a/b","it's \"x\""]"#
        );
        assert_eq!(conninfo_quote(r"it's a\b"), r"'it\'s a\\b'");
    }

    #[test]
    fn a_refused_connection_string_names_what_is_wrong() {
        let Err(why) = Client::connect("host=/nonexistent sslcert=/x bogus=1") else {
            panic!("connected")
        };
        assert!(why.contains("invalid connection option \"bogus\""), "{why}");
        let why = parse_conninfo("host=x sslcrt=/y").unwrap_err();
        assert!(
            why.contains("invalid connection option \"sslcrt\""),
            "{why}"
        );
    }

    #[test]
    fn a_uri_and_a_string_give_their_settings() {
        let given =
            parse_conninfo("postgresql://me@db.example:5433/app?sslmode=verify-full&sslcert=/c")
                .unwrap();
        for (key, value) in [
            ("host", "db.example"),
            ("port", "5433"),
            ("user", "me"),
            ("dbname", "app"),
            ("sslmode", "verify-full"),
            ("sslcert", "/c"),
        ] {
            assert!(
                given.contains(&(key.to_owned(), value.to_owned())),
                "{key} in {given:?}"
            );
        }
        let given = parse_conninfo("service=spiff password='it\\'s'").unwrap();
        assert!(given.contains(&("service".to_owned(), "spiff".to_owned())));
        assert!(given.contains(&("password".to_owned(), "it's".to_owned())));
        assert_eq!(parse_conninfo("").unwrap(), vec![]);
    }
}
