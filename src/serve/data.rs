//! What the pages and `/api` read: the read layer's listing and status,
//! `list`'s query (built by the CLI's own flag parsing, so that the
//! filters mean the same), and the tasks a page shows. Blocking: the
//! handlers call these on tokio's blocking threads.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use spoolflow::layout::Root;
use spoolflow::read::status::{status, Status};
use spoolflow::read::summary::{ListState, Summary};
use spoolflow::read::{engine, tasks};

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

/// Filters, sorts and pages the root's tasks as `list` does.
pub fn tasks(root: &Root, q: &TaskQuery) -> Result<Page, Refusal> {
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
    let mut listing = tasks::listing(root, engine.as_ref());
    if let Some(text) = nonempty(&q.q) {
        listing.tasks.retain(|t| t.id.contains(text.trim()));
    }
    let (tasks, total) = query.apply(listing.tasks);
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

/// Reads the overview.
pub fn overview(root: &Root, now: DateTime<Utc>) -> Overview {
    let engine = engine::engine(root);
    let listing = tasks::listing(root, engine.as_ref());
    let st = status(&listing, engine.as_ref(), now);
    let minutes: Vec<Minute> = last_hour(&listing.tasks, now);
    let mut failures: Vec<&Summary> = listing
        .tasks
        .iter()
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

/// The rejected files, newest first (capped at [`MAX_PAGE`]).
pub fn rejected(root: &Root) -> Vec<Summary> {
    let q = TaskQuery {
        state: Some("rejected".into()),
        sort: Some("-ended".into()),
        limit: Some(MAX_PAGE),
        ..TaskQuery::default()
    };
    tasks(root, &q).map(|p| p.tasks).unwrap_or_default()
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
