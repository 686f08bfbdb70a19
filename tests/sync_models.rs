//! backfill-sync-models as an operator runs it: `--watch` next to a spec directory that
//! SpiffWorkflow (or an editor) writes, `--wait` and `--wait-only` following jobs, and its
//! connections, made as libpq makes them (TLS, client certificates, .pgpass, service files,
//! sockets, several hosts).

mod common;

use common::{
    bulk_sql, model_json, one_i64, spiff_grants, start_app, sync_command, write, Cluster,
};
use postgres::Client;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What `--watch` must take at most to act on a change.
const PICKED_UP: Duration = Duration::from_secs(2);

fn dsn(cluster: &Cluster) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        cluster.port
    )
}

/// A running command and the lines it prints as they come (those of its standard error
/// marked "stderr: ").
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        Running::start_program(sync_command().to_str().unwrap(), args)
    }

    fn start_program(program: &str, args: &[&str]) -> Running {
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("backfill-sync-models runs (scripts/test builds it)");
        let (sender, lines) = mpsc::channel();
        let forward = |stream: Box<dyn std::io::Read + Send>, mark: &'static str| {
            let sender = sender.clone();
            // Lines end at a newline or a carriage return (a terminal's progress bar is
            // redrawn after \r).
            std::thread::spawn(move || {
                let mut line = Vec::new();
                for byte in BufReader::new(stream).bytes() {
                    let Ok(byte) = byte else { break };
                    if byte != b'\n' && byte != b'\r' {
                        line.push(byte);
                        continue;
                    }
                    if !line.is_empty() {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        line.clear();
                        if sender.send(format!("{mark}{text}")).is_err() {
                            return;
                        }
                    }
                }
                if !line.is_empty() {
                    let _ = sender.send(format!("{mark}{}", String::from_utf8_lossy(&line)));
                }
            });
        };
        forward(Box::new(child.stdout.take().unwrap()), "");
        forward(Box::new(child.stderr.take().unwrap()), "stderr: ");
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The lines printed until one satisfies `wanted` (that one last), within `within`.
    fn until(
        &mut self,
        what: &str,
        within: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    got.push(line.clone());
                    if wanted(&line) {
                        return got;
                    }
                }
                Err(_) => panic!(
                    "no line saying {what} within {within:?}; printed so far: {:#?}",
                    self.seen
                ),
            }
        }
    }

    fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        self.child.wait().unwrap().code()
    }
}

fn model_file(spec: &Path, id: &str) -> PathBuf {
    spec.join(id).join("process_model.json")
}

fn paths_of(db: &mut Client, id: &str) -> String {
    db.query_one(
        "SELECT coalesce((SELECT metadata_extraction_paths::text FROM backfill.process_model WHERE id = $1), 'none')",
        &[&id],
    )
    .unwrap()
    .get(0)
}

fn jobs(db: &mut Client) -> i64 {
    one_i64(
        db,
        "SELECT count(*) FROM backfill.job WHERE parent_id IS NULL",
    )
}

#[test]
fn watch_follows_edits_new_renamed_and_removed_models_and_a_restart() {
    let (mut cluster, mut db) = start_app("sync-watch", false, &[], &bulk_sql(100));
    let spec = cluster.dir.join("spec");
    write(&model_file(&spec, "bulk/model"), &model_json("Bulk", &[]));
    write(&spec.join("bulk/model/main.bpmn"), "<bpmn/>");
    let dsn = dsn(&cluster);
    let mut watch = Running::start(&["--dsn", &dsn, "--watch", spec.to_str().unwrap()]);
    // The first sync: the display name differs from the row's.
    watch.until("the first sync", Duration::from_secs(30), |l| {
        l == "updated   bulk/model"
    });

    // An edit in place, as SpiffWorkflow saves: the paths reach the table and queue a job.
    let before = jobs(&mut db);
    write(
        &model_file(&spec, "bulk/model"),
        &model_json("Bulk", &[("number", "invoice.number")]),
    );
    watch.until("the edit", PICKED_UP, |l| l == "updated   bulk/model");
    assert!(paths_of(&mut db, "bulk/model").contains("invoice.number"));
    assert_eq!(jobs(&mut db), before + 1);

    // A new model directory.
    write(
        &model_file(&spec, "finance/invoice"),
        &model_json("Invoice", &[("total", "invoice.total")]),
    );
    watch.until("the new model", PICKED_UP, |l| {
        l == "inserted  finance/invoice"
    });

    // A directory renamed: the model under its new id, and the old one said gone (one sync
    // prints the new model's line, then the removed one's).
    std::fs::rename(spec.join("finance"), spec.join("accounting")).unwrap();
    let lines = watch.until("the rename", PICKED_UP, |l| {
        l.starts_with("removed   finance/invoice")
    });
    assert!(
        lines.iter().any(|l| l == "inserted  accounting/invoice"),
        "{lines:?}"
    );
    assert!(paths_of(&mut db, "accounting/invoice").contains("invoice.total"));

    // A directory removed.
    std::fs::remove_dir_all(spec.join("accounting")).unwrap();
    watch.until("the removal", PICKED_UP, |l| {
        l.starts_with("removed   accounting/invoice")
    });

    // An editor's save: written to a temporary file beside it, renamed over it. One line; the
    // next line is the marker's, written after.
    let temporary = spec.join("bulk/model/.process_model.json.swp");
    std::fs::write(
        &temporary,
        model_json("Bulk", &[("number", "invoice.number"), ("step", "step")]),
    )
    .unwrap();
    std::fs::rename(&temporary, model_file(&spec, "bulk/model")).unwrap();
    watch.until("the editor's save", PICKED_UP, |l| {
        l == "updated   bulk/model"
    });
    write(&model_file(&spec, "marker/one"), &model_json("Marker", &[]));
    let after = watch.until("the marker", PICKED_UP, |l| l == "inserted  marker/one");
    let after: Vec<&String> = after
        .iter()
        .filter(|l| !l.starts_with("stderr: "))
        .collect();
    assert_eq!(after, ["inserted  marker/one"], "the save was synced twice");

    // The server restarts, and a change is made while it is down: synced once it is back.
    cluster.pg_stop("fast");
    write(
        &model_file(&spec, "bulk/model"),
        &model_json(
            "Bulk",
            &[("number", "invoice.number"), ("tags", "invoice.tags")],
        ),
    );
    watch.until("a failed attempt", Duration::from_secs(30), |l| {
        l.starts_with("stderr: ") && l.contains("trying again")
    });
    cluster.pg_start();
    watch.until("the change made while down", Duration::from_secs(30), |l| {
        l == "updated   bulk/model"
    });
    let mut db = cluster.connect("app");
    assert!(paths_of(&mut db, "bulk/model").contains("invoice.tags"));

    assert_eq!(watch.terminate(), Some(0), "SIGTERM ends --watch with 0");
}

#[test]
fn wait_follows_the_jobs_a_sync_queued_and_says_how_they_ended() {
    // No workers: the test runs the job (CALL backfill.run) or cancels it while the command
    // follows it.
    let (cluster, mut db) = start_app("sync-wait", false, &[], &bulk_sql(1000));
    let spec = cluster.dir.join("spec");
    let dsn = dsn(&cluster);
    let spec_arg = spec.to_str().unwrap();
    let job_of = |line: &str| -> i64 {
        line.trim_start_matches("waiting for job ")
            .parse()
            .unwrap_or_else(|_| panic!("not a job id: {line}"))
    };

    write(
        &model_file(&spec, "bulk/model"),
        &model_json("Bulk", &[("number", "invoice.number")]),
    );
    let mut wait = Running::start(&["--dsn", &dsn, "--wait", spec_arg]);
    let lines = wait.until("the job followed", Duration::from_secs(30), |l| {
        l.starts_with("waiting for job ")
    });
    assert!(
        lines.iter().any(|l| l == "updated   bulk/model"),
        "{lines:?}"
    );
    let job = job_of(lines.last().unwrap());
    db.batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    let last = wait.until("the job's end", Duration::from_secs(60), |l| {
        l.starts_with(&format!("job {job} ")) && !l.contains(" queued:") && !l.contains(" running:")
    });
    assert!(
        last.last().unwrap().starts_with(&format!(
            "job {job} bulk/model succeeded: 1000/1000 instances, 0 errors in "
        )),
        "{last:?}"
    );
    assert_eq!(wait.child.wait().unwrap().code(), Some(0));
    // The coverage is there when the command has ended.
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT with_value FROM backfill.coverage WHERE model = 'bulk/model' AND key = 'number'"
        ),
        1000
    );

    // A job cancelled while followed: exit status 3, and its final line.
    write(
        &model_file(&spec, "bulk/model"),
        &model_json("Bulk", &[("number", "invoice.number"), ("step", "step")]),
    );
    let mut wait = Running::start(&["--dsn", &dsn, "--wait", spec_arg]);
    let lines = wait.until("the job followed", Duration::from_secs(30), |l| {
        l.starts_with("waiting for job ")
    });
    let job = job_of(lines.last().unwrap());
    db.batch_execute(&format!("SELECT backfill.cancel({job})"))
        .unwrap();
    let last = wait.until("the job's end", Duration::from_secs(60), |l| {
        l.starts_with(&format!("job {job} bulk/model cancelled: "))
    });
    assert!(!last.is_empty());
    assert_eq!(wait.child.wait().unwrap().code(), Some(3));

    // --wait-only: a job that ended already, at once; one that does not exist, an error.
    let out = Command::new(sync_command())
        .args(["--dsn", &dsn, "--wait-only", &job.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("job {job} bulk/model cancelled: "))
    );
    let out = Command::new(sync_command())
        .args(["--dsn", &dsn, "--wait-only", "999999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("job 999999 does not exist"));
}

/// Runs `openssl` with `args` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority (`name`.crt, `name`.key) made in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// A certificate `name`.crt (with `name`.key, mode 600) for `subject`, signed by ca, in
/// `dir`; `extensions` (subjectAltName ...) when given.
fn make_signed(dir: &Path, name: &str, subject: &str, extensions: Option<&str>) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    let mut args = vec![
        "x509".to_owned(),
        "-req".into(),
        "-in".into(),
        format!("{name}.csr"),
        "-CA".into(),
        "ca.crt".into(),
        "-CAkey".into(),
        "ca.key".into(),
        "-CAcreateserial".into(),
        "-days".into(),
        "2".into(),
        "-out".into(),
        format!("{name}.crt"),
    ];
    if let Some(extensions) = extensions {
        std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
        args.extend(["-extfile".to_owned(), format!("{name}.ext")]);
    }
    openssl(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join(format!("{name}.key")),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// A port nothing listens on (one just freed).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn connections_as_libpq_makes_them() {
    let (mut cluster, mut db) = start_app("sync-tls", false, &[], &bulk_sql(10));
    let certs = cluster.dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_ca(&certs, "ca");
    make_ca(&certs, "other-ca");
    // The server's certificate names localhost only (no IP address); a client's names the
    // role certuser, whose connections must show it.
    make_signed(
        &certs,
        "server",
        "/CN=localhost",
        Some("subjectAltName = DNS:localhost\n"),
    );
    make_signed(&certs, "client", "/CN=certuser", None);
    // The server reads its files as its own account, which alone may read its key.
    let owner = {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&cluster.dir).unwrap();
        (meta.uid(), meta.gid())
    };
    for file in ["server.crt", "server.key", "ca.crt"] {
        let to = cluster.dir.join(file);
        std::fs::copy(certs.join(file), &to).unwrap();
        std::os::unix::fs::chown(&to, Some(owner.0), Some(owner.1)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // A Unix-domain socket too, in a directory of the server's account.
    let sockets = cluster.dir.join("sockets");
    std::fs::create_dir_all(&sockets).unwrap();
    std::os::unix::fs::chown(&sockets, Some(owner.0), Some(owner.1)).unwrap();
    for setting in [
        "ssl = on".to_owned(),
        "ssl_cert_file = 'server.crt'".into(),
        "ssl_key_file = 'server.key'".into(),
        "ssl_ca_file = 'ca.crt'".into(),
        format!("unix_socket_directories = '{}'", sockets.display()),
    ] {
        db.batch_execute(&format!("ALTER SYSTEM SET {setting}"))
            .unwrap();
    }
    db.batch_execute(&format!(
        "CREATE ROLE certuser LOGIN; CREATE ROLE scramuser LOGIN PASSWORD 'pw:with\\colon';
         {}; {}",
        spiff_grants("certuser"),
        spiff_grants("scramuser")
    ))
    .unwrap();
    // From the network only TLS: a client certificate for certuser, a password for
    // scramuser, trust for the others; the socket trusts.
    let hba = cluster.dir.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "hostssl app certuser 127.0.0.1/32 cert\nhostssl app scramuser 127.0.0.1/32 scram-sha-256\n{}",
            rules
                .lines()
                .map(|line| match line.starts_with("host ") {
                    true => line.replacen("host ", "hostssl ", 1),
                    false => line.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        ),
    )
    .unwrap();
    drop(db);
    cluster.pg_stop("fast");
    cluster.pg_start();

    let spec = cluster.dir.join("spec");
    write(&model_file(&spec, "bulk/model"), &model_json("Bulk", &[]));
    let spec_arg = spec.to_str().unwrap().to_owned();
    // A home without ~/.postgresql/root.crt, and none of libpq's variables but those given.
    let home = cluster.dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let file = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let (ca, other_ca) = (file("ca.crt"), file("other-ca.crt"));
    let port = cluster.port;
    let sync = |dsn: &str, env: &[(&str, &str)]| {
        let out = Command::new(sync_command())
            .args(["--dsn", dsn, &spec_arg])
            .env("HOME", &home)
            .envs(
                std::env::vars()
                    .filter(|(k, _)| k.starts_with("PG"))
                    .map(|(k, _)| (k, String::new())),
            )
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let at =
        |host: &str, rest: &str| format!("host={host} port={port} user=postgres dbname=app {rest}");

    // Encrypted without checks; the same in URI form.
    let (code, err) = sync(&at("127.0.0.1", "sslmode=require"), &[]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = sync(
        &format!("postgresql://postgres@127.0.0.1:{port}/app?sslmode=require"),
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    // Not encrypted: the server refuses (so require above was TLS).
    let (code, err) = sync(&at("127.0.0.1", "sslmode=disable"), &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no encryption"), "{err}");
    // The chain and the host name checked.
    let (code, err) = sync(
        &at(
            "localhost",
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ),
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    // The same through libpq's environment variables.
    let (code, err) = sync(
        &at("localhost", ""),
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())],
    );
    assert_eq!(code, Some(0), "{err}");
    // A host name the certificate does not give: verify-full refuses, verify-ca does not.
    let (code, err) = sync(
        &at(
            "127.0.0.1",
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ),
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("does not match host name \"127.0.0.1\""),
        "{err}"
    );
    let (code, err) = sync(
        &at("127.0.0.1", &format!("sslmode=verify-ca sslrootcert={ca}")),
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    // Without the CA: no root certificate file, or one that did not sign the server's.
    let (code, err) = sync(&at("localhost", "sslmode=verify-full"), &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("root certificate file") && err.contains("does not exist"),
        "{err}"
    );
    let (code, err) = sync(
        &at(
            "localhost",
            &format!("sslmode=verify-full sslrootcert={other_ca}"),
        ),
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("certificate verify failed"), "{err}");
    // require with a root certificate file checks the chain, as libpq's does.
    let (code, err) = sync(
        &at(
            "127.0.0.1",
            &format!("sslmode=require sslrootcert={other_ca}"),
        ),
        &[],
    );
    assert_eq!(code, Some(2), "{err}");

    // A client certificate: certuser's connection is refused without it and accepted with it.
    let as_certuser = |rest: &str| {
        format!("host=127.0.0.1 port={port} user=certuser dbname=app sslmode=verify-ca sslrootcert={ca} {rest}")
    };
    let (code, err) = sync(&as_certuser(""), &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("certificate"), "{err}");
    let (code, err) = sync(
        &as_certuser(&format!(
            "sslcert={} sslkey={}",
            file("client.crt"),
            file("client.key")
        )),
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    // The same from PGSSLCERT and PGSSLKEY.
    let (code, err) = sync(
        &as_certuser(""),
        &[
            ("PGSSLCERT", &file("client.crt")),
            ("PGSSLKEY", &file("client.key")),
        ],
    );
    assert_eq!(code, Some(0), "{err}");

    // scram-sha-256 with the password from a password file (PGPASSFILE, mode 600), its
    // escaped colon and backslash read as libpq reads them.
    let passfile = cluster.dir.join("pgpass");
    std::fs::write(
        &passfile,
        format!("127.0.0.1:{port}:app:scramuser:pw\\:with\\\\colon\n"),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let as_scramuser =
        format!("host=127.0.0.1 port={port} user=scramuser dbname=app sslmode=require");
    let passfile_text = passfile.to_str().unwrap();
    let (code, err) = sync(&as_scramuser, &[("PGPASSFILE", passfile_text)]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = sync(&as_scramuser, &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("password"), "{err}");

    // A service file names all of it.
    let services = cluster.dir.join("pg_service.conf");
    std::fs::write(
        &services,
        format!("[spiff]\nhost=localhost\nport={port}\nuser=postgres\ndbname=app\nsslmode=verify-full\nsslrootcert={ca}\n"),
    )
    .unwrap();
    let (code, err) = sync(
        "service=spiff",
        &[("PGSERVICEFILE", services.to_str().unwrap())],
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = sync(
        "",
        &[
            ("PGSERVICEFILE", services.to_str().unwrap()),
            ("PGSERVICE", "spiff"),
        ],
    );
    assert_eq!(code, Some(0), "{err}");

    // A Unix-domain socket never uses TLS, whatever sslmode says (libpq's rule).
    let (code, err) = sync(&at(sockets.to_str().unwrap(), "sslmode=verify-full"), &[]);
    assert_eq!(code, Some(0), "{err}");

    // Two hosts, the first down: the second is used; target_session_attrs is honoured.
    let two = format!(
        "host=127.0.0.1,localhost port={},{port} user=postgres dbname=app sslmode=verify-ca sslrootcert={ca} target_session_attrs=read-write connect_timeout=5",
        closed_port()
    );
    let (code, err) = sync(&two, &[]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = sync(&two.replace("read-write", "standby"), &[]);
    assert_eq!(code, Some(2), "{err}");

    // What libpq does not know is refused, naming the setting.
    let (code, err) = sync(&at("127.0.0.1", "sslcrt=/x"), &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("invalid connection option \"sslcrt\""),
        "{err}"
    );
    let (code, err) = sync(&at("127.0.0.1", "sslmode=verify-everything"), &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("sslmode"), "{err}");
}

/// On a terminal, a progress bar a job: run under `script`, which gives the command a
/// pseudo-terminal for its standard output.
#[test]
fn wait_draws_a_progress_bar_on_a_terminal() {
    let (cluster, mut db) = start_app("sync-wait-bar", false, &[], &bulk_sql(1000));
    let spec = cluster.dir.join("spec");
    write(
        &model_file(&spec, "bulk/model"),
        &model_json("Bulk", &[("number", "invoice.number")]),
    );
    let command = format!(
        "{} --dsn '{}' --wait {}",
        sync_command().display(),
        dsn(&cluster),
        spec.display()
    );
    let mut terminal = Running::start_program("script", &["-qefc", &command, "/dev/null"]);
    let job = common::wait_for("the sync to queue a job", Duration::from_secs(30), || {
        let job = one_i64(
            &mut db,
            "SELECT coalesce(max(id), 0) FROM backfill.job WHERE parent_id IS NULL",
        );
        (job > 0).then_some(job)
    });
    // Queued, the job has no total yet; started (its total fixed), its bar.
    terminal.until("the queued job", Duration::from_secs(30), |l| {
        l.contains(&format!("job {job} bulk/model queued (not started)"))
    });
    db.execute("SELECT backfill.run_begin($1)", &[&job])
        .unwrap();
    terminal.until("the job's bar", Duration::from_secs(30), |l| {
        l.contains(&format!("job {job} bulk/model [")) && l.contains("0/1000")
    });
    db.batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    terminal.until("the job's end", Duration::from_secs(60), |l| {
        l.contains(&format!(
            "job {job} bulk/model succeeded: 1000/1000 instances"
        ))
    });
    assert_eq!(terminal.child.wait().unwrap().code(), Some(0));
}
