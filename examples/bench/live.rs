//! The application's latency next to a backfill: four clients doing SpiffWorkflow's save of an
//! instance (update the instance row, look up its metadata row by key, update it or insert it
//! when absent, commit) on random instances of the benchmark's model, alone, then while
//! backfill jobs run one after another (each fills a new key for every instance of the model)
//! with the default settings (split across two workers, adaptive throttle on), in one worker
//! each (backfill.workers_per_job = 1), and split across two without the throttle, with a
//! phase alone before and after each. The baseline moves within a run (every job adds a row
//! per instance to the table the application reads, and the machine drifts), so each phase
//! with a backfill is compared with the mean p99 of the two phases alone around it.
//! Reported (after a warm-up phase alone that is not): the saves' p50 and p99 latency in each
//! phase, and what their statements waited on.

use crate::{connect, progress, set_setting, set_workers_per_job, MODEL};
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

/// What runs next to the application in a phase with a backfill.
#[derive(Clone, Copy)]
pub enum Backfill {
    /// workers_per_job = 2, the adaptive throttle on: the defaults, and the target.
    Default,
    /// workers_per_job = 1, the throttle on.
    OneWorker,
    /// workers_per_job = 2, backfill.adaptive_throttle = off.
    Unthrottled,
}

impl Backfill {
    fn label(self) -> &'static str {
        match self {
            Backfill::Default => "split across two (default)",
            Backfill::OneWorker => "workers_per_job 1",
            Backfill::Unthrottled => "two, throttle off",
        }
    }
}

pub struct Report {
    /// The phases alone, one before and one after each phase with a backfill.
    pub alone: Vec<Phase>,
    /// The phases with a backfill, in order, with the number of jobs each ran.
    pub during: Vec<(Backfill, Phase, usize)>,
}

impl Report {
    /// The p99 of phase `i` with a backfill over the mean p99 of the phases alone around it.
    fn ratio(&self, i: usize) -> f64 {
        self.during[i].1.p99_ms / ((self.alone[i].p99_ms + self.alone[i + 1].p99_ms) / 2.0)
    }
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
    let alone = |what: &str| {
        progress(&format!(
            "live load: {CLIENTS} clients saving instances for {seconds} s, alone ({what})"
        ));
        measure(port, &ids, || {
            thread::sleep(Duration::from_secs(seconds));
            0
        })
        .0
    };
    // The first saves after loading meet cold caches and set the hint bits of every row
    // they read: a warm-up, not measured.
    alone("a warm-up, not measured");
    let mut report = Report {
        alone: vec![alone("first")],
        during: Vec::new(),
    };
    for backfill in [
        Backfill::Default,
        Backfill::OneWorker,
        Backfill::Unthrottled,
    ] {
        progress(&format!(
            "live load: the same for {seconds} s while backfill jobs run: {}",
            backfill.label()
        ));
        let (workers, throttle) = match backfill {
            Backfill::Default => (2, true),
            Backfill::OneWorker => (1, true),
            Backfill::Unthrottled => (2, false),
        };
        set_workers_per_job(db, port, workers);
        set_setting(
            db,
            port,
            "backfill.adaptive_throttle",
            if throttle { "on" } else { "off" },
        );
        let (phase, jobs) = measure(port, &ids, || backfill_for(port, seconds, backfill));
        report.during.push((backfill, phase, jobs));
        report.alone.push(alone("after it"));
    }
    set_workers_per_job(db, port, 2);
    set_setting(db, port, "backfill.adaptive_throttle", "on");
    report
}

/// Jobs one after another, each filling a new key for every instance (as after a model
/// update), until `seconds` have passed and the last one has finished; how many ran.
fn backfill_for(port: u16, seconds: u64, backfill: Backfill) -> usize {
    let label = match backfill {
        Backfill::Default => "default",
        Backfill::OneWorker => "one_worker",
        Backfill::Unthrottled => "unthrottled",
    };
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
        "live application load ({CLIENTS} clients, SpiffWorkflow's save on random instances of the model), \
         alone and during backfill jobs, each such phase between two alone (ratio: its p99 over their mean p99)"
    );
    let line = |label: &str, phase: &Phase, jobs: Option<usize>, ratio: Option<f64>| {
        println!(
            "  {label:<27} {:>8} {:>7} saves   p50 {:>6.2} ms   p99 {:>6.2} ms   {:<16} statements: {}",
            jobs.map_or(String::new(), |n| format!("{n} jobs")),
            phase.saves,
            phase.p50_ms,
            phase.p99_ms,
            ratio.map_or(String::new(), |r| format!("p99 ratio {r:.2}")),
            phase
                .waits
                .iter()
                .take(4)
                .map(|(label, share)| format!("{label} {:.0}%", share * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    line("alone", &report.alone[0], None, None);
    for (i, (backfill, phase, jobs)) in report.during.iter().enumerate() {
        line(backfill.label(), phase, Some(*jobs), Some(report.ratio(i)));
        line("alone", &report.alone[i + 1], None, None);
    }
    let first = report.alone[0].p99_ms;
    let last = report.alone[report.alone.len() - 1].p99_ms;
    let ratio = report.ratio(0);
    println!(
        "  p99 during a default backfill / alone around it = {ratio:.2} (target <= 1.5: {}); \
         the baseline moved {:.2}x from the first phase alone to the last",
        if ratio <= 1.5 { "met" } else { "MISSED" },
        last / first
    );
}
