//! Docs are code: every shell and SQL block of README.md and docs/*.md runs here, page after
//! page and in the order of the page, on a throwaway server; what a page shows a block
//! printing is compared with what it prints.
//!
//! What a block is:
//! - ` ```sh `: run by `bash -e -o pipefail`, with the server's programs and the sync command
//!   on PATH and libpq's variables (PGHOST, PGPORT, PGUSER, PGDATABASE) naming the page's
//!   database; SPEC_DIR names a SpiffWorkflow spec directory where the page has one.
//! - ` ```sql `: run by psql in the page's database, as a superuser.
//! - a block whose lines start with `=> ` (psql's prompt): each statement run by psql, and what psql prints (notices, then the result, without its
//!   row-count footer) compared with the lines the page shows under it.
//! - anything else (settings, log lines, trees, YAML): text, not run.
//!
//! The comment line right above a block may say more: `<!-- docs-test: not run: REASON -->`
//! (the test prints the reason), `<!-- docs-test: output -->` (this text is what the block
//! before it prints: compared), `<!-- docs-test: not compared: REASON -->` (a session whose
//! output differs from run to run: run, not compared).
//!
//! Each page gets a database of its own, prepared as its reader's would be (`prepare`); the
//! `\set`s of its sessions are kept for the SQL that follows, as psql keeps them.

mod common;

use common::spiff::{generate_in, SCHEMA_SQL};
use common::{model_json, sync_command, write, Cluster, SPIFF_GRANTS};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PAGES: &[&str] = &[
    "README.md",
    "docs/reference.md",
    "docs/extraction.md",
    "docs/jobs.md",
    "docs/operating.md",
    "docs/spiffworkflow.md",
    "docs/security.md",
    "docs/performance.md",
    "docs/architecture.md",
    "docs/citus.md",
    "docs/development.md",
];

#[derive(Debug, PartialEq)]
enum Kind {
    Shell,
    Sql,
    Session,
    Text,
}

#[derive(Debug, PartialEq)]
enum Mark {
    None,
    NotRun(String),
    Output,
    NotCompared(String),
}

#[derive(Debug)]
struct Block {
    line: usize,
    kind: Kind,
    mark: Mark,
    body: String,
}

/// The fenced blocks of a Markdown page, with the mark of the comment line above each.
fn blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if !trimmed.starts_with("```") {
            i += 1;
            continue;
        }
        let indent = lines[i].len() - trimmed.len();
        let info = trimmed.trim_start_matches('`').trim().to_owned();
        let start = i;
        let mut body = Vec::new();
        i += 1;
        while i < lines.len() && lines[i].trim() != "```" {
            let line = lines[i];
            body.push(
                if line.len() >= indent && line[..indent].trim().is_empty() {
                    &line[indent..]
                } else {
                    line.trim_start()
                },
            );
            i += 1;
        }
        assert!(
            i < lines.len(),
            "a block opened at line {} is never closed",
            start + 1
        );
        i += 1;
        let above = lines[..start].iter().rev().find(|l| !l.trim().is_empty());
        let mark = match above.map(|l| l.trim()) {
            Some(comment) if comment.starts_with("<!-- docs-test:") => {
                let what = comment
                    .trim_start_matches("<!-- docs-test:")
                    .trim_end_matches("-->")
                    .trim();
                if let Some(reason) = what.strip_prefix("not run:") {
                    Mark::NotRun(reason.trim().to_owned())
                } else if let Some(reason) = what.strip_prefix("not compared:") {
                    Mark::NotCompared(reason.trim().to_owned())
                } else if what == "output" {
                    Mark::Output
                } else {
                    panic!("line {}: unknown docs-test mark {comment}", start + 1)
                }
            }
            _ => Mark::None,
        };
        let kind = match info.as_str() {
            "sh" | "bash" | "shell" => Kind::Shell,
            "sql" => Kind::Sql,
            "" if body.iter().any(|l| l.starts_with("=> ")) => Kind::Session,
            _ => Kind::Text,
        };
        found.push(Block {
            line: start + 1,
            kind,
            mark,
            body: body.join("\n"),
        });
    }
    found
}

/// A session block's statements (with the `\set`s before each) and the lines shown under each.
fn statements(body: &str) -> Vec<(String, Vec<String>)> {
    let mut parsed: Vec<(String, Vec<String>)> = Vec::new();
    let mut open = false;
    for line in body.lines() {
        if let Some(statement) = line.strip_prefix("=> ") {
            parsed.push((statement.to_owned(), Vec::new()));
            open = !ends_statement(statement);
        } else if open {
            let (statement, _) = parsed.last_mut().expect("a statement is open");
            statement.push('\n');
            statement.push_str(line);
            open = !ends_statement(line);
        } else if let Some((_, shown)) = parsed.last_mut() {
            shown.push(line.to_owned());
        }
    }
    parsed
}

fn ends_statement(line: &str) -> bool {
    let line = line.trim_end();
    line.ends_with(';') || line.trim_start().starts_with('\\')
}

/// Lines as compared: trailing blanks cut, psql's row-count footer and blank lines at either
/// end left out.
fn normalized(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end().to_owned())
        .filter(|l| !(l.starts_with('(') && (l.ends_with(" rows)") || l.ends_with(" row)"))))
        .collect();
    while lines.first().is_some_and(|l| l.is_empty()) {
        lines.remove(0);
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// What psql printed to standard error, without the location it prefixes to a script's
/// messages (`psql:<stdin>:3: `).
fn without_location(stderr: &str) -> String {
    stderr
        .lines()
        .map(|line| match line.strip_prefix("psql:<stdin>:") {
            Some(rest) => rest.split_once(": ").map_or(line, |(_, message)| message),
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a page's blocks run.
struct Page {
    database: String,
    work: PathBuf,
    env: Vec<(String, String)>,
}

struct Run<'a> {
    cluster: &'a Cluster,
    ran: usize,
    statements: usize,
    compared: usize,
    not_run: Vec<String>,
    failures: Vec<String>,
}

impl Run<'_> {
    fn psql(&self, page: &Page, script: &str) -> (bool, String) {
        use std::io::Write;
        let mut child = Command::new(self.cluster.bindir().join("psql"))
            // SQL blocks run as a superuser; shell blocks connect as the page's reader does.
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-P",
                "footer=off",
                "-U",
                "postgres",
            ])
            .args(["-f", "-"])
            .envs(page.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = without_location(&String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        (
            out.status.success(),
            format!(
                "{stderr}{}{stdout}",
                if stderr.is_empty() { "" } else { "\n" }
            ),
        )
    }

    fn shell(&self, page: &Page, script: &str) -> (bool, String) {
        let out = Command::new("bash")
            .args(["-e", "-o", "pipefail", "-c", script])
            .current_dir(&page.work)
            .envs(page.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return (
                false,
                format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
            );
        }
        (true, stdout)
    }

    fn compare(&mut self, place: &str, shown: &str, printed: &str) {
        self.compared += 1;
        let (shown, printed) = (normalized(shown), normalized(printed));
        if shown != printed {
            self.failures.push(format!(
                "{place}: the page shows\n{}\nbut it prints\n{}",
                shown.join("\n"),
                printed.join("\n")
            ));
        }
    }

    fn page(&mut self, name: &str, page: &Page) {
        let text = std::fs::read_to_string(repo().join(name)).unwrap();
        let mut last_output: Option<String> = None;
        // The page's `\set`s, as a reader's psql session keeps them.
        let mut sets = String::new();
        for block in blocks(&text) {
            let place = format!("{name}:{}", block.line);
            if let Mark::NotRun(reason) = &block.mark {
                assert!(!reason.is_empty(), "{place}: a block not run says why");
                self.not_run.push(format!("{place}: {reason}"));
                last_output = None;
                continue;
            }
            match block.kind {
                Kind::Text => {
                    if block.mark == Mark::Output {
                        match last_output.take() {
                            Some(printed) => self.compare(&place, &block.body, &printed),
                            None => self.failures.push(format!(
                                "{place}: marked output, but no block ran before it"
                            )),
                        }
                    }
                    continue;
                }
                Kind::Shell | Kind::Sql => {
                    self.ran += 1;
                    let (ok, printed) = if block.kind == Kind::Shell {
                        self.shell(page, &block.body)
                    } else {
                        self.psql(page, &format!("{sets}{}\n", block.body))
                    };
                    if !ok {
                        self.failures.push(format!("{place}: failed:\n{printed}"));
                    }
                    last_output = Some(printed);
                }
                Kind::Session => {
                    self.ran += 1;
                    for (statement, shown) in statements(&block.body) {
                        self.statements += 1;
                        let (ok, printed) = self.psql(page, &format!("{sets}{statement}\n"));
                        if !ok {
                            self.failures
                                .push(format!("{place}: {statement}\nfailed:\n{printed}"));
                        } else if !matches!(block.mark, Mark::NotCompared(_)) {
                            self.compare(
                                &format!("{place}: {statement}"),
                                &shown.join("\n"),
                                &printed,
                            );
                        }
                        if statement.starts_with("\\set ") {
                            sets.push_str(&statement);
                            sets.push('\n');
                        }
                    }
                    last_output = None;
                }
            }
        }
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The page's database, made as its reader's is when they reach the page.
fn prepare(cluster: &Cluster, name: &str) -> Page {
    let database = name
        .trim_start_matches("docs/")
        .trim_end_matches(".md")
        .to_lowercase();
    let work = cluster.dir.join(format!("docs-{database}"));
    std::fs::create_dir_all(&work).unwrap();
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE \"{database}\""))
        .unwrap();
    let mut user = "postgres";
    match name {
        // The README starts from a server with the library preloaded, and creates the extension.
        "README.md" => {}
        // SpiffWorkflow's tables in public, owned by its role, with data, attached, and the
        // model to preview.
        "docs/operating.md" => {
            spiff_deployment(cluster, &database, 5_000, true);
            // The model as synced on its first day, its catch-up done.
            cluster.psql(
                "spiff",
                &database,
                "SELECT backfill.attach('public');
                 INSERT INTO backfill.process_model (id, display_name, metadata_extraction_paths)
                 VALUES ('finance/invoice', 'Invoice', '[{\"key\": \"invoice_number\", \"path\": \"invoice.number\"}]');
                 SELECT backfill.wait(max(id), '120 s') FROM backfill.job;",
            );
        }
        // A deployment years old without the extension: the page's runbook installs it.
        "docs/spiffworkflow.md" => {
            spiff_deployment(cluster, &database, 5_000, false);
            user = "spiff";
            let spec = work.join("bpmn");
            write(
                &spec.join("finance/invoice/process_model.json"),
                &model_json(
                    "Invoice",
                    &[("number", "invoice.number"), ("total", "invoice.total")],
                ),
            );
            write(
                &spec.join("hr/leave-request/process_model.json"),
                &model_json("Leave", &[]),
            );
            // The spec directory is read by the sync command, which runs as root here.
        }
        "docs/security.md" => {
            cluster.psql(
                "postgres",
                &database,
                "CREATE EXTENSION backfill;
                 DO $$ BEGIN CREATE ROLE app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
            );
        }
        _ => cluster.psql("postgres", &database, "CREATE EXTENSION backfill;"),
    }
    let path = format!(
        "{}:{}:{}",
        cluster.bindir().display(),
        sync_command().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = vec![
        ("PATH".to_owned(), path),
        ("PGHOST".to_owned(), "127.0.0.1".to_owned()),
        ("PGPORT".to_owned(), cluster.port.to_string()),
        ("PGUSER".to_owned(), user.to_owned()),
        ("PGDATABASE".to_owned(), database.clone()),
        (
            "SPEC_DIR".to_owned(),
            work.join("bpmn").display().to_string(),
        ),
        ("PGOPTIONS".to_owned(), String::new()),
    ];
    Page {
        database,
        work,
        env,
    }
}

/// SpiffWorkflow's tables in schema public of `database`, owned by role spiff (which owns
/// the database), with `instances` instances of data written as Python writes it; the
/// extension and SpiffWorkflow's GRANTs when `with_extension`.
fn spiff_deployment(cluster: &Cluster, database: &str, instances: usize, with_extension: bool) {
    cluster.psql(
        "postgres",
        database,
        &format!(
            "DO $$ BEGIN CREATE ROLE spiff LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             ALTER DATABASE \"{database}\" OWNER TO spiff;
             ALTER SCHEMA public OWNER TO spiff;
             {}",
            if with_extension {
                format!("CREATE EXTENSION backfill;\n{SPIFF_GRANTS}")
            } else {
                String::new()
            }
        ),
    );
    cluster.psql("spiff", database, SCHEMA_SQL);
    cluster.psql("spiff", database, &generate_in("public", instances, 1));
}

#[test]
fn every_block_of_the_docs_runs_and_prints_what_the_docs_show() {
    let cluster = Cluster::start("docs", &[]);
    let mut run = Run {
        cluster: &cluster,
        ran: 0,
        statements: 0,
        compared: 0,
        not_run: Vec::new(),
        failures: Vec::new(),
    };
    for name in PAGES {
        let page = prepare(&cluster, name);
        eprintln!("docs: {name} in database {}", page.database);
        run.page(name, &page);
    }
    eprintln!(
        "docs: {} blocks run ({} statements in psql sessions among them), {} outputs compared, {} blocks not run:",
        run.ran,
        run.statements,
        run.compared,
        run.not_run.len()
    );
    for reason in &run.not_run {
        eprintln!("  {reason}");
    }
    assert!(
        run.failures.is_empty(),
        "{} failures:\n\n{}",
        run.failures.len(),
        run.failures.join("\n\n")
    );
}

#[test]
fn every_page_is_read_and_blocks_are_recognised() {
    let mut on_disk: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".md"))
        .chain(["README.md".to_owned()])
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = PAGES.iter().map(|p| p.to_string()).collect();
    listed.sort();
    assert_eq!(listed, on_disk, "every page of docs/ is in PAGES");

    let page =
        "intro\n<!-- docs-test: not run: needs systemd -->\n```sh\nsystemctl restart x\n```\n\
                ```sql\nSELECT 1;\n```\n<!-- docs-test: output -->\n```\n one\n```\n\
                ```\n=> \\set p 1\n=> SELECT 1\n     AS one;\n one\n-----\n   1\n(1 row)\n```\n  ```yaml\n  a: b\n  ```\n";
    let found = blocks(page);
    assert_eq!(found.len(), 5);
    assert_eq!(found[0].kind, Kind::Shell);
    assert_eq!(found[0].mark, Mark::NotRun("needs systemd".into()));
    assert_eq!(found[1].kind, Kind::Sql);
    assert_eq!(found[2].mark, Mark::Output);
    assert_eq!(found[3].kind, Kind::Session);
    assert_eq!(found[4].kind, Kind::Text);
    assert_eq!(found[4].body, "a: b");
    let parsed = statements(&found[3].body);
    assert_eq!(parsed[0], ("\\set p 1".to_owned(), vec![]));
    assert_eq!(parsed[1].0, "SELECT 1\n     AS one;");
    assert_eq!(
        normalized(&parsed[1].1.join("\n")),
        vec![" one", "-----", "   1"]
    );
    assert_eq!(
        without_location("psql:<stdin>:3: NOTICE:  backfill job 1 queued"),
        "NOTICE:  backfill job 1 queued"
    );
}
