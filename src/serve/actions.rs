//! The dashboard's actions — cancel, retry, change priority — only with
//! `--allow-actions`, POST only, each carrying the per-start action token
//! (a hidden field of the page's form, or the `X-Action-Token` header), so
//! that a page of another site cannot make a browser act: it can neither
//! read the token nor pass the `Origin` check. They do what the CLI does,
//! through the same functions: a cancel request in `var/spool/cancel/`, a
//! priority request in `var/spool/priority/`, `retry`'s move of the record
//! to `history/` and the task back to `in/`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde_json::json;
use spoolflow::model::names::TaskId;
use spoolflow::store::history;

use super::data::blocking;
use super::safety::{self, query_value};
use super::server::App;
use super::Refusal;
use crate::cli::{cancel as cli_cancel, priority as cli_priority, retry as cli_retry};

/// The header an API client sends the action token in.
const TOKEN_HEADER: &str = "x-action-token";

/// The checks every non-GET request passes before its handler: actions
/// allowed, and (when the browser names it) the same origin.
pub fn admit(app: &App, headers: &HeaderMap) -> Result<(), Refusal> {
    if !app.allow_actions {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "actions are off: start `spoolflow serve --allow-actions` to cancel, retry or change a priority",
        ));
    }
    let text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if let (Some(origin), Some(host)) = (text(header::ORIGIN), text(header::HOST)) {
        let same = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("an action from another origin ({origin}) is refused"),
            ));
        }
    }
    Ok(())
}

/// An action's request: its task id, checked, and its form fields, after
/// the action token was checked.
struct Action {
    id: TaskId,
    form: String,
}

impl Action {
    fn new(app: &App, raw: &str, headers: &HeaderMap, body: &Bytes) -> Result<Action, Refusal> {
        let form = String::from_utf8_lossy(body).into_owned();
        let given = headers
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| query_value(&form, "token"));
        if !given.is_some_and(|t| safety::same_secret(&t, &app.action_token)) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "the action token is missing or wrong (the one `spoolflow serve` printed at its start)",
            )
            .into_json());
        }
        let id = safety::task_id(raw).map_err(|e| Refusal::bad_request(e).into_json())?;
        Ok(Action { id, form })
    }

    fn field(&self, key: &str) -> Option<String> {
        query_value(&self.form, key).filter(|v| !v.is_empty())
    }

    /// A form of the page goes back to the task's page; an API client
    /// gets JSON.
    fn answer(&self, what: &str, file: String) -> Response {
        if self.field("back").is_some() {
            return Redirect::to(&format!("/tasks/{}?done={what}", self.id)).into_response();
        }
        (
            StatusCode::ACCEPTED,
            Json(json!({ "id": self.id.as_str(), "action": what, "file": file })),
        )
            .into_response()
    }
}

pub async fn cancel(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let a = Action::new(&app, &raw, &headers, &body)?;
    let (id, reason) = (a.id.clone(), a.field("reason"));
    let reason = reason.map(|r| r.chars().take(1000).collect::<String>());
    let file = blocking(move || {
        cli_cancel::request(&app.root, &id, reason.as_deref())
            .map(|p| app.root.relative(&p).display().to_string())
    })
    .await?
    .map_err(|f| Refusal::from_cli(f).into_json())?;
    Ok(a.answer("cancel", file))
}

pub async fn priority(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let a = Action::new(&app, &raw, &headers, &body)?;
    let p: i32 = a
        .field("priority")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| Refusal::bad_request("priority must be a whole number").into_json())?;
    let id = a.id.clone();
    let file = blocking(move || {
        cli_priority::request(&app.root, &id, p)
            .map(|p| app.root.relative(&p).display().to_string())
    })
    .await?
    .map_err(|f| Refusal::from_cli(f).into_json())?;
    Ok(a.answer("priority", file))
}

pub async fn retry(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let a = Action::new(&app, &raw, &headers, &body)?;
    let id = a.id.clone();
    let file = blocking(move || {
        history::retry(&app.root, &id)
            .map(|r| app.root.relative(&r.queued).display().to_string())
            .map_err(|e| {
                let f = crate::cli::Failure::new(cli_retry::code_of(&e), e);
                Refusal::from_cli(f).into_json()
            })
    })
    .await??;
    Ok(a.answer("retry", file))
}
