//! Attacks on the surfaces added for SpiffWorkflow (attach, latest_task_data, the run lock,
//! the worker's session, coverage, the sync command), one test each. Every one of them
//! succeeded on 0.5.0: a role that owns an attached schema made a superuser run its code,
//! an attachment sent other roles' jobs to its owner's triggers, partition triggers were
//! skipped, any role could hold a job back, a database owner's settings stopped the worker,
//! coverage counts leaked and were overwritten, one bad model aborted a sync, and the git
//! hook put the password on a command line.

mod common;

use common::{
    add_path, bulk_sql, ended, git, model_json, no_worker_left, one_i64, one_text, run_sync,
    spiff_grants, sqlstate, start_app, throttle_of, wait_for, write, Cluster,
};
use postgres::Client;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const BULK: &str = "bulk/model";

/// The four tables in schema `schema`, with a copy of the rows of the extension's own (the
/// data of `bulk_sql`, loaded before), owned by `owner`, as an application lays them out:
/// SpiffWorkflow's columns, jsonb task data, the foreign keys and the lookups' indexes. With
/// `partitioned`, the metadata table is hash-partitioned by instance into two partitions.
fn app_tables(schema: &str, owner: &str, partitioned: bool) -> String {
    let (partition_by, partitions) = if partitioned {
        (
            " PARTITION BY HASH (process_instance_id)",
            format!(
                "CREATE TABLE {schema}.process_instance_metadata_0 PARTITION OF {schema}.process_instance_metadata
                     FOR VALUES WITH (MODULUS 2, REMAINDER 0);
                 CREATE TABLE {schema}.process_instance_metadata_1 PARTITION OF {schema}.process_instance_metadata
                     FOR VALUES WITH (MODULUS 2, REMAINDER 1);
                 ALTER TABLE {schema}.process_instance_metadata_0 OWNER TO {owner};
                 ALTER TABLE {schema}.process_instance_metadata_1 OWNER TO {owner};"
            ),
        )
    } else {
        ("", String::new())
    };
    format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.process_instance (
             id bigint PRIMARY KEY, process_model_identifier text NOT NULL, status text,
             created_at_in_seconds bigint, updated_at_in_seconds bigint);
         CREATE INDEX ON {schema}.process_instance (process_model_identifier, id);
         CREATE TABLE {schema}.json_data (hash text PRIMARY KEY, data jsonb NOT NULL);
         CREATE TABLE {schema}.task (
             guid uuid PRIMARY KEY,
             process_instance_id bigint NOT NULL REFERENCES {schema}.process_instance ON DELETE CASCADE,
             state text NOT NULL, json_data_hash text NOT NULL,
             start_in_seconds numeric, end_in_seconds numeric);
         CREATE INDEX ON {schema}.task (process_instance_id, end_in_seconds DESC NULLS LAST, guid DESC)
             INCLUDE (json_data_hash) WHERE state = 'COMPLETED';
         CREATE TABLE {schema}.process_instance_metadata (
             process_instance_id bigint NOT NULL REFERENCES {schema}.process_instance ON DELETE CASCADE,
             key varchar(255) NOT NULL, value varchar(255),
             created_at_in_seconds bigint NOT NULL, updated_at_in_seconds bigint NOT NULL,
             UNIQUE (process_instance_id, key)){partition_by};
         {partitions}
         INSERT INTO {schema}.process_instance
         SELECT id, process_model_identifier, status, created_at_in_seconds, updated_at_in_seconds
           FROM backfill.process_instance;
         INSERT INTO {schema}.json_data SELECT hash, data FROM backfill.json_data;
         INSERT INTO {schema}.task SELECT * FROM backfill.task;
         ALTER SCHEMA {schema} OWNER TO {owner};
         ALTER TABLE {schema}.process_instance OWNER TO {owner};
         ALTER TABLE {schema}.json_data OWNER TO {owner};
         ALTER TABLE {schema}.task OWNER TO {owner};
         ALTER TABLE {schema}.process_instance_metadata OWNER TO {owner};
         ANALYZE {schema}.process_instance, {schema}.task, {schema}.json_data;"
    )
}

/// Rows of `key` in the metadata table of `schema`.
fn rows_in(db: &mut Client, schema: &str, key: &str) -> i64 {
    db.query_one(
        &format!("SELECT count(*) FROM {schema}.process_instance_metadata WHERE key = $1"),
        &[&key],
    )
    .unwrap()
    .get(0)
}

fn is_superuser(db: &mut Client, role: &str) -> bool {
    db.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .unwrap()
        .get(0)
}

/// Code of mallory's in SCHEMA that makes mallory a superuser when a superuser runs it, and
/// records who ran it.
fn evil_function() -> String {
    format!(
        "CREATE FUNCTION SCHEMA.evil() RETURNS boolean LANGUAGE plpgsql AS $$ {} $$;",
        evil_body("mallory", "true")
    )
}

/// In SCHEMA, the tables `json_data` and `process_instance` replaced by views that call
/// mallory's code (the tables stay, renamed, under the views).
const EVIL_VIEWS: &str = "
ALTER TABLE SCHEMA.json_data RENAME TO json_data_real;
CREATE VIEW SCHEMA.json_data AS SELECT * FROM SCHEMA.json_data_real WHERE SCHEMA.evil();
ALTER TABLE SCHEMA.process_instance RENAME TO process_instance_real;
CREATE VIEW SCHEMA.process_instance AS SELECT * FROM SCHEMA.process_instance_real WHERE SCHEMA.evil();
";

/// Who ran mallory's code with a superuser's privileges.
fn superuser_runs(db: &mut Client) -> Vec<String> {
    db.query(
        "SELECT l.by_role FROM public.evil_log l JOIN pg_roles r ON r.rolname = l.by_role
          WHERE r.rolsuper",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn an_attached_schemas_owner_cannot_make_a_superuser_run_its_code() {
    let (cluster, mut db) = start_app("atk-latest", false, &[], &bulk_sql(200));
    db.batch_execute(&format!(
        "CREATE ROLE mallory LOGIN;
         CREATE TABLE public.evil_log (by_role text);
         GRANT INSERT ON public.evil_log TO PUBLIC;
         {}
         {}
         UPDATE backfill.process_model
            SET metadata_extraction_paths = '[{{\"key\": \"number\", \"path\": \"invoice.number\"}}]'
          WHERE id = 'bulk/model';",
        spiff_grants("mallory"),
        app_tables("m", "mallory", false)
    ))
    .unwrap();
    let mut mallory = cluster.connect_as("mallory", "app");
    mallory
        .batch_execute("SELECT backfill.attach('m')")
        .unwrap();
    mallory
        .batch_execute(&format!("{}{EVIL_VIEWS}", evil_function()).replace("SCHEMA", "m"))
        .unwrap();

    // Every function of the extension that reads the attached tables, called by a superuser:
    // none reads a view in their place.
    let job: i64 = db
        .query_one("SELECT backfill.enqueue('bulk/model')", &[])
        .unwrap()
        .get(0);
    for call in [
        "SELECT backfill.latest_task_data(1)".to_owned(),
        "SELECT * FROM backfill.preview('bulk/model', '[{\"key\": \"k\", \"path\": \"a\"}]')"
            .to_owned(),
        "SELECT * FROM backfill.preview_summary('bulk/model', '[{\"key\": \"k\", \"path\": \"a\"}]')"
            .to_owned(),
        "SELECT backfill.count_coverage('bulk/model')".to_owned(),
        format!("CALL backfill.run({job})"),
    ] {
        let refused = db.batch_execute(&call).err();
        assert!(!is_superuser(&mut db, "mallory"), "{call} made mallory a superuser");
        assert_eq!(superuser_runs(&mut db), Vec::<String>::new(), "{call}");
        if !call.starts_with("CALL") {
            let refused = refused.unwrap_or_else(|| panic!("{call} read the views"));
            assert_eq!(sqlstate(&refused), "42809", "{call}: {refused}");
        }
    }
    assert_eq!(
        one_text(
            &mut db,
            &format!("SELECT state FROM backfill.job WHERE id = {job}")
        ),
        "failed"
    );

    // Tables a superuser owns, in a schema mallory comes to own after they were attached
    // (a schema's owner may drop whatever is in it): attaching them now is refused, and so is
    // reading them, before and after mallory puts a view in a table's place.
    db.batch_execute(&format!(
        "{}
         SELECT backfill.attach('m2');
         ALTER SCHEMA m2 OWNER TO mallory;",
        app_tables("m2", "postgres", false)
    ))
    .unwrap();
    let e = db
        .batch_execute("SELECT backfill.attach('m2')")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "attach: {e}");
    let e = db
        .batch_execute("SELECT backfill.latest_task_data(1)")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    mallory
        .batch_execute(&format!(
            "DROP TABLE m2.json_data;
             {}
             CREATE VIEW m2.json_data AS SELECT 'h'::text AS hash, '{{}}'::jsonb AS data WHERE m2.evil();",
            evil_function().replace("SCHEMA", "m2")
        ))
        .unwrap();
    let refused = db
        .batch_execute("SELECT backfill.latest_task_data(1)")
        .err();
    assert!(!is_superuser(&mut db, "mallory"));
    assert_eq!(superuser_runs(&mut db), Vec::<String>::new());
    let refused = refused.expect("latest_task_data read the view");
    assert!(
        ["42501", "42809"].contains(&sqlstate(&refused).as_str()),
        "{refused}"
    );
}

#[test]
fn an_attachment_never_sends_another_roles_job_to_its_owners_triggers() {
    let (cluster, mut db) = start_app("atk-redirect", true, &[], &bulk_sql(300));
    db.batch_execute(&format!(
        "CREATE ROLE alice LOGIN;
         CREATE ROLE bob LOGIN;
         {}
         {}
         {}
         CREATE TABLE public.bob_secret (secret text);
         INSERT INTO public.bob_secret VALUES ('the secret of bob');
         ALTER TABLE public.bob_secret OWNER TO bob;",
        spiff_grants("alice"),
        spiff_grants("bob"),
        app_tables("a", "alice", false)
    ))
    .unwrap();
    // alice opens her tables to everyone and puts a trigger on them that copies whatever the
    // writing role may read of bob's into a table of hers.
    let mut alice = cluster.connect_as("alice", "app");
    alice
        .batch_execute(
            "GRANT USAGE ON SCHEMA a TO PUBLIC;
             GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA a TO PUBLIC;
             CREATE TABLE a.loot (what text);
             GRANT INSERT ON a.loot TO PUBLIC;
             CREATE FUNCTION a.steal() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO a.loot SELECT secret FROM public.bob_secret;
                 RETURN NULL;
             EXCEPTION WHEN insufficient_privilege THEN
                 RETURN NULL;
             END $$;
             CREATE TRIGGER steal AFTER INSERT ON a.process_instance_metadata
                 FOR EACH STATEMENT EXECUTE FUNCTION a.steal();
             SELECT backfill.attach('a');",
        )
        .unwrap();

    // bob updates a model: the job he queues does not run on alice's tables as bob, and he is
    // told so when he queues it.
    let (mut bob, said) = cluster.connect_as_with_notices("bob", "app");
    let job = add_path(&mut bob, BULK, "number", "invoice.number");
    assert_eq!(ended(&mut db, job, Duration::from_secs(60)), "failed");
    let why = one_text(
        &mut db,
        &format!("SELECT last_error FROM backfill.job WHERE id = {job}"),
    );
    assert!(why.contains("42501") && why.contains("alice"), "{why}");
    let said = said.lock().unwrap().join("\n");
    assert!(
        said.contains(&format!("WARNING: backfill job {job} will fail")),
        "{said}"
    );
    assert_eq!(one_i64(&mut db, "SELECT count(*) FROM a.loot"), 0);
    assert_eq!(rows_in(&mut db, "a", "number"), 0);

    // alice's own job, and a superuser's (which runs as alice, the tables' owner), fill them.
    let job = add_path(&mut alice, BULK, "status", "invoice.status");
    assert_eq!(ended(&mut db, job, Duration::from_secs(60)), "succeeded");
    let job: i64 = db
        .query_one(
            "SELECT backfill.enqueue('bulk/model', ARRAY['number'])",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ended(&mut db, job, Duration::from_secs(60)), "succeeded");
    let instances = one_i64(
        &mut db,
        "SELECT count(*) FROM a.process_instance WHERE process_model_identifier = 'bulk/model'",
    );
    assert_eq!(rows_in(&mut db, "a", "status"), instances);
    assert_eq!(rows_in(&mut db, "a", "number"), instances);
    assert_eq!(one_i64(&mut db, "SELECT count(*) FROM a.loot"), 0);
}

#[test]
fn triggers_on_the_partitions_of_an_attached_metadata_table_fire_for_the_worker() {
    let (_cluster, mut db) = start_app("atk-partitions", true, &[], &bulk_sql(1_500));
    db.batch_execute(&format!(
        "{}
         CREATE TABLE p.audit (process_instance_id bigint, key text);
         CREATE FUNCTION p.guard() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.key = 'guarded' THEN
                 RAISE EXCEPTION 'key guarded is refused';
             END IF;
             RETURN NEW;
         END $$;
         CREATE FUNCTION p.audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO p.audit VALUES (NEW.process_instance_id, NEW.key);
             RETURN NULL;
         END $$;
         CREATE TRIGGER guard BEFORE INSERT ON p.process_instance_metadata_0
             FOR EACH ROW EXECUTE FUNCTION p.guard();
         CREATE TRIGGER guard BEFORE INSERT ON p.process_instance_metadata_1
             FOR EACH ROW EXECUTE FUNCTION p.guard();
         CREATE TRIGGER audit AFTER INSERT ON p.process_instance_metadata_0
             FOR EACH ROW EXECUTE FUNCTION p.audit_row();
         CREATE TRIGGER audit AFTER INSERT ON p.process_instance_metadata_1
             FOR EACH ROW EXECUTE FUNCTION p.audit_row();
         SELECT backfill.attach('p');",
        app_tables("p", "postgres", true)
    ))
    .unwrap();
    let instances = one_i64(
        &mut db,
        "SELECT count(*) FROM p.process_instance WHERE process_model_identifier = 'bulk/model'",
    );

    let guarded = add_path(&mut db, BULK, "guarded", "invoice.number");
    assert_eq!(
        ended(&mut db, guarded, Duration::from_secs(120)),
        "succeeded"
    );
    assert_eq!(rows_in(&mut db, "p", "guarded"), 0);
    assert_eq!(
        one_i64(
            &mut db,
            &format!("SELECT errors FROM backfill.progress WHERE id = {guarded}")
        ),
        instances
    );

    let audited = add_path(&mut db, BULK, "audited", "invoice.number");
    assert_eq!(
        ended(&mut db, audited, Duration::from_secs(120)),
        "succeeded"
    );
    assert_eq!(rows_in(&mut db, "p", "audited"), instances);
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM p.audit WHERE key = 'audited'"
        ),
        instances
    );
}

#[test]
fn a_role_that_can_only_connect_cannot_hold_a_job_back() {
    let (cluster, mut db) = start_app("atk-runlock", true, &[], &bulk_sql(2_000));
    db.batch_execute("CREATE ROLE nobody LOGIN").unwrap();
    // Every advisory lock SQL can take that could stand for jobs 1 to 100 (the job and its
    // parts): two int4 keys (the job table's OID and the id, or the id's halves) and one int8.
    let mut nobody = cluster.connect_as("nobody", "app");
    nobody
        .batch_execute(
            "SELECT pg_advisory_lock(c.oid::bigint::int, id::int), pg_advisory_lock(0, id::int),
                    pg_advisory_lock(id), pg_advisory_lock(c.oid::bigint << 32 | id)
               FROM pg_class c, generate_series(1, 100) AS id
              WHERE c.relname = 'job'
                AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'backfill')",
        )
        .unwrap();
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(ended(&mut db, job, Duration::from_secs(60)), "succeeded");
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance_metadata WHERE key = 'number'"
        ),
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_instance WHERE process_model_identifier = 'bulk/model'"
        )
    );
    // CALL backfill.run of a job is not refused because of nobody's locks either.
    let job = add_path(&mut db, BULK, "status", "invoice.status");
    let _ = db.batch_execute(&format!("CALL backfill.run({job})"));
    assert_eq!(ended(&mut db, job, Duration::from_secs(60)), "succeeded");
}

/// DROP DATABASE app, which fails while any session (a worker) is connected to it.
fn drop_app(cluster: &Cluster) {
    let mut admin = cluster.connect("postgres");
    wait_for("DROP DATABASE app", Duration::from_secs(30), || {
        admin.batch_execute("DROP DATABASE app").ok()
    });
}

#[test]
fn a_database_owners_role_setting_does_not_stop_the_worker() {
    let (cluster, mut db) = start_app(
        "atk-role",
        true,
        &["backfill.naptime = '200ms'"],
        &bulk_sql(500),
    );
    db.batch_execute("CREATE ROLE mallory LOGIN; ALTER DATABASE app OWNER TO mallory")
        .unwrap();
    let mut mallory = cluster.connect_as("mallory", "app");
    mallory
        .batch_execute(
            "ALTER DATABASE app SET role = 'mallory';
             ALTER DATABASE app SET session_authorization = 'mallory';",
        )
        .unwrap();
    // Sessions that connect from now on are mallory; `db`, older, is still the superuser.
    assert_eq!(
        one_text(&mut cluster.connect("app"), "SELECT current_user::text"),
        "mallory"
    );
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(ended(&mut db, job, Duration::from_secs(60)), "succeeded");
    assert_eq!(
        one_text(
            &mut db,
            &format!("SELECT queued_by::text FROM backfill.job WHERE id = {job}")
        ),
        "postgres"
    );
    no_worker_left(&mut db);
    drop((db, mallory));
    drop_app(&cluster);
}

#[test]
fn a_job_held_until_infinity_is_refused_and_never_keeps_a_worker() {
    let (cluster, mut db) = start_app(
        "atk-infinity",
        true,
        &["backfill.naptime = '200ms'"],
        &bulk_sql(300),
    );
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(ended(&mut db, job, Duration::from_secs(60)), "succeeded");
    let e = db
        .query_one(
            "SELECT backfill.enqueue('bulk/model', NULL, false, 'infinity')",
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "{e}");
    // -infinity holds nothing back.
    let job: i64 = db
        .query_one(
            "SELECT backfill.enqueue('bulk/model', NULL, true, '-infinity')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ended(&mut db, job, Duration::from_secs(60)), "succeeded");

    // A job held until infinity as 0.5.0 let it be: the workers still leave.
    let held: i64 = db
        .query_one(
            "SELECT backfill.enqueue('bulk/model', NULL, true, now() + interval '1 hour')",
            &[],
        )
        .unwrap()
        .get(0);
    db.execute(
        "UPDATE backfill.job SET not_before = 'infinity' WHERE id = $1",
        &[&held],
    )
    .unwrap();
    let next: i64 = db
        .query_one("SELECT backfill.enqueue('bulk/model', NULL, true)", &[])
        .unwrap()
        .get(0);
    assert_eq!(ended(&mut db, next, Duration::from_secs(60)), "succeeded");
    no_worker_left(&mut db);
    assert_eq!(
        one_text(
            &mut db,
            &format!("SELECT waiting_for FROM backfill.progress WHERE id = {held}")
        ),
        "not_before"
    );
    drop(db);
    drop_app(&cluster);
}

#[test]
fn coverage_is_counted_and_shown_per_role() {
    let (cluster, mut db) = start_app("atk-coverage", false, &[], &bulk_sql(400));
    db.batch_execute(
        "CREATE ROLE reader LOGIN;
         CREATE ROLE outsider LOGIN;
         GRANT USAGE ON SCHEMA backfill TO reader, outsider;
         GRANT SELECT ON backfill.coverage, backfill.process_model TO reader, outsider;
         GRANT EXECUTE ON FUNCTION backfill.count_coverage(text) TO reader, outsider;
         GRANT SELECT ON backfill.process_instance, backfill.process_instance_metadata TO reader;
         ALTER TABLE backfill.process_instance ENABLE ROW LEVEL SECURITY;
         CREATE POLICY even ON backfill.process_instance FOR SELECT TO reader USING (id % 2 = 0);",
    )
    .unwrap();
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    // (A worker may have taken it first: then CALL says so, and the worker runs it.)
    let _ = db.batch_execute(&format!("CALL backfill.run({job})"));
    let all = one_i64(
        &mut db,
        "SELECT count(*) FROM backfill.process_instance WHERE process_model_identifier = 'bulk/model'",
    );
    let even = one_i64(
        &mut db,
        "SELECT count(*) FROM backfill.process_instance
          WHERE process_model_identifier = 'bulk/model' AND id % 2 = 0",
    );
    let seen = |client: &mut Client| -> Option<i64> {
        client
            .query_one(
                "SELECT instances FROM backfill.coverage WHERE model = 'bulk/model' AND key = 'number'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!(seen(&mut db), Some(all));
    // A role under row-level security does not read what the superuser's count saw, and its
    // own count changes nothing the superuser reads.
    let mut reader = cluster.connect_as("reader", "app");
    assert_eq!(seen(&mut reader), None);
    reader
        .batch_execute("SELECT backfill.count_coverage('bulk/model')")
        .unwrap();
    assert_eq!(seen(&mut reader), Some(even));
    assert_eq!(seen(&mut db), Some(all));
    // A role that may not read the tables reads no count, and cannot make one.
    let mut outsider = cluster.connect_as("outsider", "app");
    assert_eq!(seen(&mut outsider), None);
    let e = outsider
        .batch_execute("SELECT backfill.count_coverage('bulk/model')")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    assert_eq!(seen(&mut outsider), None);
    assert_eq!(seen(&mut db), Some(all));
}

#[test]
fn one_bad_model_never_aborts_a_sync() {
    let (cluster, mut db) = start_app("atk-sync", false, &[], "");
    // An id too long for the primary key's index, next to a good model.
    let actions: Vec<(String, String)> = db
        .query(
            "SELECT left(id, 20), action FROM backfill.sync_process_models(jsonb_build_array(
                 jsonb_build_object('id', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 250) i)),
                 jsonb_build_object('id', 'ok/one')))",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(
        actions[0].1.starts_with("rejected: index row size"),
        "{actions:?}"
    );
    assert_eq!(actions[1], ("ok/one".to_owned(), "inserted".to_owned()));

    // A model file holding \u0000, which jsonb cannot hold, between two good ones.
    let spec = cluster.dir.join("spec");
    write(&spec.join("a/process_model.json"), &model_json("A", &[]));
    write(
        &spec.join("b/process_model.json"),
        r#"{"display_name": "nul \u0000 here", "metadata_extraction_paths": []}"#,
    );
    write(
        &spec.join("c/process_model.json"),
        &model_json("C", &[("k", "x")]),
    );
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        cluster.port
    );
    let spec_arg = spec.to_str().unwrap();
    for run in 0..2 {
        let (code, out, err) = run_sync(&["--dsn", &dsn, spec_arg], &[]);
        assert_eq!(code, Some(1), "{out}{err}");
        let lines: Vec<&str> = out.lines().collect();
        let expected = if run == 0 { 3 } else { 1 };
        assert_eq!(lines.len(), expected, "{out}");
        assert!(
            lines.iter().any(|l| l.starts_with("rejected  b: ")),
            "{out}"
        );
        if run == 0 {
            assert!(
                lines.contains(&"inserted  a") && lines.contains(&"inserted  c"),
                "{out}"
            );
        }
    }
    assert_eq!(
        one_i64(
            &mut db,
            "SELECT count(*) FROM backfill.process_model WHERE id IN ('a', 'c')"
        ),
        2
    );
}

#[test]
fn an_attachment_records_the_role_that_made_it() {
    let (cluster, mut db) = start_app("atk-attached-by", false, &[], &bulk_sql(50));
    db.batch_execute(&format!(
        "CREATE ROLE spiff LOGIN;
         CREATE ROLE other LOGIN;
         {}
         {}
         {}",
        spiff_grants("spiff"),
        spiff_grants("other"),
        app_tables("s", "spiff", false)
    ))
    .unwrap();
    let mut spiff = cluster.connect_as("spiff", "app");
    spiff.batch_execute("SELECT backfill.attach('s')").unwrap();
    assert_eq!(
        one_text(&mut db, "SELECT attached_by::text FROM backfill.attachment"),
        "spiff"
    );
    let mut other = cluster.connect_as("other", "app");
    let e = other.batch_execute("SELECT backfill.detach()").unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or_default();
    assert_eq!(hint, "They were attached by spiff.");
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// Files below `dir` whose content holds `needle`.
fn files_holding(dir: &Path, needle: &str, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
        if kind.is_dir() {
            files_holding(&path, needle, found);
        } else if kind.is_file()
            && String::from_utf8_lossy(&std::fs::read(&path).unwrap()).contains(needle)
        {
            found.push(path);
        }
    }
}

/// A git repository of process models beside the cluster, with bulk/model (no paths yet)
/// committed.
fn spec_repository(cluster: &Cluster) -> std::path::PathBuf {
    let spec = cluster.dir.join("spec");
    write(
        &spec.join("bulk/model/process_model.json"),
        &model_json("Bulk", &[]),
    );
    git(&spec, &["init", "-q"]);
    git(&spec, &["add", "-A"]);
    git(&spec, &["commit", "-q", "-m", "models"]);
    spec
}

#[test]
fn the_git_hook_keeps_the_password_off_command_lines_and_out_of_other_files() {
    let (cluster, mut db) = start_app("atk-hook", false, &[], &bulk_sql(20));
    let spec = spec_repository(&cluster);
    let secret = "s3cret-pw";
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app password={secret}",
        cluster.port
    );
    let spec_arg = spec.to_str().unwrap();

    // A hook of an earlier install, hard-linked to a file elsewhere: installing writes a file
    // of its own, never into that one.
    let hook = spec.join(".git/hooks/post-commit");
    let elsewhere = cluster.dir.join("elsewhere");
    let old = "#!/bin/sh\n# installed by backfill-sync-models: an earlier one\n";
    std::fs::write(&elsewhere, old).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::hard_link(&elsewhere, &hook).unwrap();
    let (code, out, err) = run_sync(&["--install-git-hook", "--dsn", &dsn, spec_arg], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), old);
    assert_eq!(mode(&elsewhere), 0o644);

    // The hook runs the command without the password on its command line; the password is in
    // a file only its owner may read.
    let script = std::fs::read_to_string(&hook).unwrap();
    assert!(!script.contains(secret), "{script}");
    assert_eq!(mode(&hook), 0o700);
    let mut holding = Vec::new();
    files_holding(&spec, secret, &mut holding);
    assert!(!holding.is_empty());
    for file in &holding {
        assert_eq!(
            mode(file) & 0o077,
            0,
            "{} is readable by others",
            file.display()
        );
    }

    // It works: a commit that adds a path queues a job.
    let jobs = one_i64(&mut db, "SELECT count(*) FROM backfill.job");
    write(
        &spec.join("bulk/model/process_model.json"),
        &model_json("Bulk", &[("number", "invoice.number")]),
    );
    git(&spec, &["commit", "-q", "-a", "-m", "add number"]);
    assert_eq!(
        one_i64(&mut db, "SELECT count(*) FROM backfill.job"),
        jobs + 1
    );

    // A symbolic link in the hook's place is not followed.
    std::fs::remove_file(&hook).unwrap();
    let target = cluster.dir.join("target");
    std::fs::write(&target, old).unwrap();
    std::os::unix::fs::symlink(&target, &hook).unwrap();
    let (code, out, err) = run_sync(&["--install-git-hook", "--dsn", &dsn, spec_arg], &[]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), old);
}

// Round 3: every object whose code PostgreSQL runs on a read or a write has an owner, and the
// extension's own install must trust no schema it did not make.

/// The message of a server error.
fn message(e: &postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |db| db.message().to_owned())
}

/// A plpgsql body that logs who ran it and tries to make ROLE a superuser.
fn evil_body(role: &str, returns: &str) -> String {
    format!(
        "BEGIN
             INSERT INTO public.evil_log VALUES (current_user);
             BEGIN
                 EXECUTE 'ALTER ROLE {role} SUPERUSER';
             EXCEPTION WHEN OTHERS THEN NULL;
             END;
             RETURN {returns};
         END"
    )
}

/// H1: the application role owns the database and makes schema backfill before a superuser
/// installs the extension, then plants overloads of the extension's internal functions that
/// a call with loosely typed arguments resolves to. On 0.6.0 the install went into app's
/// schema, and the next model update ran app's job_insert(..., oid) as the bootstrap
/// superuser.
#[test]
fn a_schema_made_before_the_install_is_refused_and_no_overload_captures_a_call() {
    let cluster = Cluster::start("atk-preschema", &[]);
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("CREATE ROLE app LOGIN").unwrap();
    admin
        .batch_execute("CREATE DATABASE app OWNER app")
        .unwrap();
    let mut app = cluster.connect_as("app", "app");
    app.batch_execute("CREATE SCHEMA backfill").unwrap();
    let mut db = cluster.connect("app");
    let e = db.batch_execute("CREATE EXTENSION backfill").unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    assert!(message(&e).contains("owned by role \"app\""), "{e}");

    // A superuser's schema in which app, or PUBLIC, may create objects: refused as well.
    app.batch_execute("DROP SCHEMA backfill").unwrap();
    for grantee in ["app", "PUBLIC"] {
        db.batch_execute(&format!(
            "CREATE SCHEMA backfill; GRANT CREATE ON SCHEMA backfill TO {grantee}"
        ))
        .unwrap();
        let e = db.batch_execute("CREATE EXTENSION backfill").unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{grantee}: {e}");
        assert!(message(&e).contains(&format!("\"{grantee}\"")), "{e}");
        db.batch_execute("DROP SCHEMA backfill").unwrap();
    }
    // The schema CREATE EXTENSION makes, or a superuser's that only superusers create in.
    db.batch_execute("CREATE SCHEMA backfill; CREATE EXTENSION backfill")
        .unwrap();
    db.batch_execute(&format!(
        "DROP EXTENSION backfill; CREATE EXTENSION backfill;
         {}
         {}",
        bulk_sql(300),
        spiff_grants("app")
    ))
    .unwrap();

    // Were app ever let create in the schema (a DBA's grant), an overload of each internal
    // function with the types a loosely typed call would prefer catches nothing: every call is
    // schema-qualified with its exact types.
    db.batch_execute(
        "CREATE TABLE public.evil_log (by_role text);
         GRANT INSERT ON public.evil_log TO PUBLIC;
         GRANT CREATE ON SCHEMA backfill TO app;",
    )
    .unwrap();
    let overloads = [
        ("job_insert(text, jsonb, boolean, text, oid)", "bigint", "1"),
        (
            "job_insert(text, jsonb, boolean, text, integer)",
            "bigint",
            "1",
        ),
        (
            "job_insert(varchar, jsonb, boolean, varchar, oid)",
            "bigint",
            "1",
        ),
        ("job_hold(bigint, timestamp)", "void", ""),
        ("job_start(integer, integer, integer)", "void", ""),
        ("job_fail(bigint, varchar)", "void", ""),
        ("job_settle(integer)", "boolean", "true"),
        ("job_finish(integer)", "record", "NULL"),
        (
            "coverage_record(text, text[], bigint[], bigint[], bigint[], oid)",
            "void",
            "",
        ),
        ("attachment_set(oid, oid)", "void", ""),
        ("extract_values(anyelement, text[])", "text[]", "NULL"),
        ("extract_values(jsonb, varchar[])", "text[]", "NULL"),
    ];
    for (signature, returns, value) in overloads {
        app.batch_execute(&format!(
            "CREATE FUNCTION backfill.{signature} RETURNS {returns} LANGUAGE plpgsql AS $$ {} $$",
            evil_body("app", value)
        ))
        .unwrap_or_else(|e| panic!("planting {signature}: {}", message(&e)));
    }
    // Every internal call the extension makes: a job queued by a model update and by
    // enqueue, run by a worker to its end with its coverage counted, an attach and a detach.
    let nobody_ran = |db: &mut Client, when: &str| {
        assert!(!is_superuser(db, "app"), "app became a superuser {when}");
        let ran = one_i64(db, "SELECT count(*) FROM public.evil_log");
        assert_eq!(ran, 0, "an overload of app's ran {when}");
    };
    db.batch_execute(
        "UPDATE backfill.process_model
            SET metadata_extraction_paths = '[{\"key\": \"number\", \"path\": \"invoice.number\"}]'
          WHERE id = 'bulk/model'",
    )
    .unwrap();
    nobody_ran(&mut db, "when a model update queued a job");
    let job = one_i64(&mut db, "SELECT coalesce(max(id), 0) FROM backfill.job");
    assert_eq!(ended(&mut db, job, Duration::from_secs(120)), "succeeded");
    let job: i64 = db
        .query_one(
            "SELECT backfill.enqueue('bulk/model', overwrite => true)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ended(&mut db, job, Duration::from_secs(120)), "succeeded");
    db.batch_execute(
        "SELECT backfill.wait(max(id)) FROM backfill.job;
         SELECT backfill.count_coverage('bulk/model');
         SELECT backfill.attach('backfill'); SELECT backfill.detach();",
    )
    .unwrap();
    nobody_ran(&mut db, "while jobs ran");
    assert_eq!(rows_in(&mut db, "backfill", "number"), 300);
}

/// Tables a superuser owns and attached, in schema s, with `shared`, a schema typeowner may
/// create in, and the log of who ran typeowner's code.
fn superusers_tables_and_typeowner(db: &mut Client) {
    db.batch_execute(&format!(
        "CREATE ROLE typeowner LOGIN;
         CREATE TABLE public.evil_log (by_role text);
         GRANT INSERT ON public.evil_log TO PUBLIC;
         CREATE SCHEMA shared;
         GRANT USAGE, CREATE ON SCHEMA shared TO typeowner;
         {}
         SELECT backfill.attach('s');",
        app_tables("s", "postgres", false)
    ))
    .unwrap();
}

/// H2: the metadata column of a superuser's tables is of a domain that typeowner owns, a role
/// that controls no table; typeowner adds a CHECK calling its own function to the domain. On
/// 0.6.0 the superuser's next model update ran that function as superuser once a row.
#[test]
fn a_domain_on_a_superusers_tables_never_runs_its_owners_check_as_the_superuser() {
    let (cluster, mut db) = start_app("atk-domain", true, &[], &bulk_sql(300));
    superusers_tables_and_typeowner(&mut db);
    db.batch_execute(
        "CREATE DOMAIN shared.meta AS varchar(255);
         ALTER DOMAIN shared.meta OWNER TO typeowner;
         ALTER TABLE s.process_instance_metadata ALTER COLUMN value TYPE shared.meta;",
    )
    .unwrap();
    let mut typeowner = cluster.connect_as("typeowner", "app");
    typeowner
        .batch_execute(&format!(
            "CREATE FUNCTION shared.chk(v text) RETURNS boolean LANGUAGE plpgsql AS $$ {} $$;
             ALTER DOMAIN shared.meta ADD CHECK (shared.chk(VALUE));",
            evil_body("typeowner", "true")
        ))
        .unwrap();

    let job = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(ended(&mut db, job, Duration::from_secs(120)), "failed");
    let last_error = one_text(
        &mut db,
        &format!("SELECT last_error FROM backfill.job WHERE id = {job}"),
    );
    // The first of typeowner's objects named: the domain or the function its CHECK calls.
    assert!(
        last_error.contains("typeowner")
            && (last_error.contains("type shared.meta") || last_error.contains("shared.chk")),
        "{last_error}"
    );
    // The functions that read the tables refuse too, naming the domain and its owner.
    for call in [
        "SELECT backfill.attach('s')",
        "SELECT backfill.latest_task_data(1)",
        "SELECT * FROM backfill.preview('bulk/model', '[{\"key\": \"k\", \"path\": \"a\"}]')",
        "SELECT * FROM backfill.preview_summary('bulk/model', '[{\"key\": \"k\", \"path\": \"a\"}]')",
        "SELECT backfill.count_coverage('bulk/model')",
    ] {
        let e = db.batch_execute(call).unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{call}: {e}");
        let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or_default();
        assert!(
            hint.contains("typeowner")
                && (hint.contains("type shared.meta") || hint.contains("shared.chk")),
            "{call}: {hint}"
        );
    }
    assert!(!is_superuser(&mut db, "typeowner"));
    assert_eq!(superuser_runs(&mut db), Vec::<String>::new());
    assert_eq!(rows_in(&mut db, "s", "number"), 0);
}

/// Once a job has written its first rows: a session of its own holding `table` locked in
/// `mode` in an open transaction, returned when a worker's batch waits for that lock (so that
/// what the session commits next lands while no batch is in flight).
fn locked_while_a_batch_waits(
    cluster: &Cluster,
    db: &mut Client,
    table: &str,
    mode: &str,
) -> Client {
    let schema = table.split('.').next().unwrap();
    wait_for("the job's first batches", Duration::from_secs(60), || {
        (rows_in(db, schema, "number") > 0).then_some(())
    });
    let mut session = cluster.connect("app");
    session
        .batch_execute(&format!("BEGIN; LOCK TABLE {table} IN {mode} MODE"))
        .unwrap();
    let waiting = format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
          WHERE NOT l.granted AND a.backend_type = 'backfill worker'
            AND l.relation = '{table}'::regclass"
    );
    wait_for(
        "a batch to wait for the lock",
        Duration::from_secs(60),
        || (one_i64(db, &waiting) > 0).then_some(()),
    );
    session
}

/// H2, the trigger, and the cache: a superuser's trigger function on its tables, given to
/// typeowner and rewritten by it while a job runs. The extension remembers what runs on the
/// tables between batches; the function's new owner must reach the next batch's check.
#[test]
fn a_trigger_function_given_away_during_a_job_never_runs_as_the_superuser() {
    let (cluster, mut db) = start_app(
        "atk-trigger-fn",
        true,
        &["backfill.batch_size = 20", "backfill.batch_delay = 50"],
        &bulk_sql(2_000),
    );
    superusers_tables_and_typeowner(&mut db);
    db.batch_execute(
        "CREATE FUNCTION shared.note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER note BEFORE INSERT ON s.process_instance_metadata
             FOR EACH ROW EXECUTE FUNCTION shared.note();",
    )
    .unwrap();
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    // Given away while no batch is in flight: a batch waits for the lock, then finds the
    // function's new owner.
    let mut giver =
        locked_while_a_batch_waits(&cluster, &mut db, "s.process_instance_metadata", "SHARE");
    giver
        .batch_execute(&format!(
            "ALTER FUNCTION shared.note() OWNER TO typeowner;
             SET ROLE typeowner;
             CREATE OR REPLACE FUNCTION shared.note() RETURNS trigger LANGUAGE plpgsql AS $$ {} $$;
             RESET ROLE;
             COMMIT;",
            evil_body("typeowner", "NEW")
        ))
        .unwrap();
    assert_eq!(ended(&mut db, job, Duration::from_secs(120)), "failed");
    let last_error = one_text(
        &mut db,
        &format!("SELECT last_error FROM backfill.job WHERE id = {job}"),
    );
    assert!(
        last_error.contains("function shared.note()"),
        "{last_error}"
    );
    assert!(!is_superuser(&mut db, "typeowner"));
    assert_eq!(superuser_runs(&mut db), Vec::<String>::new());
    assert_eq!(one_i64(&mut db, "SELECT count(*) FROM public.evil_log"), 0);
}

/// H3: during a superuser's job that reads as spiff (the tables' owner), spiff's task table is
/// handed to attacker, who puts a policy calling its own function on it, in one commit made
/// while the job's batch waits for its lock. On 0.6.0 the check after the lock read the
/// catalogs with the snapshot taken before it, and one batch ran the policy 100 times as spiff.
#[test]
fn a_handover_committed_while_a_batch_waits_for_its_lock_is_seen_by_its_check() {
    let (cluster, mut db) = start_app(
        "atk-handover",
        true,
        &["backfill.batch_size = 20", "backfill.batch_delay = 50"],
        &bulk_sql(2_000),
    );
    db.batch_execute(&format!(
        "CREATE ROLE spiff LOGIN;
         CREATE ROLE attacker LOGIN;
         CREATE SCHEMA attacker AUTHORIZATION attacker;
         CREATE TABLE public.evil_log (by_role text);
         GRANT INSERT ON public.evil_log TO PUBLIC;
         {}
         {}",
        spiff_grants("spiff"),
        app_tables("spiffa", "spiff", false)
    ))
    .unwrap();
    cluster
        .connect_as("spiff", "app")
        .batch_execute("SELECT backfill.attach('spiffa'); GRANT USAGE ON SCHEMA spiffa TO attacker")
        .unwrap();
    // Queued by a superuser: it reads as spiff, whose tables they are.
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    let mut controller =
        locked_while_a_batch_waits(&cluster, &mut db, "spiffa.task", "ACCESS EXCLUSIVE");
    controller
        .batch_execute(&format!(
            "ALTER TABLE spiffa.task OWNER TO attacker;
             SET ROLE attacker;
             CREATE FUNCTION attacker.spy() RETURNS boolean LANGUAGE plpgsql AS $$ {} $$;
             GRANT SELECT ON spiffa.task TO spiff;
             CREATE POLICY spy ON spiffa.task USING (attacker.spy());
             ALTER TABLE spiffa.task ENABLE ROW LEVEL SECURITY;
             RESET ROLE;
             COMMIT;",
            evil_body("attacker", "true")
        ))
        .unwrap();
    assert_eq!(ended(&mut db, job, Duration::from_secs(120)), "failed");
    let last_error = one_text(
        &mut db,
        &format!("SELECT last_error FROM backfill.job WHERE id = {job}"),
    );
    assert!(last_error.contains("attacker"), "{last_error}");
    assert_eq!(
        one_i64(&mut db, "SELECT count(*) FROM public.evil_log"),
        0,
        "attacker's policy ran"
    );
}

/// H4: a role that may only connect names its session pg_restore. On 0.6.0 every job of the
/// database was held while it stayed: a new job stayed queued.
#[test]
fn a_session_named_pg_restore_holds_jobs_only_when_its_role_could_restore() {
    let (cluster, mut db) = start_app(
        "atk-restore-name",
        true,
        &["backfill.batch_size = 20", "backfill.batch_delay = 20"],
        &bulk_sql(2_000),
    );
    db.batch_execute("CREATE ROLE nobody LOGIN").unwrap();
    let mut nobody = cluster.connect_as("nobody", "app");
    nobody
        .batch_execute("SET application_name = 'pg_restore'")
        .unwrap();
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(ended(&mut db, job, Duration::from_secs(120)), "succeeded");
    assert_eq!(rows_in(&mut db, "backfill", "number"), 2_000);
    // A superuser's session of that name is a restore: a running job stops at a batch
    // boundary until it is gone.
    let job = add_path(&mut db, BULK, "status", "invoice.status");
    wait_for("the job to be under way", Duration::from_secs(60), || {
        (rows_in(&mut db, "backfill", "status") > 0).then_some(())
    });
    let mut restore = cluster.connect("app");
    restore
        .batch_execute("SET application_name = 'pg_restore'")
        .unwrap();
    // (The job, or a part of it when it was split.)
    let stops = "stops at a batch boundary: pg_restore is restoring this database";
    wait_for(
        "the job to stop for the restore",
        Duration::from_secs(60),
        || cluster.log().contains(stops).then_some(()),
    );
    drop(restore);
    assert_eq!(ended(&mut db, job, Duration::from_secs(120)), "succeeded");
    assert_eq!(rows_in(&mut db, "backfill", "status"), 2_000);
    drop(nobody);
}

/// H7: a CHECK constraint on the metadata table calls a function that writes another table,
/// whose BEFORE trigger fills a column. On 0.6.0 the worker's fast path ran the batch in
/// replica mode, and that trigger was skipped for every row it wrote.
#[test]
fn replica_mode_never_skips_a_trigger_that_code_on_the_tables_fires() {
    let (_cluster, mut db) = start_app("atk-replica", true, &[], &bulk_sql(1_000));
    db.batch_execute(
        "CREATE TABLE public.written (process_instance_id bigint, seen boolean NOT NULL DEFAULT false);
         CREATE FUNCTION public.mark_seen() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN NEW.seen := true; RETURN NEW; END $$;
         CREATE TRIGGER mark_seen BEFORE INSERT ON public.written
             FOR EACH ROW EXECUTE FUNCTION public.mark_seen();
         CREATE FUNCTION public.record(id bigint) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.written (process_instance_id) VALUES (id); RETURN true; END $$;
         ALTER TABLE backfill.process_instance_metadata
             ADD CONSTRAINT recorded CHECK (public.record(process_instance_id));",
    )
    .unwrap();
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(ended(&mut db, job, Duration::from_secs(120)), "succeeded");
    let rows = rows_in(&mut db, "backfill", "number");
    assert_eq!(rows, 1_000);
    assert_eq!(
        one_i64(&mut db, "SELECT count(*) FROM public.written WHERE seen"),
        rows,
        "the BEFORE trigger on public.written was skipped"
    );
}

/// H8: sessions of a role that may only connect, blocked on an advisory lock, use no CPU. On
/// 0.6.0 the throttle counted them as load and paused every worker about three times its
/// batches' time.
#[test]
fn sessions_waiting_on_a_lock_are_no_load_for_the_throttle() {
    // One worker a job: the throttle's log line is the job's own.
    let (cluster, mut db) = start_app(
        "atk-throttle",
        true,
        &["backfill.workers_per_job = 1"],
        &bulk_sql(4_000),
    );
    db.batch_execute("CREATE ROLE nobody LOGIN").unwrap();
    let mut holder = cluster.connect_as("nobody", "app");
    holder.batch_execute("SELECT pg_advisory_lock(42)").unwrap();
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let mut waiter = cluster.connect_as("nobody", "app");
            std::thread::spawn(move || {
                let _ = waiter
                    .batch_execute("SET statement_timeout = '3min'; SELECT pg_advisory_lock(42)");
            })
        })
        .collect();
    wait_for("four sessions waiting", Duration::from_secs(30), || {
        (one_i64(
            &mut db,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND usename = 'nobody'",
        ) == 4)
            .then_some(())
    });
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(ended(&mut db, job, Duration::from_secs(120)), "succeeded");
    let (working, paused) = throttle_of(&cluster, job);
    assert!(
        paused < 0.25 * working,
        "paused {paused} s after batches of {working} s with only sessions waiting on a lock"
    );
    holder
        .batch_execute("SELECT pg_advisory_unlock(42)")
        .unwrap();
    drop(holder);
    for waiter in waiters {
        waiter.join().unwrap();
    }
}

/// H6: the hook was installed with verify-full from the environment (PGSSLMODE,
/// PGSSLROOTCERT). On 0.6.0 it kept neither: a commit from a plain shell connected with
/// sslmode=prefer, which sends the password to a server that offers no TLS.
#[test]
fn the_git_hook_keeps_the_tls_settings_it_was_installed_with() {
    let (cluster, mut db) = start_app("atk-hook-tls", false, &[], &bulk_sql(20));
    let spec = spec_repository(&cluster);
    let spec_arg = spec.to_str().unwrap();
    let root = cluster.dir.join("no-such-root.crt");
    let tls = [
        ("PGSSLMODE", "verify-full".to_owned()),
        ("PGSSLROOTCERT", root.to_str().unwrap().to_owned()),
    ];
    let dsn_file = spec.join(".git/backfill-sync-models.dsn");

    // A URI keeps its own settings (as libpq reads them, written key=value) and gains the
    // environment's.
    let uri = format!("postgresql://127.0.0.1:{}/app?user=postgres", cluster.port);
    let (_, out, err) = run_sync(&["--install-git-hook", "--dsn", &uri, spec_arg], &tls);
    assert!(err.contains("installed"), "{out}{err}");
    let kept = std::fs::read_to_string(&dsn_file).unwrap();
    assert!(
        kept.contains("user='postgres'")
            && kept.contains("host='127.0.0.1'")
            && kept.contains(&format!("port='{}'", cluster.port))
            && kept.contains("dbname='app'")
            && kept.contains("sslmode='verify-full'"),
        "{kept}"
    );

    // The server here offers no TLS: the install's own sync is refused, as it must be; what
    // matters is what the hook keeps.
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        cluster.port
    );
    let (_, out, err) = run_sync(&["--install-git-hook", "--dsn", &dsn, spec_arg], &tls);
    assert!(err.contains("installed"), "{out}{err}");
    let kept = std::fs::read_to_string(&dsn_file).unwrap();
    assert!(
        kept.contains("sslmode='verify-full'") && kept.contains("no-such-root.crt"),
        "{kept}"
    );
    assert_eq!(mode(&dsn_file) & 0o077, 0);

    // A commit from a shell without those variables: the hook still demands verify-full, so
    // it does not connect, and nothing is synced.
    let jobs = one_i64(&mut db, "SELECT count(*) FROM backfill.job");
    write(
        &spec.join("bulk/model/process_model.json"),
        &model_json("Bulk", &[("number", "invoice.number")]),
    );
    git(&spec, &["commit", "-q", "-a", "-m", "add number"]);
    assert_eq!(one_i64(&mut db, "SELECT count(*) FROM backfill.job"), jobs);
    assert_eq!(
        one_text(
            &mut db,
            "SELECT metadata_extraction_paths::text FROM backfill.process_model WHERE id = 'bulk/model'"
        ),
        "[]"
    );

    // Every setting libpq takes from its environment is kept, a client certificate too.
    let (_, out, err) = run_sync(
        &["--install-git-hook", "--dsn", &dsn, spec_arg],
        &[("PGSSLCERT", "/etc/client.crt".to_owned())],
    );
    assert!(err.contains("installed"), "{out}{err}");
    let kept = std::fs::read_to_string(&dsn_file).unwrap();
    assert!(kept.contains("sslcert='/etc/client.crt'"), "{kept}");
}

/// H5: the application role has the documented grant (UPDATE on the metadata table), which
/// lets it lock the table IN SHARE MODE; it holds that lock in two databases. On 0.6.0 both
/// worker slots (backfill.max_workers = 2) waited there, and a third database's job stayed
/// queued.
#[test]
fn locks_held_in_two_databases_never_keep_a_third_ones_job_waiting() {
    let cluster = Cluster::start("atk-slots", &["backfill.max_workers = 2"]);
    let mut holders = Vec::new();
    for name in ["a", "b", "c"] {
        let mut db = cluster.create_db(name);
        db.batch_execute(&format!(
            "{}
             CREATE ROLE app_{name} LOGIN;
             GRANT USAGE ON SCHEMA backfill TO app_{name};
             GRANT SELECT, INSERT, UPDATE ON backfill.process_instance_metadata TO app_{name};",
            bulk_sql(500)
        ))
        .unwrap();
        if name != "c" {
            let mut holder = cluster.connect_as(&format!("app_{name}"), name);
            holder
                .batch_execute("BEGIN; LOCK TABLE backfill.process_instance_metadata IN SHARE MODE")
                .unwrap();
            holders.push(holder);
            let waits_before = cluster.log().matches("waits for a lock").count();
            add_path(&mut db, BULK, "number", "invoice.number");
            wait_for(
                &format!("the job of {name} to wait for the lock"),
                Duration::from_secs(60),
                || (cluster.log().matches("waits for a lock").count() > waits_before).then_some(()),
            );
        }
    }
    let mut c = cluster.connect("c");
    let job = add_path(&mut c, BULK, "number", "invoice.number");
    assert_eq!(ended(&mut c, job, Duration::from_secs(60)), "succeeded");
    assert_eq!(rows_in(&mut c, "backfill", "number"), 500);
    // The locks go: the jobs they held back end too.
    for mut holder in holders {
        holder.batch_execute("COMMIT").unwrap();
    }
    for name in ["a", "b"] {
        let mut db = cluster.connect(name);
        let job = one_i64(
            &mut db,
            "SELECT max(id) FROM backfill.job WHERE parent_id IS NULL",
        );
        assert_eq!(ended(&mut db, job, Duration::from_secs(120)), "succeeded");
        assert_eq!(rows_in(&mut db, "backfill", "number"), 500);
    }
}

/// Every kind of object PostgreSQL runs code from on a read or a write of the tables counts
/// its owner as one who controls them (the threat model in docs/security.md names this test
/// for each): on a superuser's tables, each is accepted while the superuser owns it, and
/// refused, naming it, once it belongs to a role without the superuser's privileges.
#[test]
fn every_kind_of_code_on_the_tables_counts_its_owner() {
    let (_cluster, mut db) = start_app("atk-kinds", false, &[], &bulk_sql(20));
    db.batch_execute(
        "CREATE ROLE typeowner LOGIN;
         CREATE SCHEMA shared;
         GRANT USAGE ON SCHEMA shared TO typeowner;",
    )
    .unwrap();
    // (kind, what makes it in schema S, what gives it away, what the refusal names)
    let kinds: &[(&str, &str, &str, &str)] = &[
        (
            "trigger",
            "CREATE FUNCTION shared.S_trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
             CREATE TRIGGER t BEFORE INSERT ON S.process_instance_metadata
                 FOR EACH ROW EXECUTE FUNCTION shared.S_trg();",
            "ALTER FUNCTION shared.S_trg() OWNER TO typeowner",
            "function shared.s_trg()",
        ),
        (
            "check constraint",
            "CREATE FUNCTION shared.S_ok(bigint) RETURNS boolean LANGUAGE sql AS 'SELECT true';
             ALTER TABLE S.process_instance_metadata ADD CONSTRAINT c CHECK (shared.S_ok(process_instance_id));",
            "ALTER FUNCTION shared.S_ok(bigint) OWNER TO typeowner",
            "function shared.s_ok(bigint)",
        ),
        (
            "default",
            "CREATE FUNCTION shared.S_dflt() RETURNS text LANGUAGE sql AS 'SELECT ''x''';
             ALTER TABLE S.process_instance_metadata ADD COLUMN extra text DEFAULT shared.S_dflt();",
            "ALTER FUNCTION shared.S_dflt() OWNER TO typeowner",
            "function shared.s_dflt()",
        ),
        (
            "generated column",
            "CREATE FUNCTION shared.S_gen(bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS 'SELECT $1';
             ALTER TABLE S.process_instance_metadata
                 ADD COLUMN g bigint GENERATED ALWAYS AS (shared.S_gen(process_instance_id)) STORED;",
            "ALTER FUNCTION shared.S_gen(bigint) OWNER TO typeowner",
            "function shared.s_gen(bigint)",
        ),
        (
            "index expression",
            "CREATE FUNCTION shared.S_idx(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT $1';
             CREATE INDEX ON S.process_instance_metadata (shared.S_idx(key));",
            "ALTER FUNCTION shared.S_idx(text) OWNER TO typeowner",
            "function shared.s_idx(text)",
        ),
        (
            "index predicate",
            "CREATE FUNCTION shared.S_pred(text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
             CREATE INDEX ON S.task (process_instance_id) WHERE shared.S_pred(state);",
            "ALTER FUNCTION shared.S_pred(text) OWNER TO typeowner",
            "function shared.s_pred(text)",
        ),
        (
            "policy",
            "CREATE FUNCTION shared.S_pol() RETURNS boolean LANGUAGE sql AS 'SELECT true';
             CREATE POLICY p ON S.task USING (shared.S_pol());
             ALTER TABLE S.task ENABLE ROW LEVEL SECURITY;",
            "ALTER FUNCTION shared.S_pol() OWNER TO typeowner",
            "function shared.s_pol()",
        ),
        (
            "rule",
            "CREATE TABLE shared.S_sink (id bigint);
             CREATE RULE r AS ON INSERT TO S.process_instance_metadata
                 DO ALSO INSERT INTO shared.S_sink VALUES (NEW.process_instance_id);",
            "ALTER TABLE shared.S_sink OWNER TO typeowner",
            "table shared.s_sink",
        ),
        (
            "operator",
            "CREATE FUNCTION shared.S_eq(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1 = $2';
             CREATE OPERATOR shared.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = shared.S_eq);
             ALTER TABLE S.process_instance_metadata ADD CONSTRAINT c CHECK (key OPERATOR(shared.===) key);",
            "ALTER OPERATOR shared.=== (text, text) OWNER TO typeowner",
            "operator shared.===(text,text)",
        ),
        (
            "domain",
            "CREATE DOMAIN shared.S_meta AS varchar(255);
             ALTER TABLE S.process_instance_metadata ALTER COLUMN value TYPE shared.S_meta;",
            "ALTER DOMAIN shared.S_meta OWNER TO typeowner",
            "type shared.s_meta",
        ),
    ];
    for (n, (kind, make, give, named)) in kinds.iter().enumerate() {
        let schema = format!("s{n}");
        let sql = |text: &str| {
            text.replace("S_", &format!("{schema}_"))
                .replace("S.", &format!("{schema}."))
        };
        let named = named.replace("s_", &format!("{schema}_"));
        db.batch_execute(&format!(
            "{}\n{}",
            app_tables(&schema, "postgres", false),
            sql(make)
        ))
        .unwrap_or_else(|e| panic!("{kind}: {}", message(&e)));
        db.batch_execute(&format!("SELECT backfill.attach('{schema}')"))
            .unwrap_or_else(|e| panic!("{kind}, the superuser's own: {}", message(&e)));
        let give = sql(give);
        db.batch_execute(&give).unwrap();
        let e = db
            .batch_execute(&format!("SELECT backfill.attach('{schema}')"))
            .expect_err(kind);
        assert_eq!(sqlstate(&e), "42501", "{kind}: {e}");
        let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or_default();
        assert!(
            hint.contains(&named) && hint.contains("typeowner"),
            "{kind}: the hint names {named}: {hint}"
        );
        db.batch_execute("SELECT backfill.detach()").unwrap();
    }
}

/// Event triggers fire on DDL, and only a superuser may create one; but its function may be
/// any role's. A job runs no DDL, in the worker or in CALL backfill.run: none fires.
#[test]
fn no_job_fires_an_event_trigger() {
    let (_cluster, mut db) = start_app("atk-event", true, &[], &bulk_sql(300));
    db.batch_execute(
        "CREATE TABLE public.ddl_log (tag text, by_role text);
         CREATE FUNCTION public.log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.ddl_log VALUES (tg_tag, current_user); END $$;
         CREATE EVENT TRIGGER log_ddl ON ddl_command_start EXECUTE FUNCTION public.log_ddl();
         CREATE EVENT TRIGGER log_drop ON sql_drop EXECUTE FUNCTION public.log_ddl();",
    )
    .unwrap();
    let job = add_path(&mut db, BULK, "number", "invoice.number");
    assert_eq!(ended(&mut db, job, Duration::from_secs(120)), "succeeded");
    let job = add_path(&mut db, BULK, "status", "invoice.status");
    // (A worker may have taken it first: then CALL says so, and the worker runs it.)
    let _ = db.batch_execute(&format!("CALL backfill.run({job})"));
    assert_eq!(ended(&mut db, job, Duration::from_secs(120)), "succeeded");
    db.batch_execute("SELECT backfill.count_coverage('bulk/model')")
        .unwrap();
    assert_eq!(rows_in(&mut db, "backfill", "status"), 300);
    assert_eq!(one_i64(&mut db, "SELECT count(*) FROM public.ddl_log"), 0);
}
