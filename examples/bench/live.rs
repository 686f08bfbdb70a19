//! The application's latency next to a backfill: four clients doing SpiffWorkflow's save of an
//! instance (update the instance row, look up its metadata row by key, update it or insert it
//! when absent, commit) on random instances of the benchmark's model, first alone, then while
//! backfill jobs run one after another (each fills a new key for every instance of the model),
//! in one worker each (backfill.workers_per_job = 1), split across two (2, the default), and
//! split across two without the adaptive throttle, and alone again (how far the machine and
//! the grown table moved the baseline). Reported: the saves' p50 and p99 latency in each
//! phase; the target is taken against the first phase alone.

use crate::{connect, progress, set_workers_per_job, MODEL};
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const CLIENTS: usize = 4;

pub struct Phase {
    pub saves: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// What the clients' statements were doing when sampled (wait event, or CPU), with the
    /// share of samples, most frequent first.
    pub waits: Vec<(String, f64)>,
}

pub struct Report {
    pub alone: Phase,
    /// During jobs run by one worker each (workers_per_job = 1), the adaptive throttle on.
    pub one_worker: Phase,
    pub one_worker_jobs: usize,
    /// During jobs with the default settings (workers_per_job = 2, the adaptive throttle on).
    pub during: Phase,
    pub jobs: usize,
    /// During jobs split across two workers with backfill.adaptive_throttle = off.
    pub unthrottled: Phase,
    pub unthrottled_jobs: usize,
    /// Alone again at the end: how far the machine drifted meanwhile (the target is taken
    /// against the first).
    pub alone_after: Phase,
}

/// One SpiffWorkflow save of instance `id`.
fn save(db: &mut Client, id: i64, n: u64) -> Result<(), postgres::Error> {
    let mut tx = db.transaction()?;
    tx.execute(
        "UPDATE backfill.process_instance SET updated_at_in_seconds = $2 WHERE id = $1",
        &[&id, &(n as i64)],
    )?;
    let value = format!("live-{n}");
    let found = tx.query_opt(
        "SELECT id FROM backfill.process_instance_metadata WHERE process_instance_id = $1 AND key = 'live_status'",
        &[&id],
    )?;
    match found {
        Some(row) => {
            let row_id: i64 = row.get(0);
            tx.execute(
                "UPDATE backfill.process_instance_metadata SET value = $2, updated_at_in_seconds = 1 WHERE id = $1",
                &[&row_id, &value],
            )?;
        }
        None => {
            tx.execute(
                "INSERT INTO backfill.process_instance_metadata
                        (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
                 VALUES ($1, 'live_status', $2, 1, 1)",
                &[&id, &value],
            )?;
        }
    }
    tx.commit()
}

/// Runs the clients until `stop`; their latencies in milliseconds.
fn clients(
    port: u16,
    ids: Arc<Vec<i64>>,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Vec<f64>>> {
    (0..CLIENTS)
        .map(|c| {
            let (ids, stop) = (Arc::clone(&ids), Arc::clone(&stop));
            thread::spawn(move || {
                let mut db = connect(port);
                db.batch_execute("SET application_name = 'live'").unwrap();
                let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ (c as u64 + 1);
                let mut latencies = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let id = ids[(state % ids.len() as u64) as usize];
                    n += 1;
                    let started = Instant::now();
                    save(&mut db, id, n)
                        .unwrap_or_else(|e| panic!("an application save failed: {e}"));
                    latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                latencies
            })
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn phase(latencies: Vec<Vec<f64>>, waits: Vec<(String, f64)>) -> Phase {
    let mut all: Vec<f64> = latencies.into_iter().flatten().collect();
    all.sort_by(f64::total_cmp);
    Phase {
        saves: all.len(),
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        waits,
    }
}

/// Samples, every 5 ms until `stop`, what the clients' running statements wait for (the
/// wait event, or "CPU" when none); each label's share of the samples.
fn sample_waits(port: u16, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<(String, f64)>> {
    thread::spawn(move || {
        let mut db = connect(port);
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        let mut samples = 0;
        while !stop.load(Ordering::Relaxed) {
            for row in db
                .query(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU')
                       FROM pg_stat_activity WHERE application_name = 'live' AND state = 'active'",
                    &[],
                )
                .unwrap()
            {
                *counts.entry(row.get(0)).or_default() += 1;
                samples += 1;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let mut shares: Vec<(String, f64)> = counts
            .into_iter()
            .map(|(label, n)| (label, n as f64 / samples.max(1) as f64))
            .collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1));
        shares
    })
}

fn measure(port: u16, ids: &Arc<Vec<i64>>, during: impl FnOnce() -> usize) -> (Phase, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = clients(port, Arc::clone(ids), Arc::clone(&stop));
    let sampler = sample_waits(port, Arc::clone(&stop));
    let jobs = during();
    stop.store(true, Ordering::Relaxed);
    let latencies = handles.into_iter().map(|h| h.join().unwrap()).collect();
    (phase(latencies, sampler.join().unwrap()), jobs)
}

pub fn run(db: &mut Client, port: u16, seconds: u64) -> Report {
    let ids: Arc<Vec<i64>> = Arc::new(
        db.query(
            "SELECT id FROM backfill.process_instance WHERE process_model_identifier = $1",
            &[&MODEL],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect(),
    );
    progress(&format!(
        "live load: {CLIENTS} clients saving instances for {seconds} s, alone"
    ));
    let (alone, _) = measure(port, &ids, || {
        thread::sleep(Duration::from_secs(seconds));
        0
    });
    progress(&format!(
        "live load: the same for {seconds} s while backfill jobs run in one worker each"
    ));
    set_workers_per_job(db, port, 1);
    let (one_worker, one_worker_jobs) =
        measure(port, &ids, || backfill_for(port, seconds, "one_worker"));
    progress(&format!(
        "live load: the same for {seconds} s while backfill jobs run split across two workers"
    ));
    set_workers_per_job(db, port, 2);
    let (during, jobs) = measure(port, &ids, || backfill_for(port, seconds, "throttled"));
    set_throttle(port, false);
    progress(&format!(
        "live load: the same for {seconds} s while backfill jobs run without the adaptive throttle"
    ));
    let (unthrottled, unthrottled_jobs) =
        measure(port, &ids, || backfill_for(port, seconds, "unthrottled"));
    set_throttle(port, true);
    progress(&format!(
        "live load: alone again for {seconds} s, to see how far the machine drifted"
    ));
    let (alone_after, _) = measure(port, &ids, || {
        thread::sleep(Duration::from_secs(seconds));
        0
    });
    Report {
        alone,
        one_worker,
        one_worker_jobs,
        during,
        jobs,
        unthrottled,
        unthrottled_jobs,
        alone_after,
    }
}

fn set_throttle(port: u16, on: bool) {
    let mut admin = connect(port);
    // Each on its own: ALTER SYSTEM cannot run in a multi-statement query's transaction.
    admin
        .batch_execute(&format!(
            "ALTER SYSTEM SET backfill.adaptive_throttle = {on}"
        ))
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    // The worker reads the setting at its next batch; give the reload a moment to arrive.
    thread::sleep(Duration::from_millis(200));
}

/// Jobs one after another, each filling a new key for every instance (as after a model
/// update), until `seconds` have passed and the last one has finished; how many ran.
fn backfill_for(port: u16, seconds: u64, label: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut jobs = 0;
    let mut admin = connect(port);
    while Instant::now() < deadline {
        let key = format!("live_{label}_{jobs}");
        admin
            .batch_execute(&format!(
                r#"UPDATE backfill.process_model
                      SET metadata_extraction_paths = metadata_extraction_paths
                          || '[{{"key": "{key}", "path": "invoice.number"}}]'
                    WHERE id = '{MODEL}'"#
            ))
            .unwrap();
        let job: i64 = admin
            .query_one(
                "SELECT max(id) FROM backfill.job WHERE parent_id IS NULL",
                &[],
            )
            .unwrap()
            .get(0);
        let state: String = admin
            .query_one("SELECT backfill.wait($1, '10 min')", &[&job])
            .unwrap()
            .get(0);
        assert_eq!(state, "succeeded", "a live-load job ended {state}");
        jobs += 1;
    }
    jobs
}

pub fn print(report: &Report) {
    println!();
    println!(
        "live application load ({CLIENTS} clients, SpiffWorkflow's save on random instances of the model): \
         alone; during backfill jobs in one worker ({} done), split across two ({} done, the default), \
         and split across two without the adaptive throttle ({} done)",
        report.one_worker_jobs, report.jobs, report.unthrottled_jobs
    );
    for (label, phase) in [
        ("alone", &report.alone),
        ("workers_per_job 1", &report.one_worker),
        ("workers_per_job 2", &report.during),
        ("2, unthrottled", &report.unthrottled),
        ("alone again", &report.alone_after),
    ] {
        println!(
            "  {label:<18} {:>7} saves   p50 {:>6.2} ms   p99 {:>6.2} ms   p99 / alone {:.2}   statements: {}",
            phase.saves,
            phase.p50_ms,
            phase.p99_ms,
            phase.p99_ms / report.alone.p99_ms,
            phase
                .waits
                .iter()
                .take(4)
                .map(|(label, share)| format!("{label} {:.0}%", share * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let ratio = report.during.p99_ms / report.alone.p99_ms;
    let one = report.one_worker.p99_ms / report.alone.p99_ms;
    println!(
        "  p99 during a default backfill / alone = {ratio:.2} (target <= 1.5: {}); with one worker a job {one:.2} ({})",
        if ratio <= 1.5 { "met" } else { "MISSED" },
        if one <= 1.5 { "met" } else { "MISSED" },
    );
}
