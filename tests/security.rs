//! Hostile users and careless operators: search-path traps, jobs with their owner's privileges,
//! forged job rows, row-level security, DDL racing a batch, and errors outside a batch.

mod common;

use common::{
    add_path, bulk_sql, no_worker_left, one_i64, one_text, start_app, wait_for, wrong_rows, Cluster,
};
use postgres::Client;
use std::time::Duration;

const BULK: &str = "bulk/model";
const OTHER: &str = "other/model";

/// The GRANTs docs/security.md gives an application role that edits models and
/// queues, runs and watches jobs, with `ROLE` for the role's name.
const RECIPE: &str = "
GRANT USAGE ON SCHEMA backfill TO ROLE;
GRANT SELECT, INSERT, UPDATE ON backfill.process_model TO ROLE;
GRANT SELECT ON backfill.job, backfill.progress, backfill.coverage TO ROLE;
GRANT EXECUTE ON FUNCTION backfill.sync_process_models(jsonb),
                          backfill.enqueue(text, text[], boolean, timestamptz), backfill.cancel(bigint),
                          backfill.wait(bigint, interval), backfill.run_begin(bigint),
                          backfill.run_batch(bigint), backfill.run_end(bigint),
                          backfill.worker_pid(), backfill.preview(text, jsonb, integer),
                          backfill.preview_summary(text, jsonb, integer),
                          backfill.count_coverage(text), backfill.catch_up(text),
                          backfill.check_worker()
    TO ROLE;
GRANT EXECUTE ON PROCEDURE backfill.run(bigint) TO ROLE;
GRANT SELECT ON backfill.process_instance, backfill.task, backfill.json_data TO ROLE;
GRANT SELECT, INSERT, UPDATE ON backfill.process_instance_metadata TO ROLE;
";

#[test]
fn the_security_page_gives_the_recipe_the_tests_use() {
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let page = words(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md")).unwrap(),
    );
    for statement in RECIPE.replace("ROLE", "app").split(';') {
        let statement = words(statement);
        assert!(
            page.contains(&statement),
            "docs/security.md lacks: {statement}"
        );
    }
}

/// The recipe less the data: a role that may edit models but not read task data.
fn recipe_without_data(role: &str) -> String {
    let recipe = RECIPE.replace("ROLE", role);
    recipe
        .lines()
        .filter(|line| {
            !line.contains("backfill.task") && !line.contains("backfill.process_instance_metadata")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_done(db: &mut Client, job: i64) -> String {
    wait_for(
        &format!("job {job} to end"),
        Duration::from_secs(120),
        || {
            let state: String = db
                .query_one("SELECT state FROM backfill.job WHERE id = $1", &[&job])
                .unwrap()
                .get(0);
            (state != "queued" && state != "running").then_some(state)
        },
    )
}

fn job_text(db: &mut Client, job: i64, column: &str) -> Option<String> {
    db.query_one(
        &format!("SELECT {column}::text FROM backfill.job WHERE id = $1"),
        &[&job],
    )
    .unwrap()
    .get(0)
}

/// Every database is served by workers; one that does not allow connections is not (its jobs
/// wait), while the sessions already connected to it go on: there, CALL backfill.run runs
/// a job without a worker taking it first.
fn keep_workers_out(cluster: &Cluster, database: &str) {
    cluster
        .connect("postgres")
        .batch_execute(&format!(
            "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
        ))
        .unwrap();
}

/// Runs `job` with CALL backfill.run in `session`; `checker` sees it succeeded.
fn call_run_succeeds(session: &mut Client, checker: &mut Client, job: i64) {
    session
        .batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    assert_eq!(
        job_text(checker, job, "state").as_deref(),
        Some("succeeded")
    );
}

fn rows_of_key(db: &mut Client, key: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = $1",
        &[&key],
    )
    .unwrap()
    .get(0)
}

/// What a database owner (in PostgreSQL 15 the owner of schema public) can plant: functions
/// and an operator that beat pg_catalog's for the argument types the extension's statements
/// use, a search path that puts them first for every session of the database, and a record of
/// every call, made with whatever privileges the caller has.
const TRAPS: &str = r#"
CREATE TABLE public.trap_log (what text, by_role text);
GRANT INSERT ON public.trap_log TO PUBLIC;
CREATE FUNCTION public.trap(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trap_log VALUES (what, current_user);
    BEGIN
        EXECUTE 'ALTER ROLE mallory SUPERUSER';
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
END $$;
-- An exact-type match beats pg_catalog.unnest(anyarray).
CREATE FUNCTION public.unnest(a text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.trap('unnest(text[])');
    RETURN QUERY SELECT x FROM pg_catalog.unnest(a::anyarray) AS x;
END $$;
-- varchar = varchar: exact, where pg_catalog only has text = text.
CREATE FUNCTION public.trap_eq(a varchar, b varchar) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.trap('=(varchar, varchar)');
    RETURN a::text OPERATOR(pg_catalog.=) b::text;
END $$;
CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.trap_eq);
-- Same signatures as pg_catalog's: they win wherever public comes first in the search path.
CREATE FUNCTION public.current_setting(name text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.trap('current_setting(text)');
    RETURN pg_catalog.current_setting(name);
END $$;
CREATE FUNCTION public.trap_ne(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.trap('<>(text, text)');
    RETURN a OPERATOR(pg_catalog.<>) b;
END $$;
CREATE OPERATOR public.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = public.trap_ne);
"#;

#[test]
fn search_path_traps_never_run_in_the_worker_or_in_a_superusers_call() {
    let (cluster, mut db) = start_app("sec-path", true, &[], &bulk_sql(2_000));
    db.batch_execute(
        "CREATE ROLE mallory LOGIN;
         ALTER DATABASE app OWNER TO mallory;",
    )
    .unwrap();
    let mut mallory = cluster.connect_as("mallory", "app");
    mallory.batch_execute(TRAPS).unwrap();
    mallory
        .batch_execute("ALTER DATABASE app SET search_path = public, pg_catalog")
        .unwrap();
    // The checks run with pg_catalog alone: even the default path would let an exact-type
    // operator of public's catch the test's own queries.
    db.batch_execute("SET search_path = pg_catalog").unwrap();

    // The worker, started after that (the database had none yet): a new key (fill) and a
    // re-pointed one (overwrite, which compares values). `admin` has the database's search
    // path; `db`, older, has the default and is the one the checks use (the traps would catch
    // the test's own queries otherwise).
    let mut admin = cluster.connect("app");
    assert_eq!(
        one_text(&mut admin, "SHOW search_path"),
        "public, pg_catalog"
    );
    let job = add_path(&mut admin, BULK, "number", "invoice.number");
    assert_eq!(wait_done(&mut db, job), "succeeded");
    admin
        .execute(
            "UPDATE backfill.process_model
                SET metadata_extraction_paths = '[{\"key\": \"number\", \"path\": \"invoice.status\"}]'
              WHERE id = $1",
            &[&BULK],
        )
        .unwrap();
    let overwrite = one_i64(
        &mut db,
        "SELECT max(id) FROM backfill.job WHERE parent_id IS NULL",
    );
    assert_ne!(overwrite, job);
    assert_eq!(wait_done(&mut db, overwrite), "succeeded");
    assert_eq!(wrong_rows(&mut db, BULK, "number", "invoice.status"), 0);

    // A superuser's own session, with the database's search path: the trigger, enqueue and
    // CALL backfill.run (procedure and functions) in database "manual", which no worker serves
    // (see keep_workers_out).
    let mut manual = cluster.create_db("manual");
    manual.batch_execute(&bulk_sql(500)).unwrap();
    manual
        .batch_execute("ALTER DATABASE manual OWNER TO mallory; SET search_path = pg_catalog")
        .unwrap();
    let mut mallory = cluster.connect_as("mallory", "manual");
    mallory.batch_execute(TRAPS).unwrap();
    mallory
        .batch_execute("ALTER DATABASE manual SET search_path = public, pg_catalog")
        .unwrap();
    let mut admin = cluster.connect("manual");
    keep_workers_out(&cluster, "manual");
    let job = add_path(&mut admin, BULK, "number", "invoice.number");
    for statement in [
        format!("CALL backfill.run({job})"),
        format!("SELECT backfill.enqueue('{BULK}', ARRAY['number'], true)"),
        format!("SELECT backfill.wait({job}, '1 s')"),
        format!("SELECT backfill.cancel({job})"),
    ] {
        admin.batch_execute(&statement).unwrap();
    }
    assert_eq!(
        job_text(&mut manual, job, "state").as_deref(),
        Some("succeeded")
    );
    let rerun = one_i64(
        &mut manual,
        "SELECT max(id) FROM backfill.job WHERE parent_id IS NULL",
    );
    call_run_succeeds(&mut admin, &mut manual, rerun);
    assert_eq!(wrong_rows(&mut manual, BULK, "number", "invoice.number"), 0);

    for (database, session) in [("app", &mut db), ("manual", &mut manual)] {
        let calls: Vec<String> = session
            .query("SELECT what || ' as ' || by_role FROM public.trap_log", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(calls.is_empty(), "{database}: traps ran: {calls:?}");
    }
    let superuser: bool = db
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!superuser);
}

#[test]
fn a_job_has_the_privileges_of_the_role_that_queued_it_and_no_more() {
    let (cluster, mut admin) = start_app("sec-roles", true, &[], &bulk_sql(1_000));
    admin
        .batch_execute(&format!(
            "CREATE ROLE editor LOGIN;
             CREATE ROLE clerk LOGIN;
             {}
             {}",
            RECIPE.replace("ROLE", "editor"),
            recipe_without_data("clerk")
        ))
        .unwrap();

    // A role that may edit models but not read task data gets none through a backfill.
    let mut clerk = cluster.connect_as("clerk", "app");
    let leak = add_path(&mut clerk, BULK, "leak", "$");
    assert_eq!(
        job_text(&mut admin, leak, "queued_by").as_deref(),
        Some("clerk")
    );
    assert_eq!(wait_done(&mut admin, leak), "failed");
    let why = job_text(&mut admin, leak, "last_error").unwrap();
    assert!(
        why.contains("permission denied") && why.contains("42501"),
        "{why}"
    );
    assert_eq!(rows_of_key(&mut admin, "leak"), 0);

    // Nor through a job row of its own making, or by changing one.
    for forged in [
        "INSERT INTO backfill.job (process_model_identifier, paths, overwrite, origin, queued_by)
         VALUES ('bulk/model', '[{\"key\": \"leak\", \"path\": \"$\", \"overwrite\": true}]', true, 'manual', 'postgres')",
        "UPDATE backfill.job SET queued_by = 'postgres', state = 'queued'",
        "DELETE FROM backfill.job",
    ] {
        let err = clerk.batch_execute(forged).unwrap_err();
        assert_eq!(err.code().unwrap().code(), "42501", "{forged}: {err}");
    }
    // It cannot run or cancel another role's job either.
    let job = add_path(&mut admin, OTHER, "number", "invoice.number");
    let err = clerk
        .query_one("SELECT backfill.cancel($1)", &[&job])
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501", "{err}");
    assert_eq!(wait_done(&mut admin, job), "succeeded");

    // The application role of docs/security.md's recipe: its backfill completes, as itself.
    let mut editor = cluster.connect_as("editor", "app");
    let job = add_path(&mut editor, BULK, "number", "invoice.number");
    assert_eq!(wait_done(&mut editor, job), "succeeded");
    assert_eq!(
        job_text(&mut editor, job, "queued_by").as_deref(),
        Some("editor")
    );
    assert_eq!(wrong_rows(&mut admin, BULK, "number", "invoice.number"), 0);
    let err = editor
        .batch_execute(&format!("CALL backfill.run({leak})"))
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501", "{err}");

    // Row-level security holds for its backfills, even with FORCE on the owner's side.
    admin
        .batch_execute(
            "ALTER TABLE backfill.process_instance_metadata ENABLE ROW LEVEL SECURITY;
             ALTER TABLE backfill.process_instance_metadata FORCE ROW LEVEL SECURITY;
             CREATE POLICY no_secrets ON backfill.process_instance_metadata
                 USING (true) WITH CHECK (key <> 'secret');",
        )
        .unwrap();
    let secret = add_path(&mut editor, BULK, "secret", "invoice.total");
    assert_eq!(wait_done(&mut editor, secret), "failed");
    let why = job_text(&mut admin, secret, "last_error").unwrap();
    assert!(why.contains("row-level security"), "{why}");
    assert_eq!(rows_of_key(&mut admin, "secret"), 0);
    let open = add_path(&mut editor, BULK, "open", "invoice.total");
    assert_eq!(wait_done(&mut editor, open), "succeeded");
    assert_eq!(wrong_rows(&mut admin, BULK, "open", "invoice.total"), 0);

    // Run by hand in a database no worker serves, by the same role with the same recipe.
    let mut manual = cluster.create_db("manual");
    manual
        .batch_execute(&format!(
            "{}\n{}",
            bulk_sql(300),
            RECIPE.replace("ROLE", "editor")
        ))
        .unwrap();
    let mut editor = cluster.connect_as("editor", "manual");
    keep_workers_out(&cluster, "manual");
    let job = add_path(&mut editor, BULK, "number", "invoice.number");
    call_run_succeeds(&mut editor, &mut manual, job);
    assert_eq!(wrong_rows(&mut manual, BULK, "number", "invoice.number"), 0);
}

/// Blocks until the worker waits for a lock.
fn wait_until_worker_waits_for_a_lock(db: &mut Client) {
    wait_for(
        "the worker to wait for a lock",
        Duration::from_secs(60),
        || {
            let waiting: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE backend_type = 'backfill worker' AND wait_event_type = 'Lock'",
                    &[],
                )
                .unwrap()
                .get(0);
            (waiting > 0).then_some(())
        },
    );
}

#[test]
fn a_foreign_key_or_trigger_added_mid_job_holds_for_every_later_row_and_job_triggers_fire() {
    let (cluster, mut db) = start_app(
        "sec-ddl",
        true,
        &["backfill.batch_delay = '20ms'"],
        &bulk_sql(3_000),
    );
    // A user's trigger on backfill.job sees the worker's updates.
    db.batch_execute(
        "CREATE TABLE public.job_audit (job bigint, old_state text, state text, processed bigint);
         CREATE FUNCTION public.audit_job() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.job_audit VALUES (NEW.id, OLD.state, NEW.state, NEW.instances_processed);
             RETURN NULL;
         END $$;
         CREATE TRIGGER audit AFTER UPDATE ON backfill.job
             FOR EACH ROW EXECUTE FUNCTION public.audit_job();",
    )
    .unwrap();
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    wait_for("some batches", Duration::from_secs(60), || {
        (rows_of_key(&mut db, "number") >= 300).then_some(())
    });
    let mut ddl = cluster.connect("app");
    ddl.batch_execute(
        "BEGIN;
         CREATE TABLE public.allowed_keys (key varchar(255) PRIMARY KEY);
         ALTER TABLE backfill.process_instance_metadata
             ADD CONSTRAINT only_allowed_keys FOREIGN KEY (key) REFERENCES public.allowed_keys NOT VALID;",
    )
    .unwrap();
    wait_until_worker_waits_for_a_lock(&mut db);
    let before = rows_of_key(&mut db, "number");
    ddl.batch_execute("COMMIT").unwrap();
    assert_eq!(wait_done(&mut db, job), "succeeded");
    let total = one_i64(
        &mut db,
        &format!("SELECT total FROM backfill.progress WHERE id = {job}"),
    );
    // Every row written after the constraint committed would violate it: none was written.
    assert_eq!(rows_of_key(&mut db, "number"), before);
    assert_eq!(
        one_i64(
            &mut db,
            &format!("SELECT errors FROM backfill.progress WHERE id = {job}")
        ),
        total - before
    );
    let audited = one_i64(
        &mut db,
        // The job's parts, when it was split, are rows of their own.
        &format!(
            "SELECT count(*) FROM public.job_audit
              WHERE job = {job} OR job IN (SELECT id FROM backfill.job WHERE parent_id = {job})"
        ),
    );
    assert!(audited >= 30, "{audited} audited updates of job {job}");
    // It succeeds once (after which its row changes once more, when the coverage it owes is
    // counted: coverage_due).
    assert_eq!(
        one_i64(
            &mut db,
            &format!(
                "SELECT count(*) FROM public.job_audit
                  WHERE job = {job} AND state = 'succeeded' AND old_state <> 'succeeded'"
            )
        ),
        1
    );

    // A trigger created mid-job, likewise, fires for every row written after it committed.
    db.batch_execute(
        "ALTER TABLE backfill.process_instance_metadata DROP CONSTRAINT only_allowed_keys;
         CREATE TABLE public.written (process_instance_id bigint, key text);",
    )
    .unwrap();
    let job = add_path(&mut db, BULK, "status", "invoice.status");
    wait_for("some batches", Duration::from_secs(60), || {
        (rows_of_key(&mut db, "status") >= 300).then_some(())
    });
    ddl.batch_execute(
        "BEGIN;
         CREATE FUNCTION public.note_row() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.written VALUES (NEW.process_instance_id, NEW.key);
             RETURN NULL;
         END $$;
         CREATE TRIGGER note AFTER INSERT ON backfill.process_instance_metadata
             FOR EACH ROW EXECUTE FUNCTION public.note_row();",
    )
    .unwrap();
    wait_until_worker_waits_for_a_lock(&mut db);
    let before = rows_of_key(&mut db, "status");
    ddl.batch_execute("COMMIT").unwrap();
    assert_eq!(wait_done(&mut db, job), "succeeded");
    let after = rows_of_key(&mut db, "status");
    assert!(after > before);
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM public.written WHERE key = 'status'"
        ),
        after - before
    );
    assert_eq!(wrong_rows(&mut db, BULK, "status", "invoice.status"), 0);
}

#[test]
fn an_uncommitted_cancel_does_not_hold_up_the_queue() {
    let (cluster, mut db) = start_app(
        "sec-cancel",
        true,
        &["backfill.batch_delay = '20ms'"],
        &bulk_sql(3_000),
    );
    let slow = add_path(&mut db, BULK, "number", "invoice.number");
    wait_for("some batches", Duration::from_secs(60), || {
        (rows_of_key(&mut db, "number") >= 200).then_some(())
    });
    let mut canceller = cluster.connect("app");
    canceller
        .batch_execute(&format!("BEGIN; SELECT backfill.cancel({slow});"))
        .unwrap();
    let next = add_path(&mut db, OTHER, "number", "invoice.number");
    assert_eq!(wait_done(&mut db, next), "succeeded");
    assert_eq!(wrong_rows(&mut db, OTHER, "number", "invoice.number"), 0);
    canceller.batch_execute("COMMIT").unwrap();
    assert_eq!(wait_done(&mut db, slow), "cancelled");
}

#[test]
fn an_error_outside_a_batch_fails_the_job_and_the_worker_goes_on() {
    let (mut cluster, mut db) = start_app("sec-outside", true, &[], &bulk_sql(1_000));
    // A worker that ends with an error (FATAL) exits with code 1: none may. (The launcher
    // exits with 1 on any shutdown request, so that the postmaster starts it again.)
    let exits = |cluster: &Cluster| {
        cluster
            .log()
            .lines()
            .filter(|line| {
                line.contains("\"backfill worker\"") && line.contains("exited with exit code 1")
            })
            .count()
    };
    // Recording the first batch of the bulk model's job fails: outside the batch's own
    // subtransaction, where 0.1.0 turned it into FATAL and a restart loop.
    db.batch_execute(
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'the auditors refuse'; END $$;
         CREATE TRIGGER refuse BEFORE UPDATE ON backfill.job FOR EACH ROW
             WHEN (NEW.process_model_identifier = 'bulk/model' AND NEW.instances_processed > 0)
             EXECUTE FUNCTION public.refuse();",
    )
    .unwrap();
    let refused = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(wait_done(&mut db, refused), "failed");
    let why = job_text(&mut db, refused, "last_error").unwrap();
    assert!(why.contains("the auditors refuse"), "{why}");
    let next = add_path(&mut db, OTHER, "number", "invoice.number");
    assert_eq!(wait_done(&mut db, next), "succeeded");
    let log = cluster.log();
    assert!(
        log.contains(&format!("job {refused} failed 3 times outside a batch")),
        "{log}"
    );
    assert_eq!(exits(&cluster), 0, "{log}");

    // The extension's schema renamed, and a worker started (by the launcher's pass over every
    // database after a restart): a logged wait, not a restart loop.
    db.batch_execute("ALTER SCHEMA backfill RENAME TO backfill_away")
        .unwrap();
    drop(db);
    cluster.pg_stop("fast");
    cluster.pg_start();
    wait_for("the worker to notice", Duration::from_secs(30), || {
        cluster
            .log()
            .contains("failed looking for a job: relation \"backfill.job\" does not exist")
            .then_some(())
    });
    // It does not stay connected (DROP DATABASE would wait for it) while the failure lasts.
    let mut db = cluster.connect("app");
    no_worker_left(&mut db);
    assert!(cluster
        .log()
        .contains("backfill worker: leaving after 3 failures in a row"));
    db.batch_execute("ALTER SCHEMA backfill_away RENAME TO backfill")
        .unwrap();
    let after = add_path(&mut db, OTHER, "status", "invoice.status");
    assert_eq!(wait_done(&mut db, after), "succeeded");
    assert_eq!(exits(&cluster), 0, "{}", cluster.log());
}

#[test]
fn a_database_that_refuses_connections_is_waited_for() {
    let (cluster, mut db) = start_app(
        "sec-allowconn",
        true,
        &["backfill.naptime = '200ms'"],
        &bulk_sql(500),
    );
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute("ALTER DATABASE app ALLOW_CONNECTIONS false")
        .unwrap();
    // A session already connected queues a job: its worker waits for the database to allow
    // connections, without trying to connect.
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    wait_for(
        "the launcher to say the database waits",
        Duration::from_secs(60),
        || {
            cluster
                .log()
                .contains("database \"app\" does not allow connections (ALLOW_CONNECTIONS false); its jobs wait until it does")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        one_text(
            &mut db,
            &format!("SELECT state FROM backfill.job WHERE id = {job}")
        ),
        "queued"
    );
    admin
        .batch_execute("ALTER DATABASE app ALLOW_CONNECTIONS true")
        .unwrap();
    assert_eq!(wait_done(&mut db, job), "succeeded");
    let log = cluster.log();
    let refused = log
        .matches("is not currently accepting connections")
        .count();
    assert_eq!(refused, 0, "failed connection attempts:\n{log}");
}
