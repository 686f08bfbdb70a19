//! The application's latency next to a backfill: four clients doing SpiffWorkflow's save of an
//! instance (update the instance row, look up its metadata row by key, update it or insert it
//! when absent, commit) on random instances of the benchmark's model, without a break for the
//! whole measurement, while the benchmark alternates segments alone with segments in which
//! backfill jobs run one after another (each fills a new key for every instance of the model):
//! with the default settings (split across two workers, adaptive throttle on), in one worker
//! each (backfill.workers_per_job = 1), and split across two without the throttle. A round is
//! alone, default, alone, one worker, alone, throttle off; the rounds repeat, and one segment
//! alone ends the last. The baseline moves within a run (every job adds a row per instance to
//! the table the application reads, and the machine drifts by a quarter and more within
//! minutes), so each kind of backfill is compared with the segments alone right before and
//! after its own, pooled: short segments, interleaved, cancel the drift that long phases
//! measured as much as the backfill.
//! Reported (after a warm-up alone that is not): the saves' p50 and p99 latency in the
//! segments alone, and in each kind's segments and the segments alone around them, and what
//! their statements waited on. A save belongs to the segment it started in; the few that
//! start while the benchmark changes a setting between segments belong to none.

use crate::{connect, progress, set_setting, set_workers_per_job, MODEL};
use postgres::Client;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// What runs next to the application in a segment with a backfill.
#[derive(Clone, Copy, PartialEq)]
pub enum Backfill {
    /// workers_per_job = 2, the adaptive throttle on: the defaults, and the target.
    Default,
    /// workers_per_job = 1, the throttle on.
    OneWorker,
    /// workers_per_job = 2, backfill.adaptive_throttle = off.
    Unthrottled,
}

const KINDS: [Backfill; 3] = [
    Backfill::Default,
    Backfill::OneWorker,
    Backfill::Unthrottled,
];

impl Backfill {
    fn label(self) -> &'static str {
        match self {
            Backfill::Default => "split across two (default)",
            Backfill::OneWorker => "workers_per_job 1",
            Backfill::Unthrottled => "two, throttle off",
        }
    }
}

/// A stretch of the measurement.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    WarmUp,
    Alone,
    During(Backfill),
}

struct Segment {
    kind: Kind,
    from: Instant,
    to: Instant,
    jobs: usize,
}

/// One kind of backfill over the run.
pub struct Compared {
    pub backfill: Backfill,
    pub jobs: usize,
    /// Its segments, pooled.
    pub during: Phase,
    /// The segments alone right before and after each of its segments, pooled.
    pub around: Phase,
}

impl Compared {
    fn ratio(&self) -> f64 {
        self.during.p99_ms / self.around.p99_ms
    }
}

pub struct Report {
    pub rounds: usize,
    pub seconds: u64,
    /// Every segment alone after the warm-up, pooled.
    pub alone: Phase,
    /// The p99 of each segment alone, in order.
    pub alone_p99s: Vec<f64>,
    pub compared: Vec<Compared>,
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

/// A save: when it started, and how long it took in milliseconds.
type Save = (Instant, f64);

/// Runs the clients until `stop`; their saves.
fn clients(
    port: u16,
    ids: Arc<Vec<i64>>,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Vec<Save>>> {
    (0..CLIENTS)
        .map(|c| {
            let (ids, stop) = (Arc::clone(&ids), Arc::clone(&stop));
            thread::spawn(move || {
                let mut db = connect(port);
                db.batch_execute("SET application_name = 'live'").unwrap();
                let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ (c as u64 + 1);
                let mut saves = Vec::new();
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
                    saves.push((started, started.elapsed().as_secs_f64() * 1000.0));
                }
                saves
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

/// The saves and wait samples that fall in the segments `chosen` picks.
fn phase(
    segments: &[Segment],
    chosen: &[bool],
    saves: &[Save],
    samples: &[(Instant, String)],
) -> Phase {
    let within = |at: Instant| {
        let i = segments.partition_point(|s| s.from <= at);
        i > 0 && chosen[i - 1] && at < segments[i - 1].to
    };
    let mut latencies: Vec<f64> = saves
        .iter()
        .filter(|(at, _)| within(*at))
        .map(|(_, ms)| *ms)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let mut counts: std::collections::HashMap<&str, usize> = Default::default();
    let mut sampled = 0;
    for (_, label) in samples.iter().filter(|(at, _)| within(*at)) {
        *counts.entry(label).or_default() += 1;
        sampled += 1;
    }
    let mut waits: Vec<(String, f64)> = counts
        .into_iter()
        .map(|(label, n)| (label.to_string(), n as f64 / sampled.max(1) as f64))
        .collect();
    waits.sort_by(|a, b| b.1.total_cmp(&a.1));
    Phase {
        saves: latencies.len(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        waits,
    }
}

/// Samples, every 5 ms until `stop`, what the clients' running statements wait for (the
/// wait event, or "CPU" when none), with the time of the sample.
fn sample_waits(port: u16, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<(Instant, String)>> {
    thread::spawn(move || {
        let mut db = connect(port);
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let at = Instant::now();
            for row in db
                .query(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU')
                       FROM pg_stat_activity WHERE application_name = 'live' AND state = 'active'",
                    &[],
                )
                .unwrap()
            {
                samples.push((at, row.get(0)));
            }
            thread::sleep(Duration::from_millis(5));
        }
        samples
    })
}

/// `rounds` rounds of segments of at least `seconds` each (see the module's comment).
pub fn run(db: &mut Client, port: u16, seconds: u64, rounds: usize) -> Report {
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
    let stop = Arc::new(AtomicBool::new(false));
    let handles = clients(port, Arc::clone(&ids), Arc::clone(&stop));
    let sampler = sample_waits(port, Arc::clone(&stop));
    let mut segments = Vec::new();
    let mut segment = |kind: Kind, run: &mut dyn FnMut() -> usize| {
        let from = Instant::now();
        let jobs = run();
        segments.push(Segment {
            kind,
            from,
            to: Instant::now(),
            jobs,
        });
    };
    let mut alone = || {
        thread::sleep(Duration::from_secs(seconds));
        0
    };
    // The first saves after loading meet cold caches and set the hint bits of every row
    // they read: a warm-up, not measured.
    progress(&format!(
        "live load: {CLIENTS} clients saving instances; a warm-up alone, then {rounds} rounds of \
         segments of {seconds} s alone and with each kind of backfill"
    ));
    segment(Kind::WarmUp, &mut alone);
    for round in 1..=rounds {
        for backfill in KINDS {
            segment(Kind::Alone, &mut alone);
            progress(&format!(
                "live load: round {round} of {rounds}: backfill jobs for {seconds} s: {}",
                backfill.label()
            ));
            let (workers, throttle) = match backfill {
                Backfill::Default => (2, true),
                Backfill::OneWorker => (1, true),
                Backfill::Unthrottled => (2, false),
            };
            // Between segments: the saves meanwhile count for neither.
            set_workers_per_job(db, port, workers);
            set_setting(
                db,
                port,
                "backfill.adaptive_throttle",
                if throttle { "on" } else { "off" },
            );
            segment(Kind::During(backfill), &mut || {
                backfill_for(port, seconds, backfill)
            });
        }
    }
    segment(Kind::Alone, &mut alone);
    stop.store(true, Ordering::Relaxed);
    let saves: Vec<Save> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let samples = sampler.join().unwrap();
    set_workers_per_job(db, port, 2);
    set_setting(db, port, "backfill.adaptive_throttle", "on");

    let pick = |f: &dyn Fn(usize) -> bool| (0..segments.len()).map(f).collect::<Vec<bool>>();
    let alone_segments = pick(&|i| segments[i].kind == Kind::Alone);
    let compared = KINDS
        .iter()
        .map(|&backfill| {
            let its = |i: usize| segments[i].kind == Kind::During(backfill);
            Compared {
                backfill,
                jobs: segments
                    .iter()
                    .filter(|s| s.kind == Kind::During(backfill))
                    .map(|s| s.jobs)
                    .sum(),
                during: phase(&segments, &pick(&its), &saves, &samples),
                around: phase(
                    &segments,
                    &pick(&|i| {
                        segments[i].kind == Kind::Alone
                            && ((i > 0 && its(i - 1)) || (i + 1 < segments.len() && its(i + 1)))
                    }),
                    &saves,
                    &samples,
                ),
            }
        })
        .collect();
    let alone_p99s = (0..segments.len())
        .filter(|&i| alone_segments[i])
        .map(|i| phase(&segments, &pick(&|j| j == i), &saves, &samples).p99_ms)
        .collect();
    Report {
        rounds,
        seconds,
        alone: phase(&segments, &alone_segments, &saves, &samples),
        alone_p99s,
        compared,
    }
}

/// Jobs one after another, each filling a new key for every instance (as after a model
/// update), until `seconds` have passed and the last one has finished; how many ran.
fn backfill_for(port: u16, seconds: u64, backfill: Backfill) -> usize {
    let label = match backfill {
        Backfill::Default => "default",
        Backfill::OneWorker => "one_worker",
        Backfill::Unthrottled => "unthrottled",
    };
    // Every job of the run fills a key of its own.
    static KEYS_ADDED: AtomicUsize = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut jobs = 0;
    let mut admin = connect(port);
    while Instant::now() < deadline {
        let key = format!(
            "live_{label}_{}",
            KEYS_ADDED.fetch_add(1, Ordering::Relaxed)
        );
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
        "live application load ({CLIENTS} clients, SpiffWorkflow's save on random instances of the model, without a break), \
         {} rounds of segments of {} s: alone, then with each kind of backfill (jobs one after another), alone again; \
         each kind against the segments alone right before and after its own (ratio: its p99 over theirs)",
        report.rounds, report.seconds
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
    line("alone, every segment", &report.alone, None, None);
    for compared in &report.compared {
        line(
            compared.backfill.label(),
            &compared.during,
            Some(compared.jobs),
            Some(compared.ratio()),
        );
        line("  alone around it", &compared.around, None, None);
    }
    println!(
        "  p99 of each segment alone, in order: {}",
        report
            .alone_p99s
            .iter()
            .map(|p| format!("{p:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ratio = report.compared[0].ratio();
    println!(
        "  p99 during a default backfill / alone around it = {ratio:.2} (target <= 1.5: {})",
        if ratio <= 1.5 { "met" } else { "MISSED" },
    );
}
