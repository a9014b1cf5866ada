//! What the pages and `/api` read: the read layer's listing and status,
//! `list`'s query (built by the CLI's own flag parsing, so that the
//! filters mean the same), and the tasks a page shows. Blocking: the
//! handlers call these on tokio's blocking threads.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use spoolflow::layout::Root;
use spoolflow::read::status::{status_of, Status};
use spoolflow::read::summary::{ListState, Summary};
use spoolflow::read::{engine, index, tasks};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::server::App;
use super::sse::Live;

use super::timeline::{last_hour, Minute};
use super::Refusal;
use crate::cli::list;

/// The default page of the tasks table.
pub const PAGE: usize = 50;
/// The largest page served.
pub const MAX_PAGE: usize = 1000;
/// How many of the latest failures the overview lists.
const LATEST_FAILURES: usize = 10;

/// The tasks table's parameters (`/tasks?state=failed&sort=-ended…`),
/// the names of `list`'s flags.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct TaskQuery {
    /// One state or several, comma-separated.
    pub state: Option<String>,
    pub domain: Option<String>,
    pub taskee: Option<String>,
    pub since: Option<String>,
    pub sort: Option<String>,
    pub reverse: Option<bool>,
    pub limit: Option<usize>,
    pub skip: Option<usize>,
    /// Only ids holding this text (the search by id).
    pub q: Option<String>,
}

impl TaskQuery {
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE)
    }

    pub fn skip(&self) -> usize {
        self.skip.unwrap_or(0)
    }
}

/// A page of tasks and how many passed the filters.
pub struct Page {
    pub tasks: Vec<Summary>,
    pub total: usize,
}

/// The records' summaries kept between requests, with the watcher's
/// generation they were read at: brought up to date only once `done/` or
/// `failed/` changed, through the records index kept in memory (a change
/// lists the two directories and reads only the new records; the index
/// file is saved at most once per [`SAVE_EVERY`]). The tasks not ended
/// yet are read at each request (they are few, and change all the time).
#[derive(Default)]
pub struct RecordsCache {
    kept: Mutex<Option<Kept>>,
    /// Held while the records are read: requests that miss together
    /// wait for one read instead of each making its own.
    reading: Mutex<Reading>,
}

/// What the reader keeps: the index (loaded from its file at the first
/// read) and when it was last saved.
#[derive(Default)]
struct Reading {
    index: Option<index::Index>,
    saved: Option<Instant>,
}

/// How often, at most, the dashboard saves the records index for the
/// commands (they bring a stale one up to date themselves).
const SAVE_EVERY: Duration = Duration::from_secs(60);

struct Kept {
    generation: u64,
    summaries: Summaries,
    unreadable: Arc<Vec<String>>,
}

impl Reading {
    /// Every record's summary (shared with the index, not copied), the
    /// index brought up to date and saved when it changed and was not
    /// saved lately; and the record files that could not be read.
    fn refresh(&mut self, root: &Root, live: &Live) -> (Vec<Arc<Summary>>, Vec<String>) {
        let touched = live.take_touched();
        if touched.too_many {
            // Too many changes went by to name: every record read again.
            self.index = Some(index::Index::default());
        }
        let index = self.index.get_or_insert_with(|| index::Index::load(root));
        for path in &touched.paths {
            index.forget(path);
        }
        let (changed, unreadable) = index.refresh(root);
        let due = self.saved.is_none_or(|at| at.elapsed() >= SAVE_EVERY);
        if changed && due {
            // Best effort: a cache that cannot be saved is rebuilt.
            let _ = index.save(root);
            self.saved = Some(Instant::now());
        }
        let mut summaries: Vec<Arc<Summary>> = index.summaries().cloned().collect();
        // In memory order: each request walks them all, and walking them
        // in the index's hash order misses the cache at every step.
        summaries.sort_unstable_by_key(|s| Arc::as_ptr(s) as usize);
        (summaries, unreadable)
    }
}

/// The records' summaries, shared.
pub type Summaries = Arc<Vec<Arc<Summary>>>;

impl RecordsCache {
    /// The records' summaries (kept or read now) and the files that
    /// could not be read.
    fn records(&self, root: &Root, live: &Live) -> (Summaries, Arc<Vec<String>>) {
        // The generation is read before the records: a change during the
        // read bumps it, and the next request reads again.
        let generation = live.records_generation();
        let hit = || {
            self.kept.lock().ok().and_then(|k| {
                k.as_ref()
                    .filter(|k| k.generation == generation)
                    .map(|k| (k.summaries.clone(), k.unreadable.clone()))
            })
        };
        if let Some(h) = hit() {
            return h;
        }
        let mut reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        hit().unwrap_or_else(|| {
            let (summaries, unreadable) = reading.refresh(root, live);
            let (summaries, unreadable) = (Arc::new(summaries), Arc::new(unreadable));
            if let Ok(mut k) = self.kept.lock() {
                // A newer read kept meanwhile stays.
                if k.as_ref().is_some_and(|k| k.generation > generation) {
                    return (summaries, unreadable);
                }
                *k = Some(Kept {
                    generation,
                    summaries: summaries.clone(),
                    unreadable: unreadable.clone(),
                });
            }
            (summaries, unreadable)
        })
    }

    /// Reads the records' summaries ahead of the first request.
    pub fn warm(&self, root: &Root, live: &Live) {
        let _ = self.records(root, live);
    }
}

/// Filters, sorts and pages the root's tasks as `list` does.
pub fn tasks(app: &App, q: &TaskQuery) -> Result<Page, Refusal> {
    let root = &app.root;
    let nonempty = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
    let args = list::Args {
        state: nonempty(&q.state).into_iter().collect(),
        domain: nonempty(&q.domain),
        taskee: nonempty(&q.taskee),
        since: nonempty(&q.since),
        sort: nonempty(&q.sort).unwrap_or_else(|| "-created".into()),
        reverse: q.reverse.unwrap_or(false),
        limit: Some(q.limit()),
        skip: q.skip(),
        json: true,
    };
    let query = list::query(&args, Utc::now()).map_err(|f| Refusal::bad_request(f.message))?;
    let engine = engine::engine(root);
    let (records, _) = app.records.records(root, &app.live);
    let unended = tasks::unended(root, engine.as_ref());
    let text = nonempty(&q.q);
    let text = text.as_deref().map(str::trim);
    // Filtered by reference, and only the page cloned.
    let mut kept: Vec<&Summary> = records
        .iter()
        .map(|s| s.as_ref())
        .chain(unended.tasks.iter())
        .filter(|t| query.keeps(t) && text.is_none_or(|x| t.id.contains(x)))
        .collect();
    let total = kept.len();
    let end = query.skip.saturating_add(q.limit()).min(total);
    if end > 0 && end < total {
        // Only the first `end` need sorting.
        kept.select_nth_unstable_by(end - 1, |a, b| query.compare(a, b));
        kept.truncate(end);
    }
    kept.sort_by(|a, b| query.compare(a, b));
    let tasks = kept.into_iter().skip(query.skip).cloned().collect();
    Ok(Page { tasks, total })
}

/// What the overview shows.
#[derive(Serialize)]
pub struct Overview {
    /// `status --json`.
    pub status: Status,
    /// The last hour per minute, oldest first.
    pub last_hour: Vec<MinuteJson>,
    /// The latest failed or aborted tasks, newest first (their summaries).
    pub latest_failures: Vec<Summary>,
}

#[derive(Serialize)]
pub struct MinuteJson {
    pub completed: usize,
    pub failed: usize,
}

/// Reads the overview (the records by reference: none is copied).
pub fn overview(app: &App, now: DateTime<Utc>) -> Overview {
    let root = &app.root;
    let engine = engine::engine(root);
    let (records, unreadable) = app.records.records(root, &app.live);
    let unended = tasks::unended(root, engine.as_ref());
    let all = || {
        records
            .iter()
            .map(|s| s.as_ref())
            .chain(unended.tasks.iter())
    };
    let mut unreadable = unreadable.to_vec();
    unreadable.extend(unended.unreadable.iter().cloned());
    let st = status_of(
        all(),
        unended.running_nodes,
        unreadable,
        engine.as_ref(),
        now,
    );
    let minutes: Vec<Minute> = last_hour(all(), now);
    let mut failures: Vec<&Summary> = all()
        .filter(|t| matches!(t.state, ListState::Failed | ListState::Aborted))
        .collect();
    failures.sort_by(|a, b| b.ended_at.cmp(&a.ended_at).then_with(|| a.id.cmp(&b.id)));
    failures.truncate(LATEST_FAILURES);
    Overview {
        status: st,
        last_hour: minutes
            .into_iter()
            .map(|m| MinuteJson {
                completed: m.completed,
                failed: m.failed,
            })
            .collect(),
        latest_failures: failures.into_iter().cloned().collect(),
    }
}

/// The rejected files, task files and requests alike, newest first
/// (capped at [`MAX_PAGE`]).
pub fn rejected(app: &App) -> Vec<Summary> {
    let engine = engine::engine(&app.root);
    let unended = tasks::unended(&app.root, engine.as_ref());
    let mut files: Vec<Summary> = unended
        .tasks
        .into_iter()
        .filter(|t| t.state == ListState::Rejected)
        .chain(unended.requests)
        .collect();
    files.sort_by(|a, b| b.ended_at.cmp(&a.ended_at).then_with(|| a.id.cmp(&b.id)));
    files.truncate(MAX_PAGE);
    files
}

/// Runs blocking reads off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Refusal::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("the read failed: {e}"),
        )
    })
}
