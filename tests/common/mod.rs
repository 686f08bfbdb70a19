//! Throwaway PostgreSQL clusters for tests that need real commits, restarts and crashes.
//!
//! Each `Cluster` is initdb'd under `target/test-clusters/`, runs as a non-root user (the
//! `postgres` account when the tests run as root), listens on its own loopback port with the
//! extension preloaded, and is stopped and removed when dropped (kept, with its log, when the
//! test failed). The extension must already be installed: `scripts/test` does that.

#![allow(dead_code)]

use postgres::{Client, NoTls};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static SERIAL: AtomicUsize = AtomicUsize::new(0);

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    bindir: PathBuf,
    running: bool,
}

fn pg_config(arg: &str) -> PathBuf {
    let pg_config = std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".to_owned());
    let out = Command::new(&pg_config)
        .arg(arg)
        .output()
        .expect("pg_config runs");
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

/// Runs a PostgreSQL program as the cluster's (non-root) owner.
fn run_as_owner(program: &Path, args: &[&str]) -> Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("sudo");
        c.args(["-n", "-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
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

impl Cluster {
    /// initdb + start, with `extra_conf` lines appended to postgresql.conf.
    pub fn start(name: &str, extra_conf: &[&str]) -> Cluster {
        let sharedir = pg_config("--sharedir");
        assert!(
            sharedir.join("extension/backfill.control").exists(),
            "the backfill extension is not installed in {}: run scripts/test, which installs it",
            sharedir.display()
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-clusters");
        fs::create_dir_all(&root).unwrap();
        let dir = root.join(format!(
            "{name}-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
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
        let bindir = pg_config("--bindir");
        let dir_text = dir.to_str().unwrap().to_owned();
        check(
            "initdb",
            run_as_owner(
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
                ],
            ),
        );
        let port = free_port();
        let mut conf = vec![
            format!("port = {port}"),
            "listen_addresses = '127.0.0.1'".to_owned(),
            "unix_socket_directories = ''".to_owned(),
            "shared_preload_libraries = 'backfill'".to_owned(),
            "fsync = off".to_owned(),
            "max_connections = 40".to_owned(),
            "log_line_prefix = '%m [%p] %b '".to_owned(),
        ];
        conf.extend(extra_conf.iter().map(|s| s.to_string()));
        let conf_path = dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf_path).unwrap();
        text.push_str("\n# test cluster\n");
        text.push_str(&conf.join("\n"));
        text.push('\n');
        fs::write(&conf_path, text).unwrap();
        let mut cluster = Cluster {
            dir,
            port,
            bindir,
            running: false,
        };
        cluster.pg_start();
        cluster
    }

    pub fn pg_start(&mut self) {
        let dir = self.dir.to_str().unwrap().to_owned();
        let log = self.dir.join("server.log");
        let out = run_as_owner(
            &self.bindir.join("pg_ctl"),
            &[
                "-D",
                &dir,
                "-l",
                log.to_str().unwrap(),
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

    /// Stops the server: "fast" (clean) or "immediate" (as after a crash, with recovery on start).
    pub fn pg_stop(&mut self, mode: &str) {
        let dir = self.dir.to_str().unwrap().to_owned();
        check(
            "pg_ctl stop",
            run_as_owner(
                &self.bindir.join("pg_ctl"),
                &["-D", &dir, "-m", mode, "-w", "-t", "60", "stop"],
            ),
        );
        self.running = false;
    }

    pub fn connect(&self, db: &str) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(
                &format!(
                    "host=127.0.0.1 port={} user=postgres dbname={db}",
                    self.port
                ),
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

    /// Creates database `db` with the extension installed and returns a connection to it.
    pub fn create_db(&self, db: &str) -> Client {
        let mut admin = self.connect("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .unwrap();
        let mut client = self.connect(db);
        client.batch_execute("CREATE EXTENSION backfill").unwrap();
        client
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
        // Reload is asynchronous; give every process a moment to read the file.
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let dir = self.dir.to_str().unwrap().to_owned();
            let _ = run_as_owner(
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
