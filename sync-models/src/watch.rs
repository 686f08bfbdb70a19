//! `--watch`: a sync, then one after every change below the spec directory, until SIGTERM or
//! SIGINT. A change is whatever inotify reports outside hidden directories (.git): a model
//! saved in place or written elsewhere and renamed over it, a directory created, renamed or
//! removed. Events are gathered until the directory has been quiet for a moment (an editor's
//! save or a write-then-rename is several events), the directory is read again and compared
//! with what was last synced, and only what differs is sent: one line a model that changed.
//! A connection that fails is made again with back-off; after every new connection the whole
//! directory is synced, so a change made while the server was down is not lost.

use crate::connect::Target;
use crate::out;
use crate::pq::Client;
use crate::spec::{read_models, Models};
use crate::sync::sync;
use notify::{Event, EventKind, RecursiveMode, Watcher};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Quiet time that ends a burst of events.
const QUIET: Duration = Duration::from_millis(150);
/// Longest a burst is gathered: a directory written to without pause is still synced.
const BURST: Duration = Duration::from_secs(1);
/// How often the loop looks at the stop flag while nothing happens.
const TICK: Duration = Duration::from_millis(100);
/// Back-off between failed attempts: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_LAST: Duration = Duration::from_secs(10);

/// What the watch knows between changes.
struct Watch<'a> {
    spec_dir: &'a Path,
    target: &'a Target,
    client: Option<Client>,
    /// What the database was last told, by model id; `None` until a sync over the current
    /// connection succeeded (the next sync then sends every model).
    synced: Option<BTreeMap<String, Value>>,
    /// The unreadable files last reported, so that each is reported once a reason.
    reported: BTreeMap<String, String>,
    /// When a failed sync is tried again, and the wait after the next failure.
    retry: Option<Instant>,
    backoff: Duration,
}

pub fn watch(spec_dir: &Path, target: &Target) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    // Watching starts before the first sync, so that nothing changed during it is missed.
    let (sender, events) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(sender)
        .map_err(|e| format!("cannot watch {}: {e}", spec_dir.display()))?;
    watcher
        .watch(spec_dir, RecursiveMode::Recursive)
        .map_err(|e| format!("cannot watch {}: {e}", spec_dir.display()))?;
    eprintln!("backfill-sync-models: watching {}", spec_dir.display());
    let mut watch = Watch {
        spec_dir,
        target,
        client: None,
        synced: None,
        reported: BTreeMap::new(),
        retry: None,
        backoff: RETRY_FIRST,
    };
    let mut changed = true;
    while !stop.load(Ordering::Relaxed) {
        let retry_due = watch.retry.is_some_and(|at| Instant::now() >= at);
        if changed || retry_due {
            changed = false;
            watch.sync_changes();
        }
        match events.recv_timeout(TICK) {
            Ok(event) if watch.matters(&event) => {
                gather_burst(&events, &stop);
                changed = true;
            }
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("the watch on {} ended", spec_dir.display()))
            }
        }
    }
    eprintln!("backfill-sync-models: stopped by a signal");
    Ok(())
}

/// Reads events until none came for `QUIET`, for `BURST` at most.
fn gather_burst(events: &mpsc::Receiver<notify::Result<Event>>, stop: &AtomicBool) {
    let started = Instant::now();
    while started.elapsed() < BURST && !stop.load(Ordering::Relaxed) {
        if events.recv_timeout(QUIET).is_err() {
            return;
        }
    }
}

impl Watch<'_> {
    /// Whether `event` may change what the directory says: not a mere read, not in a hidden
    /// directory. An error of the watch itself (its queue overflowed) may hide anything.
    fn matters(&self, event: &notify::Result<Event>) -> bool {
        let Ok(event) = event else {
            return true;
        };
        if event.need_rescan() {
            return true;
        }
        let read_only = matches!(
            event.kind,
            EventKind::Access(notify::event::AccessKind::Open(_))
                | EventKind::Access(notify::event::AccessKind::Read)
                | EventKind::Access(notify::event::AccessKind::Close(
                    notify::event::AccessMode::Read
                ))
        );
        !read_only
            && event.paths.iter().any(|path| {
                !path
                    .strip_prefix(self.spec_dir)
                    .unwrap_or(path)
                    .components()
                    .any(|part| match part {
                        Component::Normal(name) => name.to_string_lossy().starts_with('.'),
                        _ => false,
                    })
            })
    }

    /// Syncs what changed since the last sync (everything after a new connection); on a
    /// failure, says why and sets the time of the next attempt.
    fn sync_changes(&mut self) {
        match self.try_sync() {
            Ok(()) => {
                self.retry = None;
                self.backoff = RETRY_FIRST;
            }
            Err(why) => {
                eprintln!(
                    "backfill-sync-models: {why}; trying again in {:.1} s",
                    self.backoff.as_secs_f64()
                );
                self.retry = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(RETRY_LAST);
            }
        }
    }

    fn try_sync(&mut self) -> Result<(), String> {
        let read = read_models(self.spec_dir)?;
        let now: BTreeMap<String, Value> = read
            .models
            .iter()
            .map(|model| {
                (
                    model["id"].as_str().unwrap_or_default().to_owned(),
                    model.clone(),
                )
            })
            .collect();
        let unreadable: Vec<(String, String)> = read
            .unreadable
            .iter()
            .filter(|(id, why)| self.reported.get(id) != Some(why))
            .cloned()
            .collect();
        let to_send: Vec<Value> = match &self.synced {
            None => read.models.clone(),
            Some(synced) => read
                .models
                .iter()
                .filter(|model| {
                    let id = model["id"].as_str().unwrap_or_default();
                    synced.get(id) != Some(*model)
                })
                .cloned()
                .collect(),
        };
        let removed: Vec<String> = match &self.synced {
            None => Vec::new(),
            Some(synced) => synced
                .keys()
                .filter(|id| {
                    !now.contains_key(*id) && !read.unreadable.iter().any(|(u, _)| u == *id)
                })
                .cloned()
                .collect(),
        };
        if self.synced.is_some()
            && to_send.is_empty()
            && unreadable.is_empty()
            && removed.is_empty()
        {
            return Ok(());
        }
        let client = match &mut self.client {
            Some(client) if !client.is_closed() => client,
            _ => {
                self.synced = None;
                self.client.insert(self.target.connect()?)
            }
        };
        // A full sync when the connection is new (the database may have been restored).
        let to_send = if self.synced.is_none() {
            read.models.clone()
        } else {
            to_send
        };
        let models = Models {
            models: to_send,
            unreadable: unreadable.clone(),
        };
        if let Err(e) = sync(client, &models, false) {
            if client.is_closed() {
                self.client = None;
                self.synced = None;
            }
            return Err(format!("sync failed: {e}"));
        }
        for id in &removed {
            out::line(&format!(
                "removed   {id} (its row in backfill.process_model stays: a sync removes nothing)"
            ));
        }
        self.reported = read.unreadable.into_iter().collect();
        self.synced = Some(now);
        Ok(())
    }
}
