//! pg_upgrade from each supported major to the next, as a DBA runs it (`--check`, then the
//! upgrade), with the extension installed and a job part-done: the job's cursor does not move
//! while pg_upgrade starts the old server, and the job finishes on the new major, every row
//! exact.
//!
//! It needs a server of every major with this build installed, so scripts/test runs it after
//! each major's suite, with BACKFILL_PG_CONFIGS naming their pg_configs in upgrade order
//! ("15=/usr/lib/postgresql/15/bin/pg_config 16=..."); `cargo test` alone skips it (ignored).

mod common;

use common::{bulk_sql, one_i64, one_text, wait_ended, wait_for, wrong_rows, Cluster};
use std::path::PathBuf;
use std::time::Duration;

/// The majors to upgrade through, in order, with their pg_config.
fn majors() -> Vec<(String, PathBuf)> {
    let configs = std::env::var("BACKFILL_PG_CONFIGS")
        .expect("BACKFILL_PG_CONFIGS names each major's pg_config: run this test by scripts/test");
    configs
        .split_whitespace()
        .map(|entry| {
            let (major, pg_config) = entry
                .split_once('=')
                .expect("BACKFILL_PG_CONFIGS entries are MAJOR=PG_CONFIG");
            (major.to_owned(), PathBuf::from(pg_config))
        })
        .collect()
}

/// The job's committed progress: (cursor, instances processed, total, state).
fn progress_of(cluster: &Cluster, job: i64) -> (i64, i64, i64, String) {
    let mut db = cluster.connect("app");
    let row = db
        .query_one(
            "SELECT coalesce(last_instance_id, 0), coalesce(instances_processed, 0), coalesce(instances_total, 0), state
               FROM backfill.job WHERE id = $1",
            &[&job],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[test]
#[ignore = "needs a server of every major: scripts/test runs it after each major's suite"]
fn pg_upgrade_carries_a_part_done_job_to_each_next_major() {
    let majors = majors();
    assert!(majors.len() >= 2, "at least two majors to upgrade between");
    // Batches slowed down, so the test can stop the server with the job part-done.
    let mut cluster = Cluster::start_on(
        &majors[0].1,
        &format!("pg-upgrade-{}", majors[0].0),
        &["backfill.batch_delay = 400", "backfill.workers_per_job = 1"],
    );
    let mut db = cluster.create_db("app");
    db.batch_execute(&bulk_sql(2_000)).unwrap();
    let paths = [
        "invoice.number",
        "invoice.status",
        "invoice.total",
        "invoice.tags",
    ];
    let mut filled: Vec<(String, &str)> = Vec::new();
    for (step, pair) in majors.windows(2).enumerate() {
        let ((from, _), (to, to_config)) = (&pair[0], &pair[1]);
        let key = format!("from_{from}");
        let path = paths[step % paths.len()];
        let mut db = cluster.connect("app");
        let job = common::add_path(&mut db, "bulk/model", &key, path);
        // About 40 % done: stopped (fast, as a DBA stops a server to upgrade it) once 40 % is
        // committed, well before the end at this pace.
        wait_for("the job to be 40 % done", Duration::from_secs(120), || {
            let (_, processed, total, _) = progress_of(&cluster, job);
            (total > 0 && processed * 10 >= total * 4).then_some(())
        });
        drop(db);
        cluster.pg_stop("fast");
        // Where it stands, read with no worker running.
        cluster.pg_start_with("-c backfill.max_workers=0");
        let before = progress_of(&cluster, job);
        cluster.pg_stop("fast");
        let (_, processed, total, state) = before.clone();
        assert_eq!(state, "running", "{from} -> {to}");
        assert!(
            processed * 10 >= total * 4 && processed < total,
            "{from} -> {to}: the job is part-done ({processed} of {total})"
        );

        let mut upgraded = cluster.pg_upgrade_to(to_config, &format!("pg-upgrade-{to}"));
        // pg_upgrade started the old server (--check, then for the dump) with the library
        // preloaded, and copied its files after: no batch ran meanwhile.
        upgraded.pg_start_with("-c backfill.max_workers=0");
        assert_eq!(progress_of(&upgraded, job), before, "{from} -> {to}");
        upgraded.pg_stop("fast");

        upgraded.pg_start();
        assert_eq!(
            wait_ended(&upgraded, "app", job),
            "succeeded",
            "{from} -> {to}"
        );
        let mut db = upgraded.connect("app");
        assert_eq!(
            one_text(&mut db, "SELECT current_setting('server_version_num')")[..2],
            to[..],
        );
        let (_, processed, total, _) = progress_of(&upgraded, job);
        assert_eq!(processed, total, "{from} -> {to}");
        filled.push((key, path));
        for (key, path) in &filled {
            assert_eq!(wrong_rows(&mut db, "bulk/model", key, path), 0, "{key}");
        }
        assert_eq!(
            one_i64(
                &mut db,
                "SELECT count(*) FROM backfill.job WHERE state NOT IN ('succeeded')"
            ),
            0
        );
        cluster = upgraded;
    }
}
