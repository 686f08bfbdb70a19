//! Throwaway PostgreSQL clusters for tests that need real commits, restarts and crashes.
//!
//! Each `Cluster` is initdb'd under `$BACKFILL_CLUSTER_ROOT/test-clusters/` (set by
//! scripts/test: a directory the cluster's account can reach wherever the clone is; the
//! system's temporary directory otherwise), runs as a non-root user (the
//! `postgres` account when the tests run as root), listens on its own loopback port with the
//! extension preloaded, and is stopped and removed when dropped (kept, with its log, when the
//! test failed). The extension must already be installed: `scripts/test` does that.

#![allow(dead_code)]

pub mod spiff;

use postgres::{Client, NoTls};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

static SERIAL: AtomicUsize = AtomicUsize::new(0);

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    bindir: PathBuf,
    libdir: PathBuf,
    /// The lines the test added to postgresql.conf (the port aside).
    conf: Vec<String>,
    running: bool,
}

/// The pg_config of the server the tests use (scripts/lib.sh's use_major exports it).
pub fn default_pg_config() -> PathBuf {
    PathBuf::from(std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".to_owned()))
}

fn pg_config_of(pg_config: &Path, arg: &str) -> PathBuf {
    let out = Command::new(pg_config)
        .arg(arg)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", pg_config.display()));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs a PostgreSQL program as the cluster's (non-root) owner, with the libraries of
/// `libdir` (its server's), from /.
fn run_as_owner(libdir: &Path, program: &Path, args: &[&str]) -> Output {
    run_as_owner_in(Path::new("/"), libdir, program, args)
}

/// `run_as_owner` from directory `cwd`.
fn run_as_owner_in(cwd: &Path, libdir: &Path, program: &Path, args: &[&str]) -> Output {
    // The server's own libpq first: the relocatable servers the tests use for 16 to 18 load
    // libpqwalreceiver.so with a run path that does not exist here, which would find Debian's
    // libpq 15 and refuse a newer pg_basebackup's primary_conninfo (sslnegotiation).
    let library_path = format!("LD_LIBRARY_PATH={}", libdir.display());
    let mut cmd = if is_root() {
        let mut c = Command::new("sudo");
        c.args(["-n", "-u", "postgres", "--", "env", &library_path])
            .arg(program);
        c
    } else {
        let mut c = Command::new("env");
        c.arg(&library_path).arg(program);
        c
    };
    // Not the test's current directory: the account may not be allowed into it.
    cmd.current_dir(cwd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn check(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An empty directory of its own below `root` for a cluster's data, closed to others and
/// owned by the account the cluster runs as.
fn new_data_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(format!(
        "{name}-{}-{}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    {
        // A data directory must not be open to others.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    }
    if is_root() {
        check(
            "chown",
            Command::new("chown")
                .arg("postgres:")
                .arg(&dir)
                .output()
                .unwrap(),
        );
    }
    dir
}

impl Cluster {
    /// initdb + start, with `extra_conf` lines appended to postgresql.conf.
    pub fn start(name: &str, extra_conf: &[&str]) -> Cluster {
        Cluster::start_on(&default_pg_config(), name, extra_conf)
    }

    /// `start` with the server whose pg_config is `pg_config`.
    pub fn start_on(pg_config: &Path, name: &str, extra_conf: &[&str]) -> Cluster {
        let mut cluster = Cluster::init_on(pg_config, name, extra_conf);
        cluster.pg_start();
        cluster
    }

    /// A new data directory (initdb) with the test's settings, not started.
    fn init_on(pg_config: &Path, name: &str, extra_conf: &[&str]) -> Cluster {
        Cluster::init_with(pg_config, name, extra_conf, &[])
    }

    /// `init_on` with more options for initdb.
    fn init_with(
        pg_config: &Path,
        name: &str,
        extra_conf: &[&str],
        initdb_options: &[&str],
    ) -> Cluster {
        let pg_config = |arg| pg_config_of(pg_config, arg);
        let sharedir = pg_config("--sharedir");
        assert!(
            sharedir.join("extension/backfill.control").exists(),
            "the backfill extension is not installed in {}: run scripts/test, which installs it",
            sharedir.display()
        );
        let base = std::env::var_os("BACKFILL_CLUSTER_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("backfill-test-clusters"));
        let root = base.join("test-clusters");
        fs::create_dir_all(&root).unwrap();
        if is_root() {
            // The cluster's account must be able to go through every parent.
            use std::os::unix::fs::PermissionsExt;
            for dir in [&base, &root] {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let dir = new_data_dir(&root, name);
        let bindir = pg_config("--bindir");
        let libdir = pg_config("--libdir");
        let dir_text = dir.to_str().unwrap().to_owned();
        check(
            "initdb",
            run_as_owner(
                &libdir,
                &bindir.join("initdb"),
                &[
                    "-D",
                    &dir_text,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ]
                .iter()
                .chain(initdb_options)
                .copied()
                .collect::<Vec<_>>(),
            ),
        );
        let port = free_port();
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_owned(),
            "unix_socket_directories = ''".to_owned(),
            "shared_preload_libraries = 'backfill'".to_owned(),
            // Room for the launcher and backfill.max_workers (8) besides PostgreSQL's own.
            "max_worker_processes = 16".to_owned(),
            "fsync = off".to_owned(),
            "max_connections = 40".to_owned(),
            "log_line_prefix = '%m [%p] %b '".to_owned(),
        ];
        conf.extend(extra_conf.iter().map(|s| s.to_string()));
        let conf_path = dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf_path).unwrap();
        text.push_str(&format!("\n# test cluster\nport = {port}\n"));
        text.push_str(&conf.join("\n"));
        text.push('\n');
        fs::write(&conf_path, text).unwrap();
        Cluster {
            dir,
            port,
            bindir,
            libdir,
            conf,
            running: false,
        }
    }

    /// pg_upgrade of this (stopped) cluster to the server of `pg_config`, as a DBA runs it:
    /// `--check` first, then the upgrade (`--copy`: this cluster stays as it was). The new
    /// cluster has this one's settings and is not started. Panics with pg_upgrade's output
    /// when either run fails.
    pub fn pg_upgrade_to(&self, pg_config: &Path, name: &str) -> Cluster {
        assert!(!self.running, "pg_upgrade needs the old cluster stopped");
        let conf: Vec<&str> = self.conf.iter().map(String::as_str).collect();
        // The new cluster checksums its pages as the old one does (pg_upgrade requires it;
        // initdb's default changed in 18).
        let control = check(
            "pg_controldata",
            self.tool("pg_controldata", &["-D", self.dir.to_str().unwrap()]),
        );
        let checksums = !String::from_utf8_lossy(&control.stdout)
            .lines()
            .any(|line| line.starts_with("Data page checksum version:") && line.ends_with(" 0"));
        let new_major: u32 = pg_config_of(pg_config, "--version")
            .to_string_lossy()
            .split_whitespace()
            .nth(1)
            .and_then(|version| version.split('.').next()?.parse().ok())
            .unwrap_or(0);
        let checksum_option: &[&str] = match (checksums, new_major >= 18) {
            (true, _) => &["--data-checksums"],
            (false, true) => &["--no-data-checksums"],
            (false, false) => &[],
        };
        let new = Cluster::init_with(pg_config, name, &conf, checksum_option);
        // pg_upgrade writes its scripts into the current directory and needs it writable.
        let root = self.dir.parent().unwrap();
        let work = new_data_dir(root, &format!("{name}-work"));
        let (old_port, new_port) = (free_port().to_string(), free_port().to_string());
        let (old_data, new_data) = (self.dir.to_str().unwrap(), new.dir.to_str().unwrap());
        let (old_bin, new_bin) = (self.bindir.to_str().unwrap(), new.bindir.to_str().unwrap());
        for check_only in [true, false] {
            let mut args = vec![
                "-b", old_bin, "-B", new_bin, "-d", old_data, "-D", new_data, "-p", &old_port,
                "-P", &new_port, "-U", "postgres", "--copy",
            ];
            if check_only {
                args.push("--check");
            }
            let out = run_as_owner_in(&work, &new.libdir, &new.bindir.join("pg_upgrade"), &args);
            let output_dir = new.dir.join("pg_upgrade_output.d");
            assert!(
                out.status.success(),
                "pg_upgrade{} failed:\n{}\n{}\n(its logs: {})",
                if check_only { " --check" } else { "" },
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                output_dir.display()
            );
        }
        let _ = fs::remove_dir_all(&work);
        new
    }

    pub fn pg_start(&mut self) {
        self.pg_start_with("");
    }

    /// Starts the server with `options` for the postmaster (pg_ctl -o: "-c name=value ...").
    pub fn pg_start_with(&mut self, options: &str) {
        let dir = self.dir.to_str().unwrap().to_owned();
        let log = self.dir.join("server.log");
        let out = run_as_owner(
            &self.libdir,
            &self.bindir.join("pg_ctl"),
            &[
                "-D",
                &dir,
                "-l",
                log.to_str().unwrap(),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        if !out.status.success() {
            panic!("pg_ctl start failed:\n{}", self.log());
        }
        self.running = true;
    }

    /// Promotes a standby to a primary, waiting until it is one.
    pub fn promote(&self) {
        let dir = self.dir.to_str().unwrap().to_owned();
        check(
            "pg_ctl promote",
            run_as_owner(
                &self.libdir,
                &self.bindir.join("pg_ctl"),
                &["-D", &dir, "-w", "promote"],
            ),
        );
    }

    /// Stops the server: "fast" (clean) or "immediate" (as after a crash, with recovery on start).
    pub fn pg_stop(&mut self, mode: &str) {
        let dir = self.dir.to_str().unwrap().to_owned();
        check(
            "pg_ctl stop",
            run_as_owner(
                &self.libdir,
                &self.bindir.join("pg_ctl"),
                &["-D", &dir, "-m", mode, "-w", "-t", "60", "stop"],
            ),
        );
        self.running = false;
    }

    pub fn connect(&self, db: &str) -> Client {
        self.connect_as("postgres", db)
    }

    /// Limits the address space of the postmaster, and so of every process it starts from now
    /// on (crash restarts included), to `above` bytes more than it has now, as a container's
    /// memory limit does (`prlimit --as`, run as the cluster's account: root is refused).
    pub fn limit_address_space(&self, above: u64) {
        let pid = fs::read_to_string(self.dir.join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_owned();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kilobytes: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmSize:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
            .expect("the postmaster's VmSize");
        let limit = kilobytes * 1024 + above;
        check(
            "prlimit",
            run_as_owner(
                &self.libdir,
                Path::new("/usr/bin/prlimit"),
                &[&format!("--pid={pid}"), &format!("--as={limit}:unlimited")],
            ),
        );
    }

    /// Runs PostgreSQL's program `name` (pg_dump, pg_restore, ...) as the cluster's owner;
    /// its output, whatever its exit status.
    /// The directory of the server's programs (psql among them).
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    pub fn tool(&self, name: &str, args: &[&str]) -> Output {
        run_as_owner(&self.libdir, &self.bindir.join(name), args)
    }

    /// A hot standby of this cluster (pg_basebackup, streaming), started on a port of its
    /// own, with the same settings (the extension preloaded).
    pub fn standby(&self, name: &str) -> Cluster {
        let root = self.dir.parent().unwrap();
        let dir = new_data_dir(root, name);
        let port = self.port.to_string();
        let dir_text = dir.to_str().unwrap().to_owned();
        check(
            "pg_basebackup",
            self.tool(
                "pg_basebackup",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "postgres",
                    "-D",
                    &dir_text,
                    "-R",
                    "-X",
                    "stream",
                    // Not a checkpoint spread over minutes before the copy starts.
                    "--checkpoint=fast",
                ],
            ),
        );
        let port = free_port();
        let conf_path = dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf_path).unwrap();
        text.push_str(&format!("\n# standby\nport = {port}\n"));
        fs::write(&conf_path, text).unwrap();
        let _ = fs::remove_file(dir.join("server.log"));
        let mut standby = Cluster {
            dir,
            port,
            bindir: self.bindir.clone(),
            libdir: self.libdir.clone(),
            conf: self.conf.clone(),
            running: false,
        };
        standby.pg_start();
        standby
    }

    /// kill -9 of a server process, then waits until the postmaster has reset every
    /// connection and is ready again after crash recovery (a connection made before the reset
    /// would be cut by it).
    pub fn kill_9(&self, pid: i32) {
        const READY: &str = "database system is ready to accept connections";
        let ready_before = self.log().matches(READY).count();
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success(), "kill -9 {pid}");
        wait_for("the server to recover", Duration::from_secs(60), || {
            (self.log().matches(READY).count() > ready_before).then_some(())
        });
    }

    /// A connection to `db` as role `user` (trust authentication).
    pub fn connect_as(&self, user: &str, db: &str) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(
                &format!("host=127.0.0.1 port={} user={user} dbname={db}", self.port),
                NoTls,
            ) {
                Ok(client) => return client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!(
                    "cannot connect to {db} on port {}: {e}\n{}",
                    self.port,
                    self.log()
                ),
            }
        }
    }

    /// A connection that also collects the NOTICE and WARNING messages the server sends.
    pub fn connect_with_notices(&self, db: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
        self.connect_as_with_notices("postgres", db)
    }

    /// `connect_with_notices` as role `user`.
    pub fn connect_as_with_notices(
        &self,
        user: &str,
        db: &str,
    ) -> (Client, Arc<Mutex<Vec<String>>>) {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&notices);
        let client = postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .dbname(db)
            .notice_callback(move |notice| {
                let hint = notice
                    .hint()
                    .map(|h| format!(" (HINT: {h})"))
                    .unwrap_or_default();
                let line = format!("{}: {}{hint}", notice.severity(), notice.message());
                sink.lock().unwrap().push(line)
            })
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to {db}: {e}"));
        (client, notices)
    }

    /// Runs psql as `user` on `db` with `script` on its standard input; panics with psql's
    /// output when it fails.
    pub fn psql(&self, user: &str, db: &str, script: &str) {
        use std::io::Write;
        let mut child = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                db,
                "-f",
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates database `db` with the extension installed and returns a connection to it.
    pub fn create_db(&self, db: &str) -> Client {
        self.create_db_with_notices(db).0
    }

    /// `create_db`, also collecting what the server said (CREATE EXTENSION's warnings).
    pub fn create_db_with_notices(&self, db: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
        let mut admin = self.connect("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .unwrap();
        let (mut client, notices) = self.connect_with_notices(db);
        client.batch_execute("CREATE EXTENSION backfill").unwrap();
        (client, notices)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Sets a parameter with ALTER SYSTEM and reloads the configuration.
    pub fn set_and_reload(&self, name: &str, value: &str) {
        let mut admin = self.connect("postgres");
        admin
            .batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
            .unwrap();
        admin.batch_execute("SELECT pg_reload_conf()").unwrap();
        // Reload is asynchronous: a new session sees the value once the postmaster has read
        // the file (and so has forked it with the new value); running processes read it at
        // their next look.
        wait_for(
            &format!("{name} = '{value}' after the reload"),
            Duration::from_secs(30),
            || {
                let shown: String = self
                    .connect("postgres")
                    .query_one(&format!("SHOW {name}"), &[])
                    .ok()?
                    .get(0);
                (shown == value).then_some(())
            },
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let dir = self.dir.to_str().unwrap().to_owned();
            let _ = run_as_owner(
                &self.libdir,
                &self.bindir.join("pg_ctl"),
                &["-D", &dir, "-m", "immediate", "-w", "stop"],
            );
        }
        if std::thread::panicking() {
            eprintln!(
                "test cluster kept at {} (server.log has the server's side)",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A server (`extra_conf` appended) with database "app" created, the extension installed in
/// it and `data_sql` loaded; and a connection to it. Without `workers`
/// (`backfill.max_workers = 0`) no background worker runs jobs: the test runs them with
/// CALL backfill.run.
pub fn start_app(
    name: &str,
    workers: bool,
    extra_conf: &[&str],
    data_sql: &str,
) -> (Cluster, Client) {
    let mut conf = if workers {
        vec![]
    } else {
        vec!["backfill.max_workers = 0"]
    };
    conf.extend_from_slice(extra_conf);
    let cluster = Cluster::start(name, &conf);
    let mut db = cluster.create_db("app");
    db.batch_execute(data_sql).unwrap();
    (cluster, db)
}

/// What the application's owner role needs (docs/spiffworkflow.md); its own tables need
/// nothing more.
pub const SPIFF_GRANTS: &str = "\
GRANT USAGE ON SCHEMA backfill TO spiff;
GRANT SELECT, INSERT, UPDATE ON backfill.process_model TO spiff;
GRANT SELECT ON backfill.job, backfill.progress, backfill.coverage TO spiff;
GRANT EXECUTE ON FUNCTION backfill.attach(text), backfill.detach(),
                          backfill.sync_process_models(jsonb),
                          backfill.enqueue(text, text[], boolean, timestamptz), backfill.cancel(bigint),
                          backfill.wait(bigint, interval), backfill.run_begin(bigint),
                          backfill.run_batch(bigint), backfill.run_end(bigint),
                          backfill.worker_pid(), backfill.preview(text, jsonb, integer),
                          backfill.preview_summary(text, jsonb, integer),
                          backfill.count_coverage(text), backfill.catch_up(text),
                          backfill.check_worker()
    TO spiff;
GRANT EXECUTE ON PROCEDURE backfill.run(bigint) TO spiff;";

/// `SPIFF_GRANTS` for another role.
pub fn spiff_grants(role: &str) -> String {
    SPIFF_GRANTS.replace("spiff", role)
}

/// Appends `key` at `path` to the model's metadata_extraction_paths; returns the newest job
/// id (the one the update queued, when it queued one).
pub fn add_path(db: &mut Client, model: &str, key: &str, path: &str) -> i64 {
    let element = format!(
        r#"[{{"key": {}, "path": {}}}]"#,
        json_string(key),
        json_string(path)
    );
    db.execute(
        "UPDATE backfill.process_model
            SET metadata_extraction_paths = metadata_extraction_paths || $2::text::jsonb
          WHERE id = $1",
        &[&model, &element],
    )
    .unwrap();
    one_i64(
        db,
        "SELECT max(id) FROM backfill.job WHERE parent_id IS NULL",
    )
}

/// Polls `probe` until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The demo's sample (scripts/sample.sql): three models, 6,000 instances with interleaved ids,
/// 2 to 5 tasks each in mixed states and end orders, 200 instances of each model without a
/// completed task, and the metadata the live engine wrote for the models' existing paths.
pub const SAMPLE_SQL: &str = include_str!("../../scripts/sample.sql");

/// Instances of `model` whose row for `key` is missing, duplicated, or not equal to what
/// `extract_metadata` gives for the latest completed task data through `path`.
pub fn wrong_rows(db: &mut Client, model: &str, key: &str, path: &str) -> i64 {
    wrong_rows_where(db, model, key, path, "true")
}

/// `wrong_rows` over the instances `i` that satisfy `filter`.
pub fn wrong_rows_where(db: &mut Client, model: &str, key: &str, path: &str, filter: &str) -> i64 {
    let paths = format!(
        r#"[{{"key": {}, "path": {}}}]"#,
        json_string(key),
        json_string(path)
    );
    db.query_one(
        &format!(
            "SELECT count(*) FROM backfill.process_instance i
          WHERE i.process_model_identifier = $1 AND ({filter})
            AND (SELECT count(*) FROM backfill.process_instance_metadata m
                  WHERE m.process_instance_id = i.id AND m.key = $2
                    AND m.value IS NOT DISTINCT FROM
                        backfill.extract_metadata(backfill.latest_task_data(i.id), $3::text::jsonb) ->> $2) <> 1"
        ),
        &[&model, &key, &paths],
    )
    .unwrap()
    .get(0)
}

/// Polls `job` over `db` until it is neither queued nor running; its state. (Over one
/// connection: a new one may be what a test changes; `wait_ended` connects anew each look.)
pub fn ended(db: &mut Client, job: i64, within: Duration) -> String {
    wait_for(&format!("job {job} to end"), within, || {
        let state: String = db
            .query_one("SELECT state FROM backfill.job WHERE id = $1", &[&job])
            .unwrap()
            .get(0);
        (state != "queued" && state != "running").then_some(state)
    })
}

/// Waits until job `job` of `database` is neither queued nor running, each look over a new
/// connection (the server may be restarting); its state.
pub fn wait_ended(cluster: &Cluster, database: &str, job: i64) -> String {
    wait_for("the job to end", Duration::from_secs(120), || {
        let mut db = cluster.connect(database);
        let state: String = db
            .query_one("SELECT state FROM backfill.job WHERE id = $1", &[&job])
            .ok()?
            .get(0);
        (state != "queued" && state != "running").then_some(state)
    })
}

/// The SQLSTATE of a failed statement ("" when it is not a server error).
pub fn sqlstate(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_default()
}

pub fn json_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn one_i64(db: &mut Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).unwrap().get(0)
}

pub fn one_text(db: &mut Client, sql: &str) -> String {
    db.query_one(sql, &[]).unwrap().get(0)
}

/// `n` instances of model `bulk/model` (and `n / 4` of `other/model` interleaved), three tasks
/// each: two completed with end times out of creation order, one ready.
pub fn bulk_sql(n: i64) -> String {
    format!(
        r#"
INSERT INTO backfill.process_model (id, metadata_extraction_paths) VALUES
    ('bulk/model', '[]'),
    ('other/model', '[]');
INSERT INTO backfill.process_instance (id, process_model_identifier, status)
SELECT i, CASE WHEN i % 5 = 4 THEN 'other/model' ELSE 'bulk/model' END, 'complete'
  FROM generate_series(1, {total}) i;
CREATE TEMP TABLE bulk_task AS
SELECT i, t,
       jsonb_build_object('invoice', jsonb_build_object('number', 'N-' || i, 'status', (ARRAY['draft', 'sent', 'paid'])[t],
                                                        'total', i * 1.5 + t, 'tags', jsonb_build_array('a', t)),
                          'step', t) AS data
  FROM generate_series(1, {total}) i, generate_series(1, 3) t;
INSERT INTO backfill.json_data SELECT DISTINCT md5(data::text), data FROM bulk_task;
INSERT INTO backfill.task (guid, process_instance_id, state, json_data_hash, end_in_seconds)
SELECT md5(i || '/' || t)::uuid, i, CASE WHEN t = 3 THEN 'READY' ELSE 'COMPLETED' END, md5(data::text),
       CASE WHEN t = 3 THEN NULL ELSE i * 10 + (t * 7 + i) % 3 END
  FROM bulk_task;
DROP TABLE bulk_task;
ANALYZE;
"#,
        total = n + n / 4
    )
}

/// Starts `sql` in a session of its own named `name`, and returns once it runs.
pub fn in_background(cluster: &Cluster, name: &str, sql: &str) -> thread::JoinHandle<()> {
    let mut session = cluster.connect("app");
    session
        .batch_execute(&format!("SET application_name = '{name}'"))
        .unwrap();
    let sql = sql.to_owned();
    let handle = thread::spawn(move || {
        // Ends when cancelled.
        let _ = session.batch_execute(&sql);
    });
    let mut db = cluster.connect("app");
    wait_for(&format!("{name} to run"), Duration::from_secs(30), || {
        (one_i64(
            &mut db,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}' AND state = 'active'"),
        ) == 1)
            .then_some(())
    });
    handle
}

/// `[{"key": ..., "path": ...}, ...]` for `(key, path)` pairs.
pub fn paths_json(paths: &[(&str, &str)]) -> String {
    let elements: Vec<String> = paths
        .iter()
        .map(|(k, p)| {
            format!(
                "{{\"key\": {}, \"path\": {}}}",
                json_string(k),
                json_string(p)
            )
        })
        .collect();
    format!("[{}]", elements.join(", "))
}

/// The sync command, built by scripts/test (target/debug unless BACKFILL_SYNC_MODELS says).
pub fn sync_command() -> PathBuf {
    std::env::var_os("BACKFILL_SYNC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug/backfill-sync-models")
        })
}

/// Runs the sync command with `args` and `env` added to its environment: its exit status,
/// standard output and standard error.
pub fn run_sync(args: &[&str], env: &[(&str, String)]) -> (Option<i32>, String, String) {
    let out = Command::new(sync_command())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("backfill-sync-models runs (scripts/test builds it)");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` to `path`, creating its directories.
pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A process_model.json as SpiffWorkflow writes it, with these paths.
pub fn model_json(name: &str, paths: &[(&str, &str)]) -> String {
    format!(
        "{{\"display_name\": {}, \"description\": \"\", \"exception_notification_addresses\": [],
          \"fault_or_suspend_on_exception\": \"fault\", \"metadata_extraction_paths\": {},
          \"primary_file_name\": \"main.bpmn\", \"primary_process_id\": \"Process_1\"}}",
        json_string(name),
        paths_json(paths)
    )
}

/// Waits until no backfill worker is connected to any database.
pub fn no_worker_left(db: &mut Client) {
    wait_for("the workers to leave", Duration::from_secs(60), || {
        (one_i64(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'backfill worker'",
        ) == 0)
            .then_some(())
    });
}

/// Runs git in `repo` (with a committer name for commits); panics with its error output.
pub fn git(repo: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The worker's log line for `job`: its batches' time and the throttle's pauses, in seconds.
pub fn throttle_of(cluster: &Cluster, job: i64) -> (f64, f64) {
    let prefix = format!("backfill worker: job {job}: ");
    wait_for("the job's throttle line", Duration::from_secs(30), || {
        let log = cluster.log();
        let line = log.lines().find(|l| l.contains(&prefix))?;
        let rest = &line[line.find(&prefix)? + prefix.len()..];
        let numbers: Vec<f64> = rest
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        // "<batches> batches took <working> s; the adaptive throttle paused <paused> s ..."
        Some((numbers[1], numbers[2]))
    })
}
