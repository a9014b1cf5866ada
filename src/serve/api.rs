//! `/api/…`: every page's data as JSON, in the shapes of the CLI's
//! `--json` (built by the same functions): `/api/status` is `status
//! --json`, `/api/tasks` is `list --json` (the count before paging in the
//! `X-Total-Count` header), `/api/tasks/ID` is `show --json`,
//! `/api/tasks/ID/flow` is `flow --json`, `/api/tasks/ID/logs` is `logs
//! --json --stderr` (JSON lines); `/api/overview` adds the last hour and
//! the latest failures to the status; `/api/rejected` is `list --json
//! --state rejected`. Also the raw file of a task (`/tasks/ID/raw`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::Value;
use spoolflow::read::summary::Summary;
use spoolflow::read::{self, Place};

use super::data::{self, blocking, TaskQuery};
use super::safety;
use super::server::App;
use super::Refusal;
use crate::cli::{flow, list, show};

/// The largest raw file served whole (a task file is at most 16 MiB; a
/// record holds its payload and reply).
const RAW_LIMIT: u64 = 64 * 1024 * 1024;
/// The most of a points log and of a stderr log `/api/tasks/ID/logs` gives.
const LOG_LIMIT: u64 = 16 * 1024 * 1024;
/// How much of the end of a points log a task's page and `/api/tasks/ID`
/// read (a log may hold millions of points; the page shows the last).
pub(super) const POINTS_READ: u64 = 4 * 1024 * 1024;
const STDERR_LIMIT: u64 = 1024 * 1024;
/// How many bytes of records one page of `/api/tasks` gives whole (a
/// record may be tens of MiB, a page 1 000 tasks); past it, an ended
/// task is given as its summary with `record` naming where to read it.
const PAGE_RECORDS: u64 = 32 * 1024 * 1024;

/// One task of a `/api/tasks` page: what `list --json` gives (an ended
/// task's whole record), while the page's `budget` of record bytes lasts.
fn page_entry(root: &spoolflow::layout::Root, t: &Summary, budget: &mut u64) -> Value {
    use spoolflow::read::summary::ListState;
    let ended = matches!(
        t.state,
        ListState::Completed | ListState::Failed | ListState::Aborted
    );
    let size = match t.id.parse::<spoolflow::model::names::TaskId>() {
        Ok(id) if ended => [root.done_file(&id), root.failed_file(&id)]
            .iter()
            .find_map(|p| std::fs::symlink_metadata(p).ok())
            .map_or(0, |m| m.len()),
        _ => 0,
    };
    if size <= *budget {
        *budget -= size;
        return list::as_json(root, t);
    }
    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        o.insert("record".into(), format!("/api/tasks/{}", t.id).into());
    }
    v
}

pub async fn status(State(app): State<Arc<App>>) -> Result<Json<Value>, Refusal> {
    let o = blocking(move || data::overview(&app, Utc::now()))
        .await
        .map_err(Refusal::into_json)?;
    Ok(Json(serde_json::to_value(o.status).unwrap_or(Value::Null)))
}

pub async fn overview(State(app): State<Arc<App>>) -> Result<Json<data::Overview>, Refusal> {
    let o = blocking(move || data::overview(&app, Utc::now()))
        .await
        .map_err(Refusal::into_json)?;
    Ok(Json(o))
}

pub async fn tasks(
    State(app): State<Arc<App>>,
    Query(q): Query<TaskQuery>,
) -> Result<Response, Refusal> {
    let (out, total) = blocking(move || {
        let page = data::tasks(&app, &q)?;
        let mut budget = PAGE_RECORDS;
        let out: Vec<Value> = page
            .tasks
            .iter()
            .map(|t| page_entry(&app.root, t, &mut budget))
            .collect();
        Ok::<_, Refusal>((out, page.total))
    })
    .await
    .and_then(|r| r)
    .map_err(Refusal::into_json)?;
    let mut resp = Json(out).into_response();
    resp.headers_mut().insert(
        HeaderName::from_static("x-total-count"),
        HeaderValue::from(total),
    );
    Ok(resp)
}

pub async fn rejected(State(app): State<Arc<App>>) -> Result<Json<Vec<Value>>, Refusal> {
    blocking(move || {
        data::rejected(&app)
            .iter()
            .map(|t| list::as_json(&app.root, t))
            .collect()
    })
    .await
    .map(Json)
    .map_err(Refusal::into_json)
}

pub async fn task(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, Refusal> {
    let id = safety::task_id(&raw).map_err(|e| Refusal::bad_request(e).into_json())?;
    blocking(move || show::load_recent(&app.root, &id, POINTS_READ).map(|s| show::as_json(&s)))
        .await
        .and_then(|r| r.map_err(Refusal::from_cli))
        .map(Json)
        .map_err(Refusal::into_json)
}

pub async fn flow(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, Refusal> {
    let id = safety::task_id(&raw).map_err(|e| Refusal::bad_request(e).into_json())?;
    blocking(move || flow::load(&app.root, &id).map(|s| flow::as_json(&id, &s)))
        .await
        .and_then(|r| r.map_err(Refusal::from_cli))
        .map(Json)
        .map_err(Refusal::into_json)
}

pub async fn logs(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    let id = safety::task_id(&raw).map_err(|e| Refusal::bad_request(e).into_json())?;
    let body = blocking(move || {
        let root = &app.root;
        let log = root.points_log(&id);
        if !log.exists() && read::find(root, &id).ok().flatten().is_none() {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("unknown exid {id}"),
            ));
        }
        let mut out = read::find::read_tail(&log, LOG_LIMIT).unwrap_or_default();
        let err = read::find::read_tail(&root.stderr_log(&id), STDERR_LIMIT).unwrap_or_default();
        for l in err.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let line = serde_json::json!({ "stderr": String::from_utf8_lossy(l) });
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
        }
        Ok(out)
    })
    .await
    .and_then(|r| r)
    .map_err(Refusal::into_json)?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// The task's file as it is: its record, or its task file while it has
/// not ended, or the rejected file.
pub async fn raw(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    let id = safety::task_id(&raw).map_err(Refusal::bad_request)?;
    let bytes = blocking(move || {
        let root = &app.root;
        let path = match read::find(root, &id) {
            Ok(Some(Place::Ended(r))) => {
                if r.state == spoolflow::model::task::State::Completed {
                    root.done_file(&id)
                } else {
                    root.failed_file(&id)
                }
            }
            Ok(Some(Place::Run(p) | Place::In(p) | Place::Rejected { path: p, .. })) => p,
            Ok(None) => {
                return Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    format!("unknown id {id}"),
                ))
            }
            Err(e) => return Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
        };
        spoolflow::store::spool::read_capped(&path, RAW_LIMIT).map_err(|e| {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{} cannot be served: {e}", root.relative(&path).display()),
            )
        })
    })
    .await
    .and_then(|r| r)?;
    // Served as text: a browser never runs what a task file holds.
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}
