//! The application next to a backfill, measured as a user meets it: a server with PostgreSQL's
//! default settings (scripts/bench starts one for this part), four clients doing SpiffWorkflow's
//! save of an instance (update the instance row, look up its metadata row by key, update it or
//! insert it when absent, commit) on random instances of the model, back to back for the whole
//! run, while the benchmark goes through rounds of:
//!
//! 1. a segment alone (`seconds`);
//! 2. a default backfill of two new keys for every instance of the model (the model UPDATE, then
//!    the job until it has succeeded): the segment "during";
//! 3. a settle step, not measured: `VACUUM (ANALYZE)` of the metadata table and a `CHECKPOINT`,
//!    so that one job's aftermath (dead rows, dirty pages, full-page images after the next
//!    checkpoint) does not land in the segments compared;
//! 4. a segment alone (`seconds`).
//!
//! Each round's "during" is compared with its two segments alone, pooled: the saves' p99 (a
//! ratio of at most 1.2 is the target) and the saves per second (at least 0.9). The rounds
//! run on fresh tables (the data is loaded for each run, then vacuumed, analyzed and
//! checkpointed, and the clients warm the caches for a segment that is not measured), so the
//! first round is the first job on those tables. Before the clients start, the same job runs
//! once on the idle server: a job under load is compared with it (how much longer it took).
//!
//! The same on the extension's own tables and on SpiffWorkflow's (json text documents of about
//! 27 KB, where reading a document costs more CPU). The instances' own metadata key (the one
//! the saves write) is there for every instance before the clients start. What the clients'
//! statements wait on is sampled in every segment, to say where the application's time goes
//! during a backfill.

use crate::{connect, progress, spiff};
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const CLIENTS: usize = 4;
pub const TARGET_P99_RATIO: f64 = 1.2;
pub const TARGET_SAVES_RATIO: f64 = 0.9;

/// Which tables the application and the jobs use.
#[derive(Clone, Copy, PartialEq)]
pub enum Tables {
    /// backfill.process_instance and its neighbours, the model `bench/model` (main.rs's data).
    Extension,
    /// SpiffWorkflow's schema in `app`, attached, the model `finance/invoice` (spiff.rs's data).
    Spiff,
}

impl Tables {
    fn label(self) -> &'static str {
        match self {
            Tables::Extension => "the extension's tables",
            Tables::Spiff => "SpiffWorkflow's tables (json text, ~27 KB documents)",
        }
    }

    fn schema(self) -> &'static str {
        match self {
            Tables::Extension => "backfill",
            Tables::Spiff => "app",
        }
    }

    fn model(self) -> &'static str {
        match self {
            Tables::Extension => crate::MODEL,
            Tables::Spiff => spiff::MODEL,
        }
    }

    /// The paths of the two keys each job fills (the keys get a name of their own per job).
    fn paths(self) -> [&'static str; 2] {
        match self {
            Tables::Extension => ["invoice.number", "invoice.customer.id"],
            Tables::Spiff => ["invoice.number", "customer.address.city"],
        }
    }
}

pub struct Phase {
    pub saves: usize,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// What the clients' statements were doing when sampled (wait event, or CPU), with the
    /// share of samples, most frequent first.
    pub waits: Vec<(String, f64)>,
    /// The same for the statements sampled when they had run 2 ms or more: where the slowest
    /// saves spend their time.
    pub slow_waits: Vec<(String, f64)>,
}

impl Phase {
    pub fn saves_per_second(&self) -> f64 {
        self.saves as f64 / self.seconds
    }
}

/// A sample of one client statement: when, its wait event (or CPU), whether it had run for
/// 2 ms or more.
type Sample = (Instant, String, bool);

/// The share of each label among `samples`, most frequent first.
fn shares<'a>(samples: impl Iterator<Item = &'a Sample>) -> Vec<(String, f64)> {
    let mut counts: std::collections::HashMap<&str, usize> = Default::default();
    let mut sampled = 0;
    for (_, label, _) in samples {
        *counts.entry(label).or_default() += 1;
        sampled += 1;
    }
    let mut shares: Vec<(String, f64)> = counts
        .into_iter()
        .map(|(label, n)| (label.to_string(), n as f64 / sampled.max(1) as f64))
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares
}

pub struct Round {
    /// The segments alone before and after the job, pooled.
    pub alone: Phase,
    pub alone_p99s: (f64, f64),
    pub during: Phase,
    /// "during" split: the saves up to the job's end (its batches), and those after, while
    /// the job's coverage was counted (`count_seconds` long).
    pub batches: (Phase, Phase),
    pub count_seconds: f64,
    pub job_seconds: f64,
}

impl Round {
    pub fn p99_ratio(&self) -> f64 {
        self.during.p99_ms / self.alone.p99_ms
    }

    pub fn saves_ratio(&self) -> f64 {
        self.during.saves_per_second() / self.alone.saves_per_second()
    }

    pub fn met(&self) -> bool {
        self.p99_ratio() <= TARGET_P99_RATIO && self.saves_ratio() >= TARGET_SAVES_RATIO
    }
}

pub struct Run {
    pub tables: Tables,
    pub instances: i64,
    /// The same job on the idle server, before the clients start.
    pub idle_job_seconds: f64,
    /// The WAL that job wrote (pg_stat_wal): bytes and full-page images.
    pub idle_job_wal: (f64, i64),
    pub rounds: Vec<Round>,
}

/// A stretch of the measurement: when it began and ended.
#[derive(Clone, Copy)]
struct Segment {
    from: Instant,
    to: Instant,
}

/// One SpiffWorkflow save of instance `id` in `schema`.
fn save(db: &mut Client, schema: &str, id: i32, n: u64) -> Result<(), postgres::Error> {
    let mut tx = db.transaction()?;
    let now = (n % 1_000_000_000) as i32;
    tx.execute(
        &format!("UPDATE {schema}.process_instance SET updated_at_in_seconds = $2::int4 WHERE id = $1::int4"),
        &[&id, &now],
    )?;
    let value = format!("live-{n}");
    let found = tx.query_opt(
        &format!(
            "SELECT id::int8 FROM {schema}.process_instance_metadata
              WHERE process_instance_id = $1::int4 AND key = 'live_status'"
        ),
        &[&id],
    )?;
    match found {
        Some(row) => {
            let row_id: i64 = row.get(0);
            tx.execute(
                &format!(
                    "UPDATE {schema}.process_instance_metadata SET value = $2, updated_at_in_seconds = $3::int4
                      WHERE id = $1::int8"
                ),
                &[&row_id, &value, &now],
            )?;
        }
        None => {
            tx.execute(
                &format!(
                    "INSERT INTO {schema}.process_instance_metadata
                            (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
                     VALUES ($1::int4, 'live_status', $2, $3::int4, $3::int4)"
                ),
                &[&id, &value, &now],
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
    schema: &'static str,
    ids: Arc<Vec<i32>>,
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
                    save(&mut db, schema, id, n)
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

/// The saves and wait samples that started within `segments`.
fn phase(segments: &[Segment], saves: &[Save], samples: &[Sample]) -> Phase {
    let within = |at: Instant| segments.iter().any(|s| s.from <= at && at < s.to);
    let mut latencies: Vec<f64> = saves
        .iter()
        .filter(|(at, _)| within(*at))
        .map(|(_, ms)| *ms)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let waits = shares(samples.iter().filter(|(at, _, _)| within(*at)));
    let slow_waits = shares(samples.iter().filter(|(at, _, slow)| *slow && within(*at)));
    Phase {
        saves: latencies.len(),
        seconds: segments.iter().map(|s| (s.to - s.from).as_secs_f64()).sum(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        waits,
        slow_waits,
    }
}

/// Samples, every 5 ms until `stop`, what the clients' running statements wait for (the
/// wait event, or "CPU" when none), with the time of the sample and whether the statement had
/// run 2 ms or more.
fn sample_waits(port: u16, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<Sample>> {
    thread::spawn(move || {
        let mut db = connect(port);
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let at = Instant::now();
            for row in db
                .query(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU'),
                            clock_timestamp() - query_start >= interval '2 ms'
                       FROM pg_stat_activity WHERE application_name = 'live' AND state = 'active'",
                    &[],
                )
                .unwrap()
            {
                samples.push((at, row.get(0), row.get(1)));
            }
            thread::sleep(Duration::from_millis(5));
        }
        samples
    })
}

/// Vacuums and analyzes the metadata table, then checkpoints: a job's aftermath, out of the
/// next segment.
fn settle(db: &mut Client, tables: Tables) {
    // Each on its own: VACUUM cannot run in a multi-statement query's transaction.
    db.batch_execute(&format!(
        "VACUUM (ANALYZE) {}.process_instance_metadata",
        tables.schema()
    ))
    .unwrap();
    db.batch_execute("CHECKPOINT").unwrap();
}

/// The model UPDATE adding two keys of their own (`job`-th of the run), then the job until it
/// has succeeded; its seconds from the UPDATE's commit to the job's end, on the server's clock.
fn backfill(db: &mut Client, tables: Tables, job: usize) -> Job {
    let [first, second] = tables.paths();
    let updated_at: String = db
        .query_one(
            &format!(
                r#"UPDATE backfill.process_model
                      SET metadata_extraction_paths = metadata_extraction_paths
                          || '[{{"key": "live_{job}_a", "path": "{first}"}}, {{"key": "live_{job}_b", "path": "{second}"}}]'
                    WHERE id = '{}'
                RETURNING clock_timestamp()::text"#,
                tables.model()
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let job: i64 = db
        .query_one(
            "SELECT max(id) FROM backfill.job WHERE parent_id IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    let state: String = db
        .query_one("SELECT backfill.wait($1, '10 min')", &[&job])
        .unwrap()
        .get(0);
    assert_eq!(state, "succeeded", "a live-load job ended {state}");
    // backfill.wait returns once the job's coverage is counted, in a transaction of its own
    // after the job's last: from finished_at to now.
    let row = db
        .query_one(
            "SELECT extract(epoch FROM finished_at - $1::text::timestamptz)::float8,
                    extract(epoch FROM clock_timestamp() - finished_at)::float8
               FROM backfill.job WHERE id = $2",
            &[&updated_at, &job],
        )
        .unwrap();
    Job {
        seconds: row.get(0),
        count_seconds: row.get(1),
    }
}

/// A job's times: from the model UPDATE to the job's end, then until its coverage was counted.
struct Job {
    seconds: f64,
    count_seconds: f64,
}

/// `rounds` rounds (see the module's comment) on `tables`, whose data the caller has just
/// loaded on the server at `port`.
pub fn run(port: u16, tables: Tables, seconds: u64, rounds: usize) -> Run {
    let mut db = connect(port);
    db.batch_execute(&format!(
        "UPDATE backfill.process_model SET metadata_extraction_paths = '[]' WHERE id = '{}'",
        tables.model()
    ))
    .unwrap();
    let ids: Arc<Vec<i32>> = Arc::new(
        db.query(
            &format!(
                "SELECT id::int4 FROM {}.process_instance WHERE process_model_identifier = $1",
                tables.schema()
            ),
            &[&tables.model()],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect(),
    );
    // The live engine has written the application's own key for every instance already (a
    // deployment in use): each save updates its row, as SpiffWorkflow's does. (Without them the
    // saves insert rows for minutes, and on SpiffWorkflow's tables the lookup's plan, made on
    // statistics that saw none, reads the index on `key` and goes through every row inserted
    // so far: the application's own slowdown, in the first round only.)
    db.batch_execute(&format!(
        "DELETE FROM {schema}.process_instance_metadata WHERE key = 'live_status';
         INSERT INTO {schema}.process_instance_metadata
                (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
         SELECT id, 'live_status', 'live-0', 1, 1 FROM {schema}.process_instance
          WHERE process_model_identifier = '{}' ORDER BY id",
        tables.model(),
        schema = tables.schema()
    ))
    .unwrap();
    settle(&mut db, tables);
    progress(&format!(
        "live load on {}: the job alone on the idle server",
        tables.label()
    ));
    let wal = |db: &mut Client| -> (f64, i64) {
        let row = db
            .query_one("SELECT wal_bytes::float8, wal_fpi FROM pg_stat_wal", &[])
            .unwrap();
        (row.get(0), row.get(1))
    };
    let wal_before = wal(&mut db);
    // Job 0 is the idle one; round r's is job r.
    let idle_job_seconds = backfill(&mut db, tables, 0).seconds;
    let wal_after = wal(&mut db);
    let idle_job_wal = (wal_after.0 - wal_before.0, wal_after.1 - wal_before.1);
    settle(&mut db, tables);

    let stop = Arc::new(AtomicBool::new(false));
    let handles = clients(port, tables.schema(), Arc::clone(&ids), Arc::clone(&stop));
    let sampler = sample_waits(port, Arc::clone(&stop));
    let alone = || {
        let from = Instant::now();
        thread::sleep(Duration::from_secs(seconds));
        Segment {
            from,
            to: Instant::now(),
        }
    };
    progress(&format!(
        "live load on {}: {CLIENTS} clients saving instances; a warm-up of {seconds} s, then \
         {rounds} rounds (alone, a backfill, settle, alone)",
        tables.label()
    ));
    alone();
    let mut segments = Vec::new();
    for round in 1..=rounds {
        let before = alone();
        progress(&format!(
            "live load: round {round} of {rounds}: the backfill"
        ));
        let from = Instant::now();
        let job = backfill(&mut db, tables, round);
        let during = Segment {
            from,
            to: Instant::now(),
        };
        settle(&mut db, tables);
        let after = alone();
        segments.push((before, during, after, job));
    }
    stop.store(true, Ordering::Relaxed);
    let saves: Vec<Save> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let samples = sampler.join().unwrap();
    let rounds = segments
        .into_iter()
        .map(|(before, during, after, job)| Round {
            batches: {
                let count_from = during.to - Duration::from_secs_f64(job.count_seconds);
                (
                    phase(
                        &[Segment {
                            from: during.from,
                            to: count_from,
                        }],
                        &saves,
                        &samples,
                    ),
                    phase(
                        &[Segment {
                            from: count_from,
                            to: during.to,
                        }],
                        &saves,
                        &samples,
                    ),
                )
            },
            count_seconds: job.count_seconds,
            alone: phase(&[before, after], &saves, &samples),
            alone_p99s: (
                phase(&[before], &saves, &samples).p99_ms,
                phase(&[after], &saves, &samples).p99_ms,
            ),
            during: phase(&[during], &saves, &samples),
            job_seconds: job.seconds,
        })
        .collect();
    Run {
        tables,
        instances: ids.len() as i64,
        idle_job_seconds,
        idle_job_wal,
        rounds,
    }
}

/// The labels of at least 1 % of the samples.
fn waits(waits: &[(String, f64)]) -> String {
    waits
        .iter()
        .filter(|(_, share)| *share >= 0.01)
        .map(|(label, share)| format!("{label} {:.0}%", share * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn print_header(seconds: u64) {
    println!();
    println!(
        "live application load: {CLIENTS} clients doing SpiffWorkflow's save on random instances of the model, \
         back to back, on a server with default settings; each round {seconds} s alone, a default backfill of \
         two new keys for every instance of the model, a settle step (VACUUM (ANALYZE) of the metadata table, \
         CHECKPOINT; not measured), {seconds} s alone. Targets in every round: p99 during / alone <= {TARGET_P99_RATIO}, \
         saves/s during / alone >= {TARGET_SAVES_RATIO}"
    );
}

pub fn print_run(n: usize, run: &Run) {
    println!(
        "  run {n} on {} ({} instances of the model; the job alone on the idle server {:.2} s, \
         {:.1} MB of WAL with {} full-page images)",
        run.tables.label(),
        run.instances,
        run.idle_job_seconds,
        run.idle_job_wal.0 / 1e6,
        run.idle_job_wal.1
    );
    for (r, round) in run.rounds.iter().enumerate() {
        println!(
            "    round {}: p50 alone {:.2} ms, during {:.2} ms   p99 alone {:.2} / {:.2} ms, during {:.2} ms: ratio {:.2}   \
             saves/s alone {:.0}, during {:.0}: ratio {:.2}   job {:.1} s ({:.1}x idle)   {}",
            r + 1,
            round.alone.p50_ms,
            round.during.p50_ms,
            round.alone_p99s.0,
            round.alone_p99s.1,
            round.during.p99_ms,
            round.p99_ratio(),
            round.alone.saves_per_second(),
            round.during.saves_per_second(),
            round.saves_ratio(),
            round.job_seconds,
            round.job_seconds / run.idle_job_seconds,
            if round.met() { "met" } else { "MISSED" }
        );
        println!(
            "      the job's batches: p99 {:.2} ms (ratio {:.2}), saves/s ratio {:.2}; then its coverage count, {:.0} ms: {} saves, p99 {:.2} ms",
            round.batches.0.p99_ms,
            round.batches.0.p99_ms / round.alone.p99_ms,
            round.batches.0.saves_per_second() / round.alone.saves_per_second(),
            round.count_seconds * 1000.0,
            round.batches.1.saves,
            round.batches.1.p99_ms,
        );
        println!(
            "      statements alone: {}; of those running 2 ms and more: {}",
            waits(&round.alone.waits),
            waits(&round.alone.slow_waits)
        );
        println!(
            "      statements during: {}; of those running 2 ms and more: {}",
            waits(&round.during.waits),
            waits(&round.during.slow_waits)
        );
    }
}

pub fn print_summary(runs: &[Run]) {
    let all: Vec<&Round> = runs.iter().flat_map(|r| &r.rounds).collect();
    let missed = all.iter().filter(|r| !r.met()).count();
    println!(
        "  every round met both targets: {} ({} of {} rounds missed; worst p99 ratio {:.2}, worst saves ratio {:.2}, \
         longest job under load {:.1}x its idle time)",
        if missed == 0 { "yes" } else { "NO" },
        missed,
        all.len(),
        all.iter().map(|r| r.p99_ratio()).fold(f64::MIN, f64::max),
        all.iter().map(|r| r.saves_ratio()).fold(f64::MAX, f64::min),
        runs.iter()
            .flat_map(|run| run.rounds.iter().map(|r| r.job_seconds / run.idle_job_seconds))
            .fold(f64::MIN, f64::max),
    );
}

pub fn print(runs: &[Run], seconds: u64) {
    print_header(seconds);
    for (n, run) in runs.iter().enumerate() {
        print_run(n + 1, run);
    }
    print_summary(runs);
}
