//! A SpiffWorkflow database: its own tables (tests/fixtures/spiffworkflow/schema.sql, loaded
//! into schema `app` owned by the non-superuser role `spiff`), task data written as Python's
//! json.dumps writes it (scripts/spiff_data.py), process models synced from
//! process_model.json files, and the live engine's own metadata writes running next to a
//! job. Everything here is done as `spiff`, with the GRANTs docs/spiffworkflow.md lists.

mod common;

use common::spiff::*;

use common::{
    model_json, one_i64, one_text, run_sync, sqlstate, wait_for, write, Cluster, SPIFF_GRANTS,
};
use postgres::Client;
use std::collections::HashMap;
use std::time::Duration;

#[test]
fn attach_checks_the_tables_and_advises_indexes() {
    let cluster = Cluster::start("spiff-attach", &["backfill.max_workers = 0"]);
    let mut spiff = spiff_database(&cluster, "spiff", 50);
    // Each unusable variant of the tables, in a scratch schema of spiff's, in a transaction
    // rolled back afterwards.
    spiff
        .batch_execute(&format!(
            "CREATE SCHEMA bad; SET search_path = bad; {SCHEMA_SQL} RESET search_path;"
        ))
        .unwrap();
    for (change, code, says) in [
        ("DROP TABLE bad.task", "42P01", "relation \"bad.task\" does not exist"),
        (
            "ALTER TABLE bad.json_data RENAME COLUMN data TO payload",
            "42703",
            "column \"data\" of relation \"bad.json_data\" does not exist",
        ),
        (
            "ALTER TABLE bad.task ALTER COLUMN end_in_seconds TYPE text",
            "42804",
            "column \"end_in_seconds\" of relation \"bad.task\" is of type text",
        ),
        (
            "ALTER TABLE bad.json_data ALTER COLUMN data TYPE text",
            "42804",
            "is of type text",
        ),
        (
            "ALTER TABLE bad.process_instance_metadata DROP CONSTRAINT process_instance_metadata_unique",
            "42P10",
            "has no unique constraint on (process_instance_id, key)",
        ),
        ("DROP TABLE bad.task; CREATE VIEW bad.task AS SELECT * FROM app.task", "42809", "bad.task is not a table"),
    ] {
        let mut tx = spiff.transaction().unwrap();
        tx.batch_execute(change).unwrap();
        let e = tx.execute("SELECT backfill.attach('bad')", &[]).unwrap_err();
        assert_eq!(sqlstate(&e), code, "{change}: {e:?}");
        let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
        assert!(message.contains(says), "{change}: {e:?}");
        tx.rollback().unwrap();
    }
    let e = spiff
        .execute("SELECT backfill.attach('nowhere')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "3F000");
    let e = spiff
        .execute("SELECT backfill.attach(NULL)", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22004");

    // Another role with EXECUTE may not attach tables it does not own, nor detach them.
    let mut admin = cluster.connect("spiff");
    admin
        .batch_execute(
            "CREATE ROLE other LOGIN;
             GRANT USAGE ON SCHEMA backfill TO other;
             GRANT EXECUTE ON FUNCTION backfill.attach(text), backfill.detach() TO other;
             GRANT USAGE ON SCHEMA app TO other;",
        )
        .unwrap();
    let mut other = cluster.connect_as("other", "spiff");
    let e = other
        .execute("SELECT backfill.attach('app')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e:?}");

    // The owner attaches; NOTICEs give the indexes to create, verbatim.
    let (mut spiff, notices) = cluster.connect_as_with_notices("spiff", "spiff");
    spiff.execute("SELECT backfill.attach('app')", &[]).unwrap();
    let advice: Vec<String> = notices
        .lock()
        .unwrap()
        .iter()
        .filter_map(|n| n.split_once("(HINT: Create it while the application runs: "))
        .map(|(_, hint)| hint.strip_suffix(')').unwrap_or(hint).to_owned())
        .collect();
    assert_eq!(advice.len(), 2, "{:?}", notices.lock().unwrap());
    assert!(advice[0]
        .starts_with("CREATE INDEX CONCURRENTLY backfill_task_latest_completed_idx ON app.task"));
    for statement in &advice {
        spiff.batch_execute(statement).unwrap();
    }
    notices.lock().unwrap().clear();
    spiff.execute("SELECT backfill.attach('app')", &[]).unwrap();
    assert!(
        !notices
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.contains("CREATE INDEX")),
        "{:?}",
        notices.lock().unwrap()
    );
    assert_eq!(
        one_text(
            &mut spiff,
            "SELECT schema_name::text FROM backfill.attachment"
        ),
        "app"
    );
    // Jobs queued from now on are on app's tables; detach is the owner's.
    sync_model(&mut spiff, INVOICE, &[]);
    sync_model(&mut spiff, INVOICE, &[("number", "invoice.number")]);
    assert_eq!(
        one_text(
            &mut spiff,
            "SELECT tables_schema::text FROM backfill.job ORDER BY id DESC LIMIT 1"
        ),
        "app"
    );
    // No worker serves this database: CALL run fills app's tables in this session.
    let job = newest_job(&mut spiff);
    spiff
        .batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    assert_rows_equal(
        &stored(&mut spiff, INVOICE, &["number"]),
        &reference(&mut spiff, INVOICE, &[("number", "invoice.number")]),
    );
    let e = other.execute("SELECT backfill.detach()", &[]).unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    spiff.execute("SELECT backfill.detach()", &[]).unwrap();
    assert_eq!(
        one_i64(&mut spiff, "SELECT count(*) FROM backfill.attachment"),
        0
    );

    // Every accepted type: jsonb data, bigint ids, text key and NULL-able value, uuid guids,
    // double end times. A NULL-able value column gets a row with NULL for nothing found.
    spiff
        .batch_execute(
            "CREATE SCHEMA alt;
             CREATE TABLE alt.process_instance (id bigint PRIMARY KEY, process_model_identifier text NOT NULL);
             CREATE TABLE alt.json_data (hash text PRIMARY KEY, data jsonb NOT NULL);
             CREATE TABLE alt.task (guid uuid PRIMARY KEY, process_instance_id bigint NOT NULL,
                                    state text NOT NULL, json_data_hash text NOT NULL,
                                    end_in_seconds double precision);
             CREATE TABLE alt.process_instance_metadata (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 process_instance_id bigint NOT NULL REFERENCES alt.process_instance,
                 key text NOT NULL, value text,
                 created_at_in_seconds bigint NOT NULL, updated_at_in_seconds bigint NOT NULL,
                 UNIQUE (key, process_instance_id));
             INSERT INTO alt.process_instance VALUES (1, 'alt/model'), (2, 'alt/model');
             INSERT INTO alt.json_data VALUES ('h1', '{\"a\": {\"b\": 1.50}}');
             INSERT INTO alt.task VALUES (gen_random_uuid(), 1, 'COMPLETED', 'h1', 1.5);
             SELECT backfill.attach('alt');",
        )
        .unwrap();
    sync_model(&mut spiff, "alt/model", &[]);
    sync_model(&mut spiff, "alt/model", &[("b", "a.b")]);
    let job = newest_job(&mut spiff);
    spiff
        .batch_execute(&format!("CALL backfill.run({job})"))
        .unwrap();
    assert_eq!(
        one_text(
            &mut spiff,
            "SELECT string_agg(process_instance_id || '=' || coalesce(value, 'NULL'), ',' ORDER BY 1)
               FROM alt.process_instance_metadata"
        ),
        "1=1.5,2=NULL"
    );
}

#[test]
fn trigger_worker_and_overwrite_on_spiffworkflow_tables_match_python() {
    let cluster = Cluster::start("spiff-worker", &[]);
    let mut spiff = spiff_database(&cluster, "spiff", 3_000);
    spiff.execute("SELECT backfill.attach('app')", &[]).unwrap();
    assert_eq!(sync_model(&mut spiff, INVOICE, &[]), "inserted");
    // The live engine already wrote `number` for some instances: a fill leaves them.
    spiff
        .batch_execute(
            "INSERT INTO app.process_instance_metadata
                    (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
             SELECT id, 'number', 'live-' || id, 1, 1 FROM app.process_instance
              WHERE process_model_identifier = 'finance/invoice' AND id % 9 = 0",
        )
        .unwrap();
    let live: HashMap<i64, String> = spiff
        .query(
            "SELECT process_instance_id::bigint, value::text FROM app.process_instance_metadata",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    assert_eq!(sync_model(&mut spiff, INVOICE, PATHS), "updated");
    let job = newest_job(&mut spiff);
    assert_eq!(wait_done(&mut spiff, job), "succeeded");
    let mut expected: Rows = reference(&mut spiff, INVOICE, PATHS)
        .into_iter()
        .filter(|(id, key, _)| !(key == "number" && live.contains_key(id)))
        .chain(
            live.iter()
                .map(|(id, v)| (*id, "number".to_owned(), v.clone())),
        )
        .collect();
    expected.sort();
    assert_rows_equal(&stored(&mut spiff, INVOICE, &keys(PATHS)), &expected);
    // The spellings Python gives, present in this data and stored as such.
    for spelling in [
        "1e+16",
        "-0.0",
        "2.5e-300",
        "0.30000000000000004",
        "100000000000000000007",
        "{'z': 3, 'a': [1.0, None, \"it's\"], 'm': {'é': -0.0}, 'b':",
        "['a\\x00b']",
    ] {
        assert!(
            expected.iter().any(|(_, _, v)| v.starts_with(spelling)),
            "{spelling} not in the data"
        );
    }
    // Nothing for a missing or null value (the column is NOT NULL), and every instance counted.
    assert_eq!(
        one_i64(
            &mut spiff,
            "SELECT count(*) FROM app.process_instance_metadata WHERE key = 'nothing'"
        ),
        0
    );
    assert_eq!(
        one_i64(
            &mut spiff,
            &format!("SELECT total - processed + errors FROM backfill.progress WHERE id = {job}")
        ),
        0
    );
    assert!(
        one_text(
            &mut spiff,
            &format!("SELECT total::text FROM backfill.progress WHERE id = {job}")
        ) != "0"
    );

    // A changed path overwrites, and never with nothing: where the new path finds nothing the
    // old value stays.
    let before: HashMap<i64, String> = stored(&mut spiff, INVOICE, &["amount"])
        .into_iter()
        .map(|(id, _, v)| (id, v))
        .collect();
    let mut changed: Vec<(&str, &str)> = PATHS.to_vec();
    changed[2] = ("amount", "invoice.number");
    assert_eq!(sync_model(&mut spiff, INVOICE, &changed), "updated");
    let job = newest_job(&mut spiff);
    assert_eq!(wait_done(&mut spiff, job), "succeeded");
    let new_values: HashMap<i64, String> =
        reference(&mut spiff, INVOICE, &[("amount", "invoice.number")])
            .into_iter()
            .map(|(id, _, v)| (id, v))
            .collect();
    let mut expected: Rows = before
        .keys()
        .chain(new_values.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|id| {
            let value = new_values.get(id).or(before.get(id)).unwrap().clone();
            (*id, "amount".to_owned(), value)
        })
        .collect();
    expected.sort();
    assert_rows_equal(&stored(&mut spiff, INVOICE, &["amount"]), &expected);
    assert!(
        before.keys().any(|id| !new_values.contains_key(id)),
        "some keep their old value"
    );

    // A top-level string holding \u0000 cannot be stored: that instance is an error, the
    // others are filled.
    let nul_job: i64 = spiff
        .query_one(
            "SELECT backfill.enqueue('finance/invoice', NULL, true)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(wait_done(&mut spiff, nul_job), "succeeded");
    sync_model(&mut spiff, INVOICE, &[("nul", "nul")]);
    let job = newest_job(&mut spiff);
    assert_eq!(wait_done(&mut spiff, job), "succeeded");
    let nul_instances = one_i64(
        &mut spiff,
        "SELECT count(*) FROM app.process_instance i JOIN app.task t ON t.process_instance_id = i.id
                JOIN app.json_data d ON d.hash = t.json_data_hash
          WHERE i.process_model_identifier = 'finance/invoice' AND d.data::text LIKE '%\"nul\": %'",
    );
    let errors = one_i64(
        &mut spiff,
        &format!("SELECT errors FROM backfill.progress WHERE id = {job}"),
    );
    assert!(
        errors > 0 && errors <= nul_instances,
        "{errors} errors, {nul_instances} instances with nul"
    );
    assert!(one_text(
        &mut spiff,
        &format!("SELECT last_error FROM backfill.progress WHERE id = {job}")
    )
    .contains("22P05"));

    // latest_task_data reads the attached tables.
    assert_eq!(
        one_text(&mut spiff, "SELECT backfill.latest_task_data(17)::text"),
        "{}",
        "instance 17 has no completed task"
    );
    assert!(one_text(
        &mut spiff,
        "SELECT backfill.latest_task_data(1) #>> '{invoice,number}'"
    )
    .starts_with("INV-"));
}

#[test]
fn kill_9_mid_job_resumes_on_spiffworkflow_tables() {
    let cluster = Cluster::start(
        "spiff-crash",
        &["backfill.batch_size = 50", "backfill.batch_delay = '20ms'"],
    );
    let mut spiff = spiff_database(&cluster, "spiff", 4_000);
    spiff.execute("SELECT backfill.attach('app')", &[]).unwrap();
    sync_model(&mut spiff, INVOICE, &[]);
    let paths = [("number", "invoice.number"), ("nested", "nested")];
    // kill -9 of the worker mid-job: the server restarts, the job resumes at its cursor.
    sync_model(&mut spiff, INVOICE, &paths);
    let job = newest_job(&mut spiff);
    wait_for("the job to be half-way", Duration::from_secs(60), || {
        let done = one_i64(
            &mut spiff,
            &format!("SELECT processed FROM backfill.progress WHERE id = {job}"),
        );
        (done >= 1_000).then_some(())
    });
    let pid: i32 = wait_for("the worker's pid", Duration::from_secs(30), || {
        spiff
            .query_one("SELECT backfill.worker_pid()", &[])
            .unwrap()
            .get(0)
    });
    drop(spiff); // the postmaster resets every connection after a crash
    cluster.kill_9(pid);
    let mut spiff = cluster.connect_as("spiff", "spiff");
    assert_eq!(wait_done(&mut spiff, job), "succeeded");
    assert_rows_equal(
        &stored(&mut spiff, INVOICE, &keys(&paths)),
        &reference(&mut spiff, INVOICE, &paths),
    );
    assert_eq!(
        one_i64(
            &mut spiff,
            &format!("SELECT total - processed FROM backfill.progress WHERE id = {job}")
        ),
        0
    );
    let log = cluster.log();
    assert!(
        log.contains(&format!("(PID {pid}) was terminated by signal 9")),
        "{log}"
    );
    assert!(
        // The job, or a part of it when it was split, resumed.
        log.contains(&format!("backfill: job {job} resumed for model {INVOICE}"))
            || log.contains(&format!(
                "(a part of job {job}) resumed for model {INVOICE}"
            )),
        "{log}"
    );
}

#[test]
fn the_live_engine_never_fails_and_keeps_its_values_while_a_job_fills_the_same_key() {
    let cluster = Cluster::start(
        "spiff-race",
        &["backfill.batch_size = 20", "backfill.batch_delay = '15ms'"],
    );
    let mut spiff = spiff_database(&cluster, "spiff", 3_000);
    spiff.execute("SELECT backfill.attach('app')", &[]).unwrap();
    sync_model(&mut spiff, INVOICE, &[]);
    let ids = model_instances(&mut spiff);
    sync_model(&mut spiff, INVOICE, &[("number", "invoice.number")]);
    let job = newest_job(&mut spiff);
    let (state, race) = race_the_job(
        || cluster.connect_as("spiff", "spiff"),
        &mut spiff,
        job,
        ids,
        4,
    );
    assert_eq!(state, "succeeded");
    assert_the_application_kept_its_values(&mut spiff, &race);
}

#[test]
fn a_superusers_job_on_attached_tables_runs_as_their_owner() {
    // spiff owns the attached tables and so decides what runs on them: a trigger of its own
    // on the metadata table must never run with a superuser's privileges because a superuser
    // queued the job (by a model update, or enqueue).
    let cluster = Cluster::start("spiff-owner", &[]);
    let mut spiff = spiff_database(&cluster, "spiff", 200);
    spiff
        .batch_execute(
            "SELECT backfill.attach('app');
             CREATE TABLE app.audit (who text, super boolean);
             CREATE FUNCTION app.audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO app.audit SELECT current_user, r.rolsuper
                   FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER audit AFTER INSERT ON app.process_instance_metadata
                 FOR EACH ROW EXECUTE FUNCTION app.audit_row();",
        )
        .unwrap();
    sync_model(&mut spiff, INVOICE, &[]);
    let mut admin = cluster.connect("spiff");
    admin
        .batch_execute(
            "UPDATE backfill.process_model
                SET metadata_extraction_paths = '[{\"key\": \"number\", \"path\": \"invoice.number\"}]'
              WHERE id = 'finance/invoice'",
        )
        .unwrap();
    let job = newest_job(&mut admin);
    assert_eq!(
        one_text(
            &mut admin,
            &format!("SELECT queued_by::text FROM backfill.job WHERE id = {job}")
        ),
        "postgres"
    );
    assert_eq!(wait_done(&mut admin, job), "succeeded");
    admin
        .batch_execute(
            "DELETE FROM app.process_instance_metadata WHERE process_instance_id % 2 = 0",
        )
        .unwrap();
    let manual: i64 = admin
        .query_one(
            "SELECT backfill.enqueue('finance/invoice', NULL, true)",
            &[],
        )
        .unwrap()
        .get(0);
    admin
        .batch_execute(&format!("CALL backfill.run({manual})"))
        .ok();
    assert_eq!(wait_done(&mut admin, manual), "succeeded");
    assert_eq!(
        one_text(
            &mut admin,
            "SELECT string_agg(DISTINCT who || ' ' || super, ', ') FROM app.audit"
        ),
        "spiff false"
    );
    assert!(one_i64(&mut admin, "SELECT count(*) FROM app.audit") > 0);
    assert_rows_equal(
        &stored(&mut admin, INVOICE, &["number"]),
        &reference(&mut admin, INVOICE, &[("number", "invoice.number")]),
    );

    // Catch-up looks whether a model has instances: a superuser's model insert and its
    // catch_up() read spiff's instance table as spiff, whose policy (forced on its own reads)
    // says who reads.
    spiff
        .batch_execute(
            "CREATE FUNCTION app.who_reads() RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN
                 RAISE NOTICE 'instances read by % (superuser %)', current_user,
                     (SELECT r.rolsuper::text FROM pg_catalog.pg_roles r WHERE r.rolname = current_user);
                 RETURN true;
             END $$;
             ALTER TABLE app.process_instance ENABLE ROW LEVEL SECURITY;
             ALTER TABLE app.process_instance FORCE ROW LEVEL SECURITY;
             CREATE POLICY who_reads ON app.process_instance USING (app.who_reads());",
        )
        .unwrap();
    let (mut watched, notices) = cluster.connect_with_notices("spiff");
    watched
        .batch_execute(
            "INSERT INTO backfill.process_model (id, metadata_extraction_paths)
             VALUES ('hr/leave-request', '[{\"key\": \"days\", \"path\": \"days\"}]');
             SELECT * FROM backfill.catch_up('finance/invoice');",
        )
        .unwrap();
    let said = notices.lock().unwrap().join("\n");
    assert_eq!(
        said.matches("backfill job ").count(),
        2,
        "the insert and catch_up each queued a job: {said}"
    );
    assert!(
        said.contains("instances read by spiff (superuser false)"),
        "{said}"
    );
    assert!(!said.contains("superuser true"), "{said}");
}

#[test]
fn sync_process_models_from_a_spec_directory_and_its_git_hook() {
    let cluster = Cluster::start("spiff-sync", &["backfill.max_workers = 0"]);
    let mut spiff = spiff_database(&cluster, "spiff", 20);
    spiff.execute("SELECT backfill.attach('app')", &[]).unwrap();

    // The function: inserted, updated (queues a job), unchanged, rejected per model.
    let actions = |db: &mut Client, models: &str| -> Vec<(Option<String>, String)> {
        db.query(
            "SELECT id, action FROM backfill.sync_process_models($1::text::jsonb)",
            &[&models],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    let got = actions(
        &mut spiff,
        r#"[{"id": "a/one", "display_name": "One", "metadata_extraction_paths": [{"key": "k", "path": "x"}]},
            {"id": "a/two", "metadata_extraction_paths": [{"key": "k"}]},
            {"display_name": "no id"},
            "not an object"]"#,
    );
    assert_eq!(got[0], (Some("a/one".into()), "inserted".into()));
    assert_eq!(got[1].0.as_deref(), Some("a/two"));
    assert!(
        got[1].1.starts_with("rejected: ") && got[1].1.contains("path"),
        "{got:?}"
    );
    assert!(
        got[2].1.starts_with("rejected: element 3 has no \"id\""),
        "{got:?}"
    );
    assert!(got[3].1.starts_with("rejected: element 4"), "{got:?}");
    let jobs_before = one_i64(&mut spiff, "SELECT count(*) FROM backfill.job");
    let got = actions(
        &mut spiff,
        r#"[{"id": "a/one", "display_name": "One", "metadata_extraction_paths": [{"key": "k", "path": "x"}, {"key": "l", "path": "y"}]}]"#,
    );
    assert_eq!(got, vec![(Some("a/one".into()), "updated".into())]);
    assert_eq!(
        one_i64(&mut spiff, "SELECT count(*) FROM backfill.job"),
        jobs_before + 1
    );
    let got = actions(
        &mut spiff,
        r#"[{"id": "a/one", "display_name": "One", "metadata_extraction_paths": [{"key": "k", "path": "x"}, {"key": "l", "path": "y"}]}]"#,
    );
    assert_eq!(got, vec![(Some("a/one".into()), "unchanged".into())]);
    let e = spiff
        .query("SELECT * FROM backfill.sync_process_models('{}')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023");
    let e = spiff
        .query("SELECT * FROM backfill.sync_process_models(NULL)", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22004");

    // The command, on a spec directory laid out as SpiffWorkflow lays it out.
    let spec = cluster.dir.join("spec");
    write(
        &spec.join("finance/process_group.json"),
        r#"{"display_name": "Finance"}"#,
    );
    write(
        &spec.join("finance/invoice/process_model.json"),
        &model_json("Invoice", &[("number", "invoice.number")]),
    );
    write(&spec.join("finance/invoice/main.bpmn"), "<bpmn/>");
    write(
        &spec.join("hr/leave-request/process_model.json"),
        &model_json("Leave", &[]),
    );
    write(
        &spec.join("broken/process_model.json"),
        "{\"display_name\": ",
    );
    write(
        &spec.join("bad-paths/process_model.json"),
        &model_json("Bad", &[("", "x")]),
    );
    let dsn = format!(
        "host=127.0.0.1 port={} user=spiff dbname=spiff",
        cluster.port
    );
    let run = run_sync;
    let spec_arg = spec.to_str().unwrap();
    let (code, out, err) = run(&["--dsn", &dsn, spec_arg], &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"inserted  finance/invoice"), "{out}");
    assert!(lines.contains(&"inserted  hr/leave-request"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("rejected  broken: process_model.json is not valid JSON")),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("rejected  bad-paths: ")),
        "{out}"
    );
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(
        one_i64(
            &mut spiff,
            "SELECT count(*) FROM backfill.process_model WHERE id = 'finance'"
        ),
        0
    );

    // Fixed files, and the connection from libpq's environment variables: only the change
    // is printed, and the exit status is 0.
    write(
        &spec.join("broken/process_model.json"),
        &model_json("Fixed", &[]),
    );
    write(
        &spec.join("bad-paths/process_model.json"),
        &model_json("Fixed", &[]),
    );
    let env = [
        ("PGHOST", "127.0.0.1".to_owned()),
        ("PGPORT", cluster.port.to_string()),
        ("PGUSER", "spiff".to_owned()),
        ("PGDATABASE", "spiff".to_owned()),
    ];
    let (code, out, err) = run(&[spec_arg], &env);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, "inserted  bad-paths\ninserted  broken\n");

    // The git hook: a commit that adds a path queues the job.
    let git = |args: &[&str]| common::git(&spec, args);
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "models"]);
    let (code, out, err) = run(&["--install-git-hook", "--dsn", &dsn, spec_arg], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let hook = spec.join(".git/hooks/post-commit");
    assert!(std::fs::read_to_string(&hook)
        .unwrap()
        .contains("backfill-sync-models"));
    let jobs_before = one_i64(
        &mut spiff,
        "SELECT count(*) FROM backfill.job WHERE process_model_identifier = 'finance/invoice'",
    );
    write(
        &spec.join("finance/invoice/process_model.json"),
        &model_json(
            "Invoice",
            &[("number", "invoice.number"), ("total", "invoice.total")],
        ),
    );
    git(&["commit", "-q", "-a", "-m", "add total"]);
    assert_eq!(
        one_i64(
            &mut spiff,
            "SELECT count(*) FROM backfill.job WHERE process_model_identifier = 'finance/invoice'"
        ),
        jobs_before + 1
    );
    assert_eq!(
        one_text(
            &mut spiff,
            "SELECT paths::text FROM backfill.job ORDER BY id DESC LIMIT 1"
        ),
        r#"[{"key": "total", "path": "invoice.total", "overwrite": false}]"#
    );
    // A hook someone else wrote is left alone.
    std::fs::write(&hook, "#!/bin/sh\necho theirs\n").unwrap();
    let (code, _, err) = run(&["--install-git-hook", "--dsn", &dsn, spec_arg], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("was not written by backfill-sync-models"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&hook).unwrap(),
        "#!/bin/sh\necho theirs\n"
    );
}

#[test]
fn the_spiffworkflow_page_lists_the_grants_these_tests_use() {
    let page = std::fs::read_to_string(repo().join("docs/spiffworkflow.md")).unwrap();
    assert!(
        page.contains(SPIFF_GRANTS),
        "docs/spiffworkflow.md must contain:\n{SPIFF_GRANTS}"
    );
}

/// The first day on a deployment years old: instances that predate their model's keys, and
/// values the live engine wrote for those saved since. Attaching and the first sync fill every
/// gap as SpiffWorkflow's own backfill would, and leave the live values as they are; so do
/// `backfill.catch_up` and the sync command's `--catch-up` later.
#[test]
fn the_first_sync_on_an_existing_deployment_catches_up_and_keeps_the_live_values() {
    let cluster = Cluster::start("spiff-catch-up", &[]);
    let mut spiff = spiff_database(&cluster, "spiff", 20_000);
    // The live engine wrote values of two keys for the instances it saved since they existed.
    spiff
        .batch_execute(
            "INSERT INTO app.process_instance_metadata
                    (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
             SELECT id, 'number', 'live-' || id, 1, 1 FROM app.process_instance
              WHERE process_model_identifier = 'finance/invoice' AND id % 9 = 0
             UNION ALL
             SELECT id, 'total', 'live-' || id, 1, 1 FROM app.process_instance
              WHERE process_model_identifier = 'finance/invoice' AND id % 7 = 0",
        )
        .unwrap();
    let live: Rows = stored(&mut spiff, INVOICE, &keys(PATHS));
    assert!(live.len() > 1_000, "{} live values", live.len());
    let written: std::collections::HashSet<(i64, String)> =
        live.iter().map(|(id, key, _)| (*id, key.clone())).collect();
    let mut expected: Rows = reference(&mut spiff, INVOICE, PATHS)
        .into_iter()
        .filter(|(id, key, _)| !written.contains(&(*id, key.clone())))
        .chain(live.iter().cloned())
        .collect();
    expected.sort();
    spiff.execute("SELECT backfill.attach('app')", &[]).unwrap();

    // The first sync inserts the model with its paths: a catch-up job, which --wait follows.
    let spec = cluster.dir.join("spec");
    write(
        &spec.join("finance/invoice/process_model.json"),
        &model_json("Invoice", PATHS),
    );
    write(
        &spec.join("new/model/process_model.json"),
        &model_json("New", &[("days", "days")]),
    );
    let dsn = format!(
        "host=127.0.0.1 port={} user=spiff dbname=spiff",
        cluster.port
    );
    let spec_arg = spec.to_str().unwrap();
    let (code, out, err) = run_sync(&["--dsn", &dsn, "--wait", spec_arg], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("inserted  finance/invoice"), "{out}");
    let job = one_i64(
        &mut spiff,
        "SELECT max(id) FROM backfill.job WHERE process_model_identifier = 'finance/invoice'",
    );
    assert_eq!(
        one_text(
            &mut spiff,
            &format!("SELECT state || ' ' || origin || ' ' || paths::text FROM backfill.job WHERE id = {job}")
        ),
        format!(
            "succeeded model_update {}",
            one_text(
                &mut spiff,
                &format!(
                    "SELECT jsonb_agg(jsonb_build_object('key', k, 'path', p, 'overwrite', false))::text
                       FROM (VALUES {}) AS v(k, p)",
                    PATHS
                        .iter()
                        .map(|(k, p)| format!("('{k}', '{p}')"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            )
        )
    );
    // new/model has no instance: no job for it.
    assert_eq!(
        one_i64(
            &mut spiff,
            "SELECT count(*) FROM backfill.job WHERE process_model_identifier = 'new/model'"
        ),
        0
    );
    assert_rows_equal(&stored(&mut spiff, INVOICE, &keys(PATHS)), &expected);

    // Gaps made later (rows lost, a restore of part of the table) are filled on demand, and
    // the rows there kept.
    let remove_some = |db: &mut Client| {
        db.batch_execute(
            "DELETE FROM app.process_instance_metadata
              WHERE process_instance_id % 3 = 0 AND value NOT LIKE 'live-%'",
        )
        .unwrap()
    };
    remove_some(&mut spiff);
    assert!(stored(&mut spiff, INVOICE, &keys(PATHS)).len() < expected.len());
    let queued: Vec<(String, i64)> = spiff
        .query("SELECT model, job_id FROM backfill.catch_up()", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].0, INVOICE);
    assert_eq!(wait_done(&mut spiff, queued[0].1), "succeeded");
    assert_rows_equal(&stored(&mut spiff, INVOICE, &keys(PATHS)), &expected);
    assert_eq!(
        spiff
            .query("SELECT * FROM backfill.catch_up('new/model')", &[])
            .unwrap()
            .len(),
        0
    );
    let e = spiff
        .query("SELECT * FROM backfill.catch_up('no/such-model')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023");

    // And by the sync command, for models already in the database.
    remove_some(&mut spiff);
    let (code, out, err) = run_sync(&["--dsn", &dsn, "--catch-up", "--wait", spec_arg], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("catch-up  finance/invoice (job "), "{out}");
    assert_rows_equal(&stored(&mut spiff, INVOICE, &keys(PATHS)), &expected);
    assert_eq!(
        one_i64(
            &mut spiff,
            "SELECT count(*) FROM backfill.job WHERE parent_id IS NULL AND state <> 'succeeded'"
        ),
        0
    );
}
