//! A task's page: its record or current state, the actions it allows
//! (with `--allow-actions`), its attempts as a timeline (offered → started
//! → ended, one bar each), a flow's tree with each node's state, taskee,
//! attempts and duration, the last lines of its stderr, its latest points
//! and its earlier attempts. Large values are cut (a payload past
//! [`PAYLOAD_SHOWN`] bytes shows its start and links to the raw file).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use chrono::Utc;
use maud::{html, Markup};
use serde_json::Value;
use spoolflow::model::point::Point;
use spoolflow::read::summary::ListState;
use spoolflow::read::{self, Place};

use super::data::blocking;
use super::pages::{badge, cut, layout};
use super::server::App;
use super::timeline::{bars, close_flow_nodes, placement, span, Bar};
use super::{safety, Refusal};
use crate::cli::output::{between, duration};
use crate::cli::{flow, show};

/// The most of a payload shown on the page.
const PAYLOAD_SHOWN: usize = 64 * 1024;
/// The most of the stderr log read, and the lines shown of it.
const STDERR_TAIL: u64 = 64 * 1024;
const STDERR_LINES: usize = 40;
/// The latest points shown, and the latest attempts drawn.
const POINTS_SHOWN: usize = 200;
const BARS_SHOWN: usize = 200;
/// The most nodes of a flow's tree drawn.
const NODES_SHOWN: usize = 1000;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct Done {
    done: Option<String>,
}

/// The notice of an action the page's form asked for (`?done=`); only
/// the dashboard's own actions: a link cannot put its text on the page.
fn action_done(done: &str) -> Option<&'static str> {
    match done {
        "cancel" => Some("Cancel requested."),
        "retry" => Some("Retry requested."),
        "priority" => Some("Priority change requested."),
        _ => None,
    }
}

/// What the page reads, off the async threads.
struct Read {
    shown: show::Shown,
    /// The attempts drawn, and how many there are.
    bars: (Vec<Bar>, usize),
    flow: Option<(Vec<flow::Row>, String)>,
    stderr: Vec<String>,
}

pub async fn task(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
    Query(done): Query<Done>,
) -> Result<Markup, Refusal> {
    let id = safety::task_id(&raw).map_err(Refusal::bad_request)?;
    let app2 = app.clone();
    let id2 = id.clone();
    let r = blocking(move || {
        let root = &app2.root;
        let shown =
            show::load_recent(root, &id2, super::api::POINTS_READ).map_err(Refusal::from_cli)?;
        let is_flow = match &shown.place {
            Place::Ended(r) => r.flow.is_some(),
            _ => shown.task.as_ref().is_some_and(|t| t.get("flow").is_some()),
        };
        let flow = if is_flow {
            flow::load(root, &id2)
                .ok()
                .map(|f| (flow::rows(&f), f.state.clone()))
        } else {
            None
        };
        let tail = read::find::read_tail(&root.stderr_log(&id2), STDERR_TAIL).unwrap_or_default();
        let text = String::from_utf8_lossy(&tail);
        let lines: Vec<&str> = text.lines().collect();
        let stderr = lines[lines.len().saturating_sub(STDERR_LINES)..]
            .iter()
            .map(|l| l.to_string())
            .collect();
        let bars = attempts(&shown.points, flow_nodes(&shown));
        Ok::<_, Refusal>(Read {
            shown,
            bars,
            flow,
            stderr,
        })
    })
    .await??;
    let s = &r.shown;
    let body = html! {
        main #live {
            h1 { "Task " span.id #task-id { (id) } " " span #task-state { (badge(s.state)) } }
            @if let Some(d) = done.done.as_deref().and_then(action_done) {
                p.notice { (d) }
            }
            (fields(&id, s))
            @if app.allow_actions { (actions(&app.action_token, &id, s, r.flow.is_some())) }
            section {
                h2 { "Attempts" }
                (timeline(&r.bars.0, r.bars.1))
            }
            @if let Some((rows, state)) = &r.flow {
                section {
                    h2 { "Flow " small { (state) } }
                    (tree(rows))
                }
            }
            section {
                h2 { "Stderr " small { "(the last lines)" } }
                @if r.stderr.is_empty() { p.empty { "nothing written" } }
                @else { pre.stderr #stderr { @for l in &r.stderr { (l) "\n" } } }
            }
            (points(&s.points))
            @if !s.history.is_empty() {
                section {
                    h2 { "Earlier attempts " small { "(history/)" } }
                    ul { @for h in &s.history {
                        li { (h.attempts) " attempt(s), " (h.state.as_str()) " at " (h.ended_at.as_deref().unwrap_or("-")) " "
                            (h.error.as_ref().map(|e| e.message.clone()).unwrap_or_default()) }
                    } }
                }
            }
        }
    };
    Ok(layout(&format!("Task {id}"), id.as_str(), body))
}

/// The record's fields, or the task file's while it has not ended.
fn fields(id: &spoolflow::model::names::TaskId, s: &show::Shown) -> Markup {
    let now = Utc::now();
    let raw = format!("/tasks/{id}/raw");
    match &s.place {
        Place::Ended(r) => {
            let first = r.first_started_at.as_deref().or(r.started_at.as_deref());
            let took = between(first, r.ended_at.as_deref(), now).map_or("-".into(), duration);
            html! {
                table.fields {
                    tr { th { "domain" } td { (r.domain.as_str()) } }
                    tr { th { "taskee" } td #taskee { (r.taskee.as_ref().map_or("-", |t| t.as_str())) } }
                    tr { th { "attempts" } td { (r.attempts) } }
                    tr { th { "priority" } td { (r.priority) } }
                    tr { th { "created" } td { (r.created_at.as_deref().unwrap_or("-")) } }
                    tr { th { "ended" } td { (r.ended_at.as_deref().unwrap_or("-")) } }
                    tr { th { "took" } td { (took) } }
                    @if let Some(e) = &r.error {
                        tr { th { "error" } td.reason #error {
                            (serde_json::to_value(e.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default())
                            ": " (e.message) } }
                    } @else if let Some(reason) = &r.reason {
                        tr { th { "reason" } td.reason { (reason) } }
                    }
                    tr { th { "record" } td { a href=(raw) { "raw file" } } }
                }
                (payload("payload", &Value::Object(r.payload.clone()), &raw))
            }
        }
        Place::Rejected { reason, .. } => html! {
            table.fields {
                tr { th { "reason" } td.reason #error { (reason.as_deref().unwrap_or("(none recorded)")) } }
                tr { th { "file" } td { a href=(raw) { "raw file" } } }
            }
        },
        _ => {
            let t = s.task.clone().unwrap_or(Value::Null);
            let get = |k: &str| {
                t.get(k).map_or("-".to_string(), |v| {
                    v.as_str().map_or(v.to_string(), str::to_string)
                })
            };
            // Where its Slurm nodes run (SPEC 14).
            let jobs = if s.state == spoolflow::read::summary::ListState::Running {
                spoolflow::read::summary::live_state(&s.points).jobs
            } else {
                Vec::new()
            };
            html! {
                table.fields {
                    tr { th { "domain" } td { (get("domain")) } }
                    tr { th { "priority" } td #priority { (get("priority")) } }
                    @for j in &jobs {
                        tr.slurm { th { "slurm " (j.nid) } td { (j.to_string()) } }
                    }
                    tr { th { "file" } td { a href=(raw) { "raw file" } } }
                }
                (payload("payload", t.get("payload").unwrap_or(&Value::Null), &raw))
            }
        }
    }
}

/// A JSON value, pretty, cut past [`PAYLOAD_SHOWN`] bytes.
fn payload(title: &str, v: &Value, raw: &str) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let whole = text.len();
    let mut end = whole.min(PAYLOAD_SHOWN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    html! {
        details.payload open[whole <= 4096] {
            summary { (title) " (" (whole) " bytes)" }
            pre #payload { (&text[..end]) }
            @if end < whole {
                p.cut #payload-cut { "cut at " (end) " of " (whole) " bytes: " a href=(raw) { "the raw file" } }
            }
        }
    }
}

/// The forms of the actions this task allows: cancel while it has not
/// ended, a new priority while it waits (the engine refuses one for a
/// running task or a flow), retry once it failed or was aborted.
fn actions(
    token: &str,
    id: &spoolflow::model::names::TaskId,
    s: &show::Shown,
    is_flow: bool,
) -> Markup {
    let live = !s.state.is_final();
    let waiting = matches!(s.state, ListState::Queued | ListState::Delayed) && !is_flow;
    let retry = matches!(s.state, ListState::Failed | ListState::Aborted);
    html! {
        section.actions {
            @if live {
                form method="post" action={ "/api/tasks/" (id) "/cancel" } {
                    input type="hidden" name="token" value=(token);
                    input type="hidden" name="back" value="1";
                    input name="reason" placeholder="reason (optional)" size="20";
                    button.danger type="submit" { "Cancel" }
                }
            }
            @if waiting {
                form method="post" action={ "/api/tasks/" (id) "/priority" } {
                    input type="hidden" name="token" value=(token);
                    input type="hidden" name="back" value="1";
                    input name="priority" type="number" size="6" required;
                    button type="submit" { "Set priority" }
                }
            }
            @if retry {
                form method="post" action={ "/api/tasks/" (id) "/retry" } {
                    input type="hidden" name="token" value=(token);
                    input type="hidden" name="back" value="1";
                    button type="submit" { "Retry" }
                }
            }
        }
    }
}

/// The nodes of an ended flow's record.
fn flow_nodes(s: &show::Shown) -> &[Value] {
    match &s.place {
        Place::Ended(r) => r.nodes.as_deref().unwrap_or_default(),
        _ => &[],
    }
}

/// The attempts drawn (the last [`BARS_SHOWN`]) and how many there are.
fn attempts(points: &[Point], nodes: &[Value]) -> (Vec<Bar>, usize) {
    let mut b: Vec<Bar> = bars(points);
    close_flow_nodes(&mut b, nodes, points);
    let all = b.len();
    b.drain(..all.saturating_sub(BARS_SHOWN));
    (b, all)
}

/// The attempts as bars on one time axis.
fn timeline(b: &[Bar], all: usize) -> Markup {
    let now = Utc::now();
    let Some((t0, t1)) = span(b, now) else {
        return html! { p.empty { "no attempt started yet" } };
    };
    let total = (t1 - t0).num_milliseconds() as f64 / 1000.0;
    html! {
        div.timeline #timeline {
            @for bar in b {
                @let (left, wait, run) = placement(bar, t0, t1, now);
                @let took = between(Some(&bar.started), bar.ended.as_deref(), now).map_or("-".into(), duration);
                div.row data-outcome=(bar.outcome) {
                    span.what { (bar.nid) " #" (bar.attempt) " " (bar.taskee.as_deref().unwrap_or("")) }
                    svg.track viewBox="0 0 100 10" preserveAspectRatio="none" {
                        rect.wait x=(format!("{left:.2}")) y="2" width=(format!("{wait:.2}")) height="6" {}
                        rect class={ "run " (bar.outcome) } x=(format!("{:.2}", left + wait)) y="1" width=(format!("{run:.2}")) height="8" {
                            title { (bar.outcome) ", " (took) }
                        }
                    }
                    span.outcome { (bar.outcome) " " (took) }
                }
            }
            p.axis {
                "0 — " (duration(total)) " (grey: offered, waiting to start)"
                @if all > b.len() { "; the last " (b.len()) " of " (all) " attempts" }
            }
        }
    }
}

/// A flow's tree: one row per node, indented by the tree's lines.
fn tree(rows: &[flow::Row]) -> Markup {
    html! {
        @if rows.len() > NODES_SHOWN {
            p.cut { "the first " (NODES_SHOWN) " of " (rows.len()) " nodes (all: /api/tasks/ID/flow)" }
        }
        table.tree #flow-tree {
            @for r in rows.iter().take(NODES_SHOWN) {
                tr.node data-nid=(r.nid) data-state=(r.state) {
                    td.lead { (r.lead) span.nid { (r.nid) } " " (r.label) }
                    td { @if !r.state.is_empty() { (badge(&r.state)) } }
                    td.detail { (r.detail) }
                }
            }
        }
    }
}

/// The latest points.
fn points(points: &[Point]) -> Markup {
    let from = points.len().saturating_sub(POINTS_SHOWN);
    html! {
        section {
            h2 { "Points " small { (points.len()) @if from > 0 { ", the last " (POINTS_SHOWN) } } }
            table.points #points {
                @for p in &points[from..] {
                    tr {
                        td.ts { (p.ts) }
                        td { (p.nid) }
                        td { (p.point) }
                        td.fields { (cut(&Value::Object(p.fields.clone()).to_string(), 300)) }
                    }
                }
            }
        }
    }
}
