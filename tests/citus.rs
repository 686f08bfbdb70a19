//! backfill on Citus: SpiffWorkflow's tables distributed as docs/citus.md says (the DDL is read
//! from that page), on a coordinator and two worker nodes, each with citus and backfill
//! preloaded. Jobs are queued on the coordinator and their batches run on the nodes. Needs
//! Citus installed in the server (`scripts/citus install`; scripts/test does it).

mod common;

use common::spiff::*;
use common::{one_i64, one_text, wait_for, Cluster};
use postgres::Client;
use std::path::Path;
use std::time::Duration;

/// A coordinator and its worker nodes, each with database `spiff`, citus and backfill.
struct Citus {
    coordinator: Cluster,
    workers: Vec<Cluster>,
}

const DB: &str = "spiff";

impl Citus {
    /// The cluster, or `None` (said on stderr) when scripts/test found no Citus release for
    /// this major (BACKFILL_NO_CITUS says why).
    fn start(name: &str, conf: &[&str]) -> Option<Citus> {
        if let Ok(why) = std::env::var("BACKFILL_NO_CITUS") {
            eprintln!("{name}: not run: {why}");
            return None;
        }
        Some(Citus::start_nodes(name, conf))
    }

    fn start_nodes(name: &str, conf: &[&str]) -> Citus {
        let node = |role: &str| {
            let mut lines = vec![
                "shared_preload_libraries = 'citus,backfill'",
                "max_worker_processes = 32",
                "max_connections = 100",
            ];
            lines.extend(conf);
            let cluster = Cluster::start(&format!("{name}-{role}"), &lines);
            cluster
                .connect("postgres")
                .batch_execute(&format!("CREATE DATABASE {DB}"))
                .unwrap();
            cluster
                .connect(DB)
                .batch_execute("CREATE EXTENSION citus")
                .unwrap();
            cluster
        };
        let coordinator = node("coordinator");
        let workers = vec![node("worker1"), node("worker2")];
        let mut db = coordinator.connect(DB);
        db.execute(
            "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
            &[&i32::from(coordinator.port)],
        )
        .unwrap();
        for worker in &workers {
            db.execute(
                "SELECT citus_add_node('127.0.0.1', $1)",
                &[&i32::from(worker.port)],
            )
            .unwrap();
        }
        // Citus creates the extension on the worker nodes too.
        db.batch_execute("CREATE EXTENSION backfill").unwrap();
        Citus {
            coordinator,
            workers,
        }
    }

    /// SpiffWorkflow's tables in schema `app`, distributed as docs/citus.md says, with
    /// `instances` instances of generated data; a connection as spiff to the coordinator.
    fn spiff(&self, instances: usize) -> Client {
        let mut spiff = spiff_tables(&self.coordinator, DB);
        // A statement at a time: Citus sends a DDL statement's text on to the worker nodes,
        // and refuses one that holds several.
        spiff.batch_execute("SET search_path = app").unwrap();
        for statement in distribution_ddl().split_inclusive(";\n") {
            spiff.batch_execute(statement).unwrap();
        }
        spiff.batch_execute("RESET search_path").unwrap();
        self.coordinator.psql("spiff", DB, &generate(instances, 1));
        spiff
    }
}

/// The statements docs/citus.md gives for distributing SpiffWorkflow's tables: its first sql
/// block.
fn distribution_ddl() -> String {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/citus.md"))
        .unwrap();
    let start = page
        .find("```sql\n")
        .expect("docs/citus.md has an sql block")
        + 7;
    let end = start + page[start..].find("```").unwrap();
    page[start..end].to_owned()
}

const INSTANCES: usize = 20_000;

/// The model's instances' rows for `keys` after a job on `paths` ran on `db`, the job's
/// final state and its error count.
fn backfill(db: &mut Client, paths: &[(&str, &str)]) -> (String, i64) {
    assert_eq!(sync_model(db, INVOICE, paths), "updated");
    let job = newest_job(db);
    let state = wait_done(db, job);
    let errors = one_i64(
        db,
        &format!("SELECT errors FROM backfill.progress WHERE id = {job}"),
    );
    (state, errors)
}

#[test]
fn jobs_on_citus_write_what_they_write_on_one_server() {
    let Some(citus) = Citus::start("citus-equal", &[]) else {
        return;
    };
    let mut spiff = citus.spiff(INSTANCES);
    let plain = Cluster::start("citus-plain", &[]);
    let mut alone = spiff_database(&plain, DB, INSTANCES);
    for db in [&mut spiff, &mut alone] {
        db.execute("SELECT backfill.attach('app')", &[]).unwrap();
        assert_eq!(sync_model(db, INVOICE, &[]), "inserted");
    }
    // The live engine already wrote `number` for some instances: a fill leaves them.
    for db in [&mut spiff, &mut alone] {
        db.batch_execute(
            "INSERT INTO app.process_instance_metadata
                    (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
             SELECT id, 'number', 'live-' || id, 1, 1 FROM app.process_instance
              WHERE process_model_identifier = 'finance/invoice' AND id % 9 = 0",
        )
        .unwrap();
    }
    // A fill of every path, then a changed path (an overwrite), then a path whose value
    // cannot be stored for some instances (\u0000: each such instance is an error).
    let mut changed: Vec<(&str, &str)> = PATHS.to_vec();
    changed[2] = ("amount", "invoice.number");
    let mut with_nul = changed.clone();
    with_nul.push(("nul", "nul"));
    for paths in [PATHS.to_vec(), changed, with_nul.clone()] {
        let on_citus = backfill(&mut spiff, &paths);
        let on_one = backfill(&mut alone, &paths);
        assert_eq!(on_citus.0, "succeeded");
        assert_eq!(
            on_citus, on_one,
            "state and errors, Citus against one server"
        );
        let keys = keys(&with_nul);
        assert_rows_equal(
            &stored(&mut spiff, INVOICE, &keys),
            &stored(&mut alone, INVOICE, &keys),
        );
    }
    let rows = one_i64(
        &mut spiff,
        "SELECT count(*) FROM app.process_instance_metadata",
    );
    assert!(rows > 100_000, "only {rows} rows");

    // CALL backfill.run on the coordinator (a job held from the workers for an hour), and the
    // coverage counted across the nodes.
    spiff
        .batch_execute("DELETE FROM app.process_instance_metadata WHERE key = 'city'")
        .unwrap();
    let job: i64 = spiff
        .query_one(
            "SELECT backfill.enqueue('finance/invoice', ARRAY['city'], false, now() + interval '1 hour')",
            &[],
        )
        .unwrap()
        .get(0);
    let mut session = citus.coordinator.connect_as("spiff", DB);
    session
        .execute(&format!("CALL backfill.run({job})"), &[])
        .unwrap();
    assert_eq!(
        one_text(
            &mut spiff,
            &format!("SELECT state FROM backfill.progress WHERE id = {job}")
        ),
        "succeeded"
    );
    assert_rows_equal(
        &stored(&mut spiff, INVOICE, &["city"]),
        &stored(&mut alone, INVOICE, &["city"]),
    );
    assert_eq!(
        one_text(
            &mut spiff,
            "SELECT with_value || '/' || instances FROM backfill.coverage
              WHERE model = 'finance/invoice' AND key = 'city'"
        ),
        one_text(
            &mut alone,
            "SELECT with_value || '/' || instances FROM backfill.coverage
              WHERE model = 'finance/invoice' AND key = 'city'"
        )
    );

    // A job cancelled while it runs stops at a batch boundary.
    citus
        .coordinator
        .set_and_reload("backfill.batch_delay", "200ms");
    spiff
        .batch_execute("DELETE FROM app.process_instance_metadata WHERE key = 'note'")
        .unwrap();
    let job: i64 = spiff
        .query_one(
            "SELECT backfill.enqueue('finance/invoice', ARRAY['note'], false)",
            &[],
        )
        .unwrap()
        .get(0);
    wait_for("the job to run", Duration::from_secs(60), || {
        let done = one_i64(
            &mut spiff,
            &format!("SELECT processed FROM backfill.progress WHERE id = {job}"),
        );
        (done > 0).then_some(())
    });
    spiff
        .execute("SELECT backfill.cancel($1)", &[&job])
        .unwrap();
    assert_eq!(wait_done(&mut spiff, job), "cancelled");
    let left = one_i64(
        &mut spiff,
        "SELECT count(*) FROM app.process_instance i
          WHERE i.process_model_identifier = 'finance/invoice'
            AND NOT EXISTS (SELECT FROM app.process_instance_metadata m
                             WHERE m.process_instance_id = i.id AND m.key = 'note')",
    );
    assert!(left > 0, "the cancelled job did not stop");
}

#[test]
fn the_live_engine_never_fails_and_keeps_its_values_on_citus() {
    let Some(citus) = Citus::start("citus-race", &["backfill.batch_delay = '15ms'"]) else {
        return;
    };
    let mut spiff = citus.spiff(2_000);
    spiff.execute("SELECT backfill.attach('app')", &[]).unwrap();
    sync_model(&mut spiff, INVOICE, &[]);
    let ids = model_instances(&mut spiff);
    // Batches of 2 instances a shard group (64 a batch with 32 shards), so that the clients
    // meet many of them.
    citus.coordinator.set_and_reload("backfill.batch_size", "2");
    sync_model(&mut spiff, INVOICE, &[("number", "invoice.number")]);
    let job = newest_job(&mut spiff);
    let (state, race) = race_the_job(
        || citus.coordinator.connect_as("spiff", DB),
        &mut spiff,
        job,
        ids,
        4,
    );
    assert_eq!(state, "succeeded");
    assert_the_application_kept_its_values(&mut spiff, &race);
}

#[test]
fn a_worker_node_down_mid_job_and_a_coordinator_crash_lose_nothing() {
    let Some(mut citus) = Citus::start(
        "citus-faults",
        &["backfill.batch_size = 3", "backfill.batch_delay = '20ms'"],
    ) else {
        return;
    };
    let mut spiff = citus.spiff(8_000);
    spiff.execute("SELECT backfill.attach('app')", &[]).unwrap();
    sync_model(&mut spiff, INVOICE, &[]);
    let paths = [("number", "invoice.number"), ("nested", "nested")];
    sync_model(&mut spiff, INVOICE, &paths);
    let job = newest_job(&mut spiff);
    let processed = |spiff: &mut Client| {
        one_i64(
            spiff,
            &format!("SELECT processed FROM backfill.progress WHERE id = {job}"),
        )
    };
    wait_for("the job to start", Duration::from_secs(60), || {
        (processed(&mut spiff) > 0).then_some(())
    });

    // A worker node stops as after a crash: the job waits for it, spending no attempt.
    citus.workers[0].pg_stop("immediate");
    wait_for(
        "the job to wait for the node",
        Duration::from_secs(60),
        || {
            citus
                .coordinator
                .log()
                .contains("waits for a node")
                .then_some(())
        },
    );
    let during = processed(&mut spiff);
    assert_eq!(
        one_text(
            &mut spiff,
            &format!("SELECT state FROM backfill.progress WHERE id = {job}")
        ),
        "running"
    );
    citus.workers[0].pg_start();
    wait_for("the job to go on", Duration::from_secs(60), || {
        (processed(&mut spiff) > during).then_some(())
    });

    // The coordinator crashes mid-job: the job resumes at its cursor after the restart.
    // (Test clusters run with fsync off: a synchronous commit makes the batches before it
    // durable, as they are on a real server.)
    spiff
        .batch_execute("SET synchronous_commit = on; CREATE TEMP TABLE flush(); DROP TABLE flush")
        .unwrap();
    drop(spiff);
    citus.coordinator.pg_stop("immediate");
    citus.coordinator.pg_start();
    let mut spiff = citus.coordinator.connect_as("spiff", DB);
    assert_eq!(wait_done(&mut spiff, job), "succeeded");
    let mut expected = reference(&mut spiff, INVOICE, &paths);
    expected.sort();
    assert_rows_equal(&stored(&mut spiff, INVOICE, &keys(&paths)), &expected);
    assert_eq!(
        one_i64(
            &mut spiff,
            &format!("SELECT total - processed + errors FROM backfill.progress WHERE id = {job}")
        ),
        0
    );
}

#[test]
fn attach_refuses_a_layout_a_batch_cannot_serve() {
    let Some(citus) = Citus::start("citus-attach", &["backfill.max_workers = 0"]) else {
        return;
    };
    let mut spiff = spiff_tables(&citus.coordinator, DB);
    // Each variant in a schema of its own, distributed as docs/citus.md says but for one
    // change.
    for (schema, change, says, fix) in [
        (
            "apart",
            ("colocate_with => 'process_instance')", "colocate_with => 'none')"),
            "must be distributed by process_instance_id, co-located with process_instance",
            "create_distributed_table('apart.task', 'process_instance_id', colocate_with => 'apart.process_instance')",
        ),
        (
            "nullable",
            ("ALTER TABLE task ADD CONSTRAINT", "ALTER TABLE process_instance_metadata ALTER COLUMN value DROP NOT NULL;\nALTER TABLE task ADD CONSTRAINT"),
            "nullable.process_instance_metadata must have a NOT NULL value column",
            "ALTER COLUMN value SET NOT NULL",
        ),
    ] {
        spiff
            .batch_execute(&format!(
                "CREATE SCHEMA {schema}; SET search_path = {schema}; {}",
                include_str!("fixtures/spiffworkflow/schema.sql")
            ))
            .unwrap();
        let mut ddl = distribution_ddl().replacen(change.0, change.1, 1);
        assert_ne!(ddl, distribution_ddl(), "{schema}: the change applies");
        if schema == "apart" {
            // Citus refuses a foreign key between tables that are not co-located.
            ddl.truncate(ddl.find("ALTER TABLE task ADD CONSTRAINT").unwrap());
        }
        for statement in ddl.split_inclusive(";\n") {
            spiff.batch_execute(statement).unwrap();
        }
        spiff.batch_execute("RESET search_path").unwrap();
        let refused = spiff
            .execute(&format!("SELECT backfill.attach('{schema}')"), &[])
            .unwrap_err();
        let db = refused.as_db_error().unwrap();
        assert_eq!(db.code().code(), "0A000", "{schema}: {db:?}");
        assert!(db.message().contains(says), "{schema}: {}", db.message());
        assert!(
            db.hint().unwrap_or_default().contains(fix),
            "{schema}: {:?}",
            db.hint()
        );
    }
    // As the page says: attached, with a NOTICE that says how.
    let (mut spiff, notices) = citus.coordinator.connect_as_with_notices("spiff", DB);
    spiff.batch_execute("SET search_path = app").unwrap();
    for statement in distribution_ddl().split_inclusive(";\n") {
        spiff.batch_execute(statement).unwrap();
    }
    spiff
        .batch_execute("RESET search_path; SELECT backfill.attach('app')")
        .unwrap();
    assert!(
        notices
            .lock()
            .unwrap()
            .iter()
            .any(|n| n
                .contains("distributed by Citus (32 shard groups; json_data distributed by hash)")),
        "{:?}",
        notices.lock().unwrap()
    );
}
