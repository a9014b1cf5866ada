//! The HTML pages but a task's ([`super::task_page`]): the layout, the
//! overview (counts by state, per domain and taskee, the engine, the last
//! hour as a chart, the latest failures), the tasks table (`list`'s
//! filters, sort and paging, a search by id), the rejected files, and the
//! embedded assets. maud escapes everything it is given; nothing is
//! written raw. The part of a page that changes is `<main id="live">`,
//! which the script replaces when the server says something happened.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use spoolflow::read::status::Counts;
use spoolflow::read::summary::{ListState, Summary};

use super::data::{self, blocking, TaskQuery};
use super::server::App;
use super::Refusal;
use crate::cli::output::{age, between, duration};

const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        SCRIPT,
    )
}

pub async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLE,
    )
}

/// A whole page: `exid` names the execution whose points refresh it
/// (empty: any change does).
pub fn layout(title: &str, exid: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · spoolflow" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/app.js" defer {}
            }
            body data-exid=(exid) {
                header {
                    nav {
                        a.brand href="/" { "spoolflow" }
                        a href="/" { "Overview" }
                        a href="/tasks" { "Tasks" }
                        a href="/rejected" { "Rejected" }
                        form.search action="/tasks" method="get" {
                            input type="search" name="q" placeholder="search by id" aria-label="search by id";
                        }
                        span #live-state title="live updates" { "○ offline" }
                    }
                }
                (body)
            }
        }
    }
}

/// A state as a coloured badge.
pub fn badge(state: impl std::fmt::Display) -> Markup {
    let s = state.to_string();
    html! { span class={ "badge " (s) } { (s) } }
}

/// A task's link (its id is shown escaped; the URL is built from an id
/// that names a task, and escaped as an attribute).
pub fn task_link(id: &str) -> Markup {
    html! { a.id href={ "/tasks/" (id) } { (id) } }
}

/// A rejected file's link: its page is `/tasks/<id>` for `<id>.json`;
/// another name links to the rejected files.
pub fn rejected_link(name: &str) -> Markup {
    match name
        .strip_suffix(".json")
        .filter(|stem| stem.parse::<spoolflow::model::names::TaskId>().is_ok())
    {
        Some(stem) => html! { a.id href={ "/tasks/" (stem) } { (name) } },
        None => html! { a.id href="/rejected" { (name) } },
    }
}

pub async fn overview(State(app): State<Arc<App>>) -> Result<Markup, Refusal> {
    let now = Utc::now();
    let o = blocking(move || data::overview(&app, now)).await?;
    let s = &o.status;
    let body = html! {
        main #live {
            h1 { "Overview" }
            section.engine {
                @match &s.engine {
                    Some(e) => {
                        span.badge.running { "engine running" }
                        " pid " b #engine-pid { (e.pid) }
                        ", up " (duration(e.uptime_secs as f64))
                        ", workers " b #workers { (e.workers_busy) "/" (e.workers.map_or("?".to_string(), |w| w.to_string())) } " busy"
                    }
                    None => { span.badge.stopped #engine-none { "no engine running" } }
                }
            }
            section.counts {
                @for st in ListState::ALL {
                    a.count href={ "/tasks?state=" (st) } id={ "count-" (st) } data-count=(s.total.get(st)) {
                        span.n { (s.total.get(st)) }
                        span.label { (st) }
                    }
                }
                a.count href="/tasks" #count-total data-count=(s.total.total()) {
                    span.n { (s.total.total()) } span.label { "total" }
                }
            }
            section {
                h2 { "The last hour" }
                (chart(&o.last_hour))
            }
            (failures(&o.latest_failures, now))
            section.split {
                (counts_table("domain", &s.domains))
                (counts_table("taskee", &s.taskees))
            }
            @if !s.unreadable.is_empty() {
                section {
                    h2 { "Unreadable files" }
                    ul { @for u in &s.unreadable { li { (u) } } }
                }
            }
        }
        aside {
            h2 { "Live points" }
            ol #events {}
        }
    };
    Ok(layout("Overview", "", body))
}

/// The latest failures with their reasons.
fn failures(list: &[Summary], now: DateTime<Utc>) -> Markup {
    html! {
        section {
            h2 { "Latest failures" }
            @if list.is_empty() {
                p.empty { "none" }
            } @else {
                table.failures {
                    thead { tr { th { "id" } th { "state" } th { "taskee" } th { "ended" } th { "reason" } } }
                    tbody {
                        @for t in list {
                            tr {
                                td { (task_link(&t.id)) }
                                td { (badge(t.state)) }
                                td { (t.taskee.as_deref().unwrap_or("-")) }
                                td { (age(t.ended_at.as_deref(), now)) }
                                td.reason { (error_text(t)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The last hour as bars (completed above, failed and aborted below).
fn chart(minutes: &[data::MinuteJson]) -> Markup {
    let top = minutes
        .iter()
        .map(|m| m.completed.max(m.failed))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let done: usize = minutes.iter().map(|m| m.completed).sum();
    let failed: usize = minutes.iter().map(|m| m.failed).sum();
    html! {
        p.chart-legend {
            span.ok { (done) " completed" } " · " span.ko { (failed) " failed or aborted" }
            " (one bar a minute, the latest on the right)"
        }
        svg.chart #chart viewBox="0 0 600 120" preserveAspectRatio="none" role="img" aria-label="tasks ended per minute over the last hour" {
            line x1="0" y1="60" x2="600" y2="60" class="axis" {}
            @for (i, m) in minutes.iter().enumerate() {
                @let h_ok = m.completed as f64 / top * 58.0;
                @let h_ko = m.failed as f64 / top * 58.0;
                rect class="ok" x=(i * 10 + 1) y=(format!("{:.1}", 60.0 - h_ok)) width="8" height=(format!("{h_ok:.1}")) {
                    title { (m.completed) " completed, " (60 - i) " min ago" }
                }
                rect class="ko" x=(i * 10 + 1) y="60" width="8" height=(format!("{h_ko:.1}")) {
                    title { (m.failed) " failed, " (60 - i) " min ago" }
                }
            }
        }
    }
}

fn counts_table(title: &str, map: &std::collections::BTreeMap<String, Counts>) -> Markup {
    html! {
        div {
            h2 { "By " (title) }
            @if map.is_empty() { p.empty { "none yet" } } @else {
                table.counts {
                    thead { tr { th { (title) } @for st in ListState::ALL { th { (st) } } th { "total" } } }
                    tbody {
                        @for (k, c) in map {
                            tr {
                                td { (k) }
                                @for st in ListState::ALL { td.num { (c.get(st)) } }
                                td.num { (c.total()) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A failure's kind and reason, one line.
pub fn error_text(t: &Summary) -> String {
    match (&t.error_kind, &t.reason) {
        (Some(k), Some(r)) => format!("{k}: {r}"),
        (Some(k), None) => k.clone(),
        (None, Some(r)) if t.state != ListState::Completed => r.clone(),
        _ => String::new(),
    }
}

pub async fn tasks(
    State(app): State<Arc<App>>,
    Query(q): Query<TaskQuery>,
) -> Result<Markup, Refusal> {
    let now = Utc::now();
    let q2 = q.clone();
    let page = blocking(move || data::tasks(&app, &q2)).await??;
    let body = html! {
        form.filters action="/tasks" method="get" {
            label { "state " select name="state" {
                option value="" { "any" }
                @for st in ListState::ALL {
                    option value=(st) selected[q.state.as_deref() == Some(st.as_str())] { (st) }
                }
            } }
            label { "domain " input name="domain" value=(q.domain.clone().unwrap_or_default()) size="14"; }
            label { "taskee " input name="taskee" value=(q.taskee.clone().unwrap_or_default()) size="10"; }
            label { "since " input name="since" value=(q.since.clone().unwrap_or_default()) size="4" placeholder="1h"; }
            label { "sort " select name="sort" {
                @for (v, l) in [("-created", "newest"), ("created", "oldest"), ("-ended", "ended, latest"), ("-priority", "priority"), ("id", "id")] {
                    option value=(v) selected[q.sort.as_deref() == Some(v)] { (l) }
                }
            } }
            label { "id " input name="q" value=(q.q.clone().unwrap_or_default()) size="12"; }
            button type="submit" { "show" }
        }
        main #live {
            h1 { "Tasks " small #task-total { (page.total) } }
            (task_table(&page.tasks, now))
            (pager(&q, page.total))
        }
    };
    Ok(layout("Tasks", "", body))
}

/// The tasks table.
pub fn task_table(tasks: &[Summary], now: DateTime<Utc>) -> Markup {
    html! {
        @if tasks.is_empty() { p.empty { "no tasks" } } @else {
            table.tasks {
                thead { tr {
                    th { "id" } th { "state" } th { "domain" } th { "taskee" } th { "attempts" }
                    th { "priority" } th { "created" } th { "took" } th { "error" }
                } }
                tbody {
                    @for t in tasks {
                        tr.task data-id=(t.id) data-state=(t.state) {
                            td {
                                @if t.state == ListState::Rejected { (rejected_link(&t.id)) } @else { (task_link(&t.id)) }
                                @if t.flow { " " span.flow { "flow" } }
                            }
                            td { (badge(t.state)) }
                            td { (t.domain) }
                            td { (t.taskee.as_deref().unwrap_or("-")) }
                            td.num { (t.attempts) }
                            td.num { (t.priority) }
                            td.when { (age(t.created_at.as_deref(), now)) }
                            td.num { (t.started_at.as_deref().and_then(|s| between(Some(s), t.ended_at.as_deref(), now)).map_or("-".to_string(), duration)) }
                            td.reason { (cut(&error_text(t), 120)) }
                        }
                    }
                }
            }
        }
    }
}

/// Previous and next page links, keeping the filters.
fn pager(q: &TaskQuery, total: usize) -> Markup {
    let (skip, limit) = (q.skip(), q.limit());
    let at = |skip: usize| {
        let mut q = q.clone();
        q.skip = Some(skip);
        format!("/tasks?{}", serde_urlencoded_lite(&q))
    };
    html! {
        p.pager {
            @if skip > 0 { a rel="prev" href=(at(skip.saturating_sub(limit))) { "← newer" } " " }
            (skip.min(total)) "–" (skip.saturating_add(limit).min(total)) " of " (total)
            @if skip.saturating_add(limit) < total { " " a rel="next" href=(at(skip + limit)) { "older →" } }
        }
    }
}

/// A query string from the table's parameters (the values escaped).
fn serde_urlencoded_lite(q: &TaskQuery) -> String {
    let v = serde_json::to_value(q).unwrap_or_default();
    let mut parts = Vec::new();
    if let Some(m) = v.as_object() {
        for (k, v) in m {
            let s = match v {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            parts.push(format!("{k}={}", encode(&s)));
        }
    }
    parts.join("&")
}

/// Percent-encodes all but unreserved characters.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A text cut to `max` characters.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    } else {
        s.to_string()
    }
}

pub async fn rejected(State(app): State<Arc<App>>) -> Result<Markup, Refusal> {
    let now = Utc::now();
    let list = blocking(move || data::rejected(&app)).await?;
    let body = html! {
        main #live {
            h1 { "Rejected " small { (list.len()) } }
            p { "Files refused at intake, kept in " code { "var/spool/rejected/" } " beside their reason." }
            @if list.is_empty() { p.empty { "none" } } @else {
                table.rejected {
                    thead { tr { th { "file" } th { "when" } th { "reason" } } }
                    tbody {
                        @for t in &list {
                            tr.task data-id=(t.id) {
                                td { (rejected_link(&t.id)) }
                                td { (age(t.ended_at.as_deref(), now)) }
                                td.reason { (t.reason.as_deref().unwrap_or("(no reason recorded)")) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("Rejected", "", body))
}
