//! Live updates: a `notify` watcher on the spool's directories and the
//! points logs feeds one thread, which turns what changed into events —
//! `point` (a line appended to a points log, as it is) and `change` (a
//! file came or went in `in/`, `run/`, `done/`, `failed/`, `rejected/`…)
//! — numbered, kept in a bounded buffer and broadcast to every
//! `/events` stream (Server-Sent Events). No loop polls: the thread
//! sleeps until the kernel reports a change.
//!
//! Event ids are `<start>-<n>`. A browser that reconnects sends the last
//! id it saw (`Last-Event-ID`) and gets the events after it from the
//! buffer; when they are gone (the buffer moved on, or the server
//! restarted) it gets a `reset` event instead and re-reads the page.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use notify::{RecursiveMode, Watcher};
use spoolflow::layout::Root;
use tokio::sync::broadcast;

use super::server::App;
use crate::cli::follow::Tail;

/// The events kept for reconnecting browsers: at most this many…
const BUFFER: usize = 10_000;
/// …and at most this many bytes of their text (a burst of long points
/// would otherwise keep up to `BUFFER` × [`LINE_LIMIT`], 640 MiB).
const BUFFER_BYTES: usize = 16 << 20;
/// A point line longer than this is announced without its text.
const LINE_LIMIT: usize = 64 * 1024;

/// One event.
#[derive(Debug, Clone)]
pub struct Ev {
    pub n: u64,
    pub kind: &'static str,
    pub data: Arc<str>,
}

/// The events' source: a numbered buffer and a broadcast channel.
pub struct Live {
    nonce: String,
    /// Bumped when `done/` or `failed/` changed (or events were lost):
    /// the records' summaries a reader keeps are stale then.
    records_gen: AtomicU64,
    /// The entries of `done/` and `failed/` changed (made, removed,
    /// written) since a reader last took them: their summaries are read
    /// again, whatever their inode (a number freed by `gc` may come back
    /// as the same id's new record).
    touched: Mutex<Touched>,
    /// Told when the engine's pid record changed (see `engine_watch`).
    engine: std::sync::OnceLock<super::engine_watch::Nudge>,
    tx: broadcast::Sender<Ev>,
    buf: Mutex<Kept>,
}

impl Live {
    /// Starts watching the root; the logs' current ends are taken as read
    /// before this returns, so that every point appended after it is an
    /// event.
    pub fn start(root: &Root) -> Result<Arc<Live>, String> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<PathBuf>>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Reading is an event too; only changes count. A lost event
            // (the kernel's queue overflowed) is an empty batch: a reset.
            match res {
                Ok(e) if e.need_rescan() => {
                    let _ = tx.send(Vec::new());
                }
                Ok(e) if !matches!(e.kind, notify::EventKind::Access(_)) => {
                    let _ = tx.send(e.paths);
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = tx.send(Vec::new());
                }
            }
        })
        .map_err(|e| format!("cannot watch the spool: {e}"))?;
        let logs = root.log_tsk();
        let watched = vec![
            logs.clone(),
            root.spool_in(),
            root.run(),
            root.done(),
            root.failed(),
            root.rejected(),
            root.cancel(),
            root.priority_requests(),
        ];
        for dir in &watched {
            // A directory missing (an old root, a log directory removed)
            // is watched once it is made again (its parent is watched).
            let _ = watcher.watch(dir, RecursiveMode::NonRecursive);
        }
        // Their parents, to see one of them removed, replaced or made.
        for parent in [root.spool(), root.dir().join("var/log")] {
            watcher
                .watch(&parent, RecursiveMode::NonRecursive)
                .map_err(|e| format!("cannot watch {}: {e}", parent.display()))?;
        }
        // The engine's pid record, written as an engine starts.
        let _ = watcher.watch(&root.dir().join("var/run"), RecursiveMode::NonRecursive);
        let tails = snapshot(&logs);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let (btx, _) = broadcast::channel(1024);
        let live = Arc::new(Live {
            nonce: format!("{started:x}"),
            records_gen: AtomicU64::new(0),
            touched: Mutex::new(Touched::default()),
            engine: std::sync::OnceLock::new(),
            tx: btx,
            buf: Mutex::new(Kept::default()),
        });
        let nudge = super::engine_watch::start(root.clone(), live.clone())?;
        let _ = live.engine.set(nudge);
        let feeder = live.clone();
        std::thread::Builder::new()
            .name("serve-watch".into())
            .spawn(move || {
                let mut watcher = watcher;
                feeder.feed(&logs, tails, &rx, &mut watcher, &watched);
            })
            .map_err(|e| format!("cannot start the watcher thread: {e}"))?;
        Ok(live)
    }

    /// The watcher's thread: wakes on each batch of changes. A watched
    /// directory removed, replaced or made again (an operator archiving
    /// `done/`) is watched afresh, and every page reads again.
    fn feed(
        &self,
        logs: &Path,
        mut tails: HashMap<PathBuf, Tail>,
        rx: &std::sync::mpsc::Receiver<Vec<PathBuf>>,
        watcher: &mut notify::RecommendedWatcher,
        watched: &[PathBuf],
    ) {
        while let Ok(mut paths) = rx.recv() {
            let mut lost = paths.is_empty();
            while let Ok(more) = rx.try_recv() {
                lost |= more.is_empty();
                paths.extend(more);
            }
            if lost {
                self.records_gen.fetch_add(1, Ordering::SeqCst);
                // Some changes went unreported: every log is read on, and
                // the pages re-read what they show.
                paths.extend(tails.keys().cloned());
                self.push("reset", "events were lost".to_string());
            }
            let mut dirs: HashSet<String> = HashSet::new();
            let mut touched: Vec<PathBuf> = Vec::new();
            let mut seen: HashSet<PathBuf> = HashSet::new();
            let mut replaced = false;
            for p in paths {
                if !seen.insert(p.clone()) {
                    continue;
                }
                if watched.contains(&p) {
                    let _ = watcher.unwatch(&p);
                    let _ = watcher.watch(&p, RecursiveMode::NonRecursive);
                    replaced = true;
                    continue;
                }
                let var = logs.parent().and_then(Path::parent);
                if var.is_some_and(|v| p == v.join("run/engine.lock")) {
                    if let Some(nudge) = self.engine.get() {
                        nudge.poke();
                    }
                    continue;
                }
                // Anything else in `var/spool/`, `var/log/` or `var/run/`
                // itself (the engine's log) is no change to show.
                if p.parent().and_then(Path::parent) == var {
                    continue;
                }
                let parent = p.parent().unwrap_or(Path::new(""));
                if parent == logs {
                    if p.extension().is_some_and(|e| e == "log") {
                        let tail = tails
                            .entry(p.clone())
                            .or_insert_with(|| Tail::new(p.clone()));
                        self.read_on(tail);
                    }
                } else if let Some(name) = parent.file_name() {
                    let name = name.to_string_lossy().into_owned();
                    if is_record(&p, &name) {
                        touched.push(p.clone());
                    }
                    dirs.insert(name);
                }
            }
            self.tell(replaced, dirs, touched);
        }
    }

    /// What one batch of changes tells the pages: a directory replaced
    /// (every page reads again), the records changed, each directory that
    /// changed.
    fn tell(&self, replaced: bool, dirs: HashSet<String>, touched: Vec<PathBuf>) {
        if replaced {
            // Bumped once the new directory is watched: what was
            // written into it before is read by the next request.
            self.records_gen.fetch_add(1, Ordering::SeqCst);
            self.push("reset", "a directory of the root was replaced".to_string());
        }
        if dirs.contains("done") || dirs.contains("failed") {
            // Told before the bump: a reader that sees the new
            // generation reads these again.
            if let Ok(mut t) = self.touched.lock() {
                t.add(touched);
            }
            self.records_gen.fetch_add(1, Ordering::SeqCst);
        }
        let mut dirs: Vec<String> = dirs.into_iter().collect();
        dirs.sort();
        for d in dirs {
            self.push_change(&d);
        }
    }

    /// Every whole line appended to a log, as `point` events.
    fn read_on(&self, tail: &mut Tail) {
        loop {
            for line in tail.lines() {
                self.push_point(&line);
            }
            if !tail.more() {
                break;
            }
        }
    }

    /// The records changed since the last call (see [`Live::touched`]).
    pub fn take_touched(&self) -> Touched {
        self.touched
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    }

    /// The records' generation (see [`Live::records_gen`]).
    pub fn records_generation(&self) -> u64 {
        self.records_gen.load(Ordering::SeqCst)
    }

    fn push_point(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line).replace('\r', "");
        if text.len() > LINE_LIMIT {
            self.push("change", r#"{"dir":"log"}"#.to_string());
        } else {
            self.push("point", text);
        }
    }

    /// A `change` event: what `dir` names changed, pages read again.
    pub fn push_change(&self, dir: &str) {
        self.push("change", serde_json::json!({ "dir": dir }).to_string());
    }

    fn push(&self, kind: &'static str, data: String) {
        let Ok(mut buf) = self.buf.lock() else { return };
        let ev = buf.push(kind, data.into(), BUFFER, BUFFER_BYTES);
        let _ = self.tx.send(ev);
    }

    /// What a browser that last saw `last` missed: the events after it
    /// and the number of the newest, or `None` when they cannot be given
    /// (a reset).
    fn since(&self, last: &str) -> Option<(Vec<Ev>, u64)> {
        let (nonce, n) = last.rsplit_once('-')?;
        let n: u64 = n.parse().ok()?;
        if nonce != self.nonce {
            return None;
        }
        self.buf.lock().ok()?.since(n)
    }

    fn event(&self, ev: &Ev) -> Event {
        Event::default()
            .id(format!("{}-{}", self.nonce, ev.n))
            .event(ev.kind)
            .data(&*ev.data)
    }
}

/// Whether `path`, an entry of the directory `dir` of the spool, is a
/// record file (not a writer's temporary).
fn is_record(path: &Path, dir: &str) -> bool {
    let ignored = path
        .file_name()
        .is_some_and(|n| spoolflow::store::intake::is_ignored_bytes(n.as_encoded_bytes()));
    (dir == "done" || dir == "failed") && !ignored
}

/// The record files changed since a reader last looked, bounded: past
/// [`Touched::MOST`] (a dashboard nobody reads while a million tasks end)
/// only that there were too many is kept, and the reader reads every
/// record again.
#[derive(Debug, Default)]
pub struct Touched {
    pub paths: HashSet<PathBuf>,
    pub too_many: bool,
}

impl Touched {
    const MOST: usize = 100_000;

    fn add(&mut self, paths: Vec<PathBuf>) {
        if self.too_many {
            return;
        }
        self.paths.extend(paths);
        if self.paths.len() > Self::MOST {
            self.paths = HashSet::new();
            self.too_many = true;
        }
    }
}

/// The numbered events kept for reconnecting browsers, bounded in number
/// and in bytes (the oldest go first).
#[derive(Debug, Default)]
struct Kept {
    /// The number of the newest event (0: none yet).
    last: u64,
    events: VecDeque<Ev>,
    /// The bytes of the kept events' text.
    bytes: usize,
}

impl Kept {
    /// Numbers and keeps an event, dropping the oldest beyond `count`
    /// events or `bytes` bytes (the newest is always kept).
    fn push(&mut self, kind: &'static str, data: Arc<str>, count: usize, bytes: usize) -> Ev {
        self.last += 1;
        let ev = Ev {
            n: self.last,
            kind,
            data,
        };
        self.bytes += ev.data.len();
        self.events.push_back(ev.clone());
        while self.events.len() > 1 && (self.events.len() > count || self.bytes > bytes) {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.data.len();
            }
        }
        ev
    }

    /// The events after number `n` and the newest's number, or `None`
    /// when some of them are no longer kept (or `n` is unknown).
    fn since(&self, n: u64) -> Option<(Vec<Ev>, u64)> {
        let oldest = self.events.front().map_or(self.last + 1, |e| e.n);
        if n > self.last || n + 1 < oldest {
            return None;
        }
        let missed = self.events.iter().filter(|e| e.n > n).cloned().collect();
        Some((missed, self.last))
    }
}

/// Every log's current end (read as read already).
fn snapshot(logs: &Path) -> HashMap<PathBuf, Tail> {
    std::fs::read_dir(logs)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let len = e.metadata().ok()?.len();
            p.extension()
                .is_some_and(|x| x == "log")
                .then(|| (p.clone(), Tail::at(p, len)))
        })
        .collect()
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct Resume {
    /// The last event id seen (for clients that cannot send
    /// `Last-Event-ID`).
    last: Option<String>,
}

/// `/events`: the stream.
pub async fn events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(resume): Query<Resume>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let live = app.live.clone();
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(resume.last);
    // The count read before subscribing, the buffer after: an event in
    // between is sent once (the stream skips what was sent already).
    let mut sent = live.buf.lock().map_or(0, |b| b.last);
    let rx = live.tx.subscribe();
    let mut first: Vec<Event> = vec![Event::default().event("hello").data(&live.nonce)];
    if let Some(last) = last {
        match live.since(&last) {
            Some((missed, upto)) => {
                sent = upto;
                first.extend(missed.iter().map(|e| live.event(e)));
            }
            None => first.push(Event::default().event("reset").data("reload")),
        }
    }
    let rest = stream::unfold((rx, sent, live), |(mut rx, sent, live)| async move {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.n <= sent => continue,
                Ok(ev) => {
                    let e = live.event(&ev);
                    return Some((e, (rx, ev.n, live)));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let e = Event::default().event("reset").data("reload");
                    return Some((e, (rx, sent, live)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let all = stream::iter(first).chain(rest).map(Ok);
    Sse::new(all).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::{Kept, Touched};
    use std::path::PathBuf;

    #[test]
    fn the_files_told_changed_are_kept_up_to_a_bound() {
        let mut t = Touched::default();
        t.add(vec![PathBuf::from("/r/done/a.json"); 3]);
        assert_eq!((t.paths.len(), t.too_many), (1, false));
        t.add(
            (0..Touched::MOST)
                .map(|i| PathBuf::from(format!("/r/done/{i}.json")))
                .collect(),
        );
        assert!(t.too_many && t.paths.is_empty());
        t.add(vec![PathBuf::from("/r/done/b.json")]);
        assert!(t.paths.is_empty());
    }

    #[test]
    fn the_kept_events_are_bounded_in_number_and_in_bytes() {
        let mut kept = Kept::default();
        for _ in 0..10 {
            kept.push("point", "x".repeat(100).into(), 5, 1_000_000);
        }
        assert_eq!(kept.events.len(), 5);
        assert_eq!(
            kept.since(5).map(|(m, last)| (m.len(), last)),
            Some((5, 10))
        );
        assert!(kept.since(4).is_none(), "event 5 is gone: a reset");
        assert!(kept.since(11).is_none(), "not yet given: a reset");
        assert!(kept.since(u64::MAX).is_none());

        let mut kept = Kept::default();
        for _ in 0..100 {
            kept.push("point", "y".repeat(1000).into(), 10_000, 10_500);
        }
        assert_eq!(kept.events.len(), 10);
        assert!(kept.bytes <= 10_500);
        assert_eq!(kept.since(100).map(|(m, _)| m.len()), Some(0));
        assert!(kept.since(89).is_none());
        // One event larger than the bound is kept alone.
        kept.push("point", "z".repeat(20_000).into(), 10_000, 10_500);
        assert_eq!(kept.events.len(), 1);
        assert_eq!(kept.since(100).map(|(m, _)| m.len()), Some(1));
    }
}
