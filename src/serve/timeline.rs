//! What the dashboard draws, computed apart from the drawing (pure, unit
//! tested): a task's attempts as bars (offered → started → ended) from its
//! points, and the last hour's throughput and failures per minute from the
//! tasks' summaries.

use chrono::{DateTime, Utc};
use spoolflow::model::point::{Kind, Point};
use spoolflow::read::summary::{ListState, Summary};

/// One attempt of one node: when it was offered, started and ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub nid: String,
    pub attempt: u32,
    pub taskee: Option<String>,
    pub offered: Option<String>,
    pub started: String,
    /// `None` while it runs.
    pub ended: Option<String>,
    /// The point that ended it (`completed`, `failed`, `retried`, …), or
    /// `running`.
    pub outcome: String,
}

/// The attempts in the points, in the order they started. An attempt ends
/// at the node's next engine point after `started` that is not
/// informative (`allocated`, `offered`, `created` do not end it).
pub fn bars(points: &[Point]) -> Vec<Bar> {
    use std::collections::HashMap;
    let mut bars: Vec<Bar> = Vec::new();
    let mut offered: HashMap<&str, &str> = HashMap::new();
    // Per node: its bars so far, and its open bar's index.
    let mut counted: HashMap<&str, u32> = HashMap::new();
    let mut open: HashMap<&str, usize> = HashMap::new();
    for p in points {
        if p.fields.get("source").and_then(|v| v.as_str()) == Some("tasker") {
            continue;
        }
        let Some(kind) = p.kind() else { continue };
        let nid = p.nid.as_str();
        match kind {
            Kind::Offered => {
                offered.insert(nid, p.ts.as_str());
            }
            Kind::Started => {
                let count = counted.entry(nid).or_insert(0);
                *count += 1;
                let attempt = p
                    .fields
                    .get("attempt")
                    .and_then(|v| v.as_u64())
                    .map_or(*count, |a| a as u32);
                open.insert(nid, bars.len());
                bars.push(Bar {
                    nid: nid.to_string(),
                    attempt,
                    taskee: p
                        .fields
                        .get("taskee")
                        .and_then(|v| v.as_str())
                        .map(str::to_string),
                    offered: offered.remove(nid).map(str::to_string),
                    started: p.ts.clone(),
                    ended: None,
                    outcome: "running".into(),
                });
            }
            Kind::Created | Kind::Allocated => {}
            _ => {
                if let Some(b) = open.remove(nid).and_then(|i| bars.get_mut(i)) {
                    b.ended = Some(p.ts.clone());
                    b.outcome = kind.as_str().to_string();
                }
            }
        }
    }
    bars
}

/// Ends the bars a flow's points leave open (a task node's end is in
/// the flow's record, `nodes`, not in its points), then, once the
/// execution ended, any left open at its final point.
pub fn close_flow_nodes(bars: &mut [Bar], nodes: &[serde_json::Value], points: &[Point]) {
    let by_nid: std::collections::HashMap<&str, &serde_json::Value> = nodes
        .iter()
        .filter_map(|n| Some((n.get("nid")?.as_str()?, n)))
        .collect();
    for b in bars.iter_mut().filter(|b| b.ended.is_none()) {
        if let Some(n) = by_nid.get(b.nid.as_str()) {
            let field = |k: &str| n.get(k).and_then(|v| v.as_str()).map(str::to_string);
            if let Some(ended) = field("ended_at") {
                b.ended = Some(ended);
                b.outcome = field("state").unwrap_or_else(|| "ended".into());
            }
        }
    }
    let last = points
        .iter()
        .rev()
        .find(|p| p.nid.as_str() == "0" && p.kind().is_some_and(Kind::is_final));
    if let Some(last) = last {
        for b in bars.iter_mut().filter(|b| b.ended.is_none()) {
            b.ended = Some(last.ts.clone());
            b.outcome = "ended".into();
        }
    }
}

/// Where a bar's parts fall on a timeline from `t0` to `t1`, in percent:
/// (left of the wait, width of the wait, width of the run).
pub fn placement(
    bar: &Bar,
    t0: DateTime<Utc>,
    t1: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (f64, f64, f64) {
    let span = (t1 - t0).num_milliseconds().max(1) as f64;
    let at =
        |ts: &str| parse(ts).map_or(0.0, |t| (t - t0).num_milliseconds() as f64 / span * 100.0);
    let started = at(&bar.started);
    let offered = bar.offered.as_deref().map_or(started, at).min(started);
    let ended = match &bar.ended {
        Some(e) => at(e),
        None => (now - t0).num_milliseconds() as f64 / span * 100.0,
    };
    let clamp = |x: f64| x.clamp(0.0, 100.0);
    let (o, s, e) = (clamp(offered), clamp(started), clamp(ended.max(started)));
    (o, s - o, (e - s).max(0.5))
}

/// The span a set of bars covers (their first offer to their last end,
/// or now for one that runs).
pub fn span(bars: &[Bar], now: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let mut first: Option<DateTime<Utc>> = None;
    let mut last: Option<DateTime<Utc>> = None;
    for b in bars {
        let start = b
            .offered
            .as_deref()
            .and_then(parse)
            .or_else(|| parse(&b.started));
        let end = match &b.ended {
            Some(e) => parse(e),
            None => Some(now),
        };
        first = match (first, start) {
            (Some(f), Some(s)) => Some(f.min(s)),
            (f, s) => f.or(s),
        };
        last = match (last, end) {
            (Some(l), Some(e)) => Some(l.max(e)),
            (l, e) => l.or(e),
        };
    }
    Some((first?, last?))
}

pub fn parse(ts: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Tasks ended in one minute of the last hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    pub completed: usize,
    /// Failed or aborted.
    pub failed: usize,
}

/// The last hour in 60 minutes, oldest first: how many tasks completed
/// and how many failed (or were aborted) in each.
pub fn last_hour<'a>(
    tasks: impl IntoIterator<Item = &'a Summary>,
    now: DateTime<Utc>,
) -> Vec<Minute> {
    let mut minutes = vec![Minute::default(); 60];
    for t in tasks {
        let failed = match t.state {
            ListState::Completed => false,
            ListState::Failed | ListState::Aborted => true,
            _ => continue,
        };
        let Some(ended) = t.ended_at.as_deref().and_then(parse) else {
            continue;
        };
        let ago = (now - ended).num_seconds();
        if !(0..3600).contains(&ago) {
            continue;
        }
        let m = &mut minutes[59 - (ago / 60) as usize];
        if failed {
            m.failed += 1;
        } else {
            m.completed += 1;
        }
    }
    minutes
}

#[cfg(test)]
mod tests {
    use super::*;
    use spoolflow::model::names::{Nid, TaskId};

    fn point(nid: &str, kind: Kind, ts: &str) -> Point {
        let id: TaskId = "t".parse().unwrap();
        let nid: Nid = nid.parse().unwrap();
        let mut p = Point::new(kind, &id, &id, &nid).with("taskee", "stamp");
        p.ts = ts.into();
        p
    }

    #[test]
    fn each_attempt_is_a_bar_from_its_offer_to_its_end() {
        let points = vec![
            point("0", Kind::Created, "2026-01-01T00:00:00Z"),
            point("0", Kind::Offered, "2026-01-01T00:00:01Z"),
            point("0", Kind::Started, "2026-01-01T00:00:02Z"),
            point("0", Kind::Retried, "2026-01-01T00:00:03Z"),
            point("0", Kind::Offered, "2026-01-01T00:00:04Z"),
            point("0", Kind::Started, "2026-01-01T00:00:05Z"),
        ];
        let b = bars(&points);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].offered.as_deref(), Some("2026-01-01T00:00:01Z"));
        assert_eq!((b[0].attempt, b[0].outcome.as_str()), (1, "retried"));
        assert_eq!(b[1].attempt, 2);
        assert_eq!(
            (b[1].ended.as_deref(), b[1].outcome.as_str()),
            (None, "running")
        );
        let now = parse("2026-01-01T00:00:09Z").unwrap();
        let (t0, t1) = span(&b, now).unwrap();
        assert_eq!((t1 - t0).num_seconds(), 8);
        let (left, wait, run) = placement(&b[0], t0, t1, now);
        assert_eq!((left, wait, run), (0.0, 12.5, 12.5));
    }

    #[test]
    fn a_flows_task_nodes_end_as_its_record_says() {
        let points = vec![
            point("0_0", Kind::Started, "2026-01-01T00:00:01Z"),
            point("0_1", Kind::Started, "2026-01-01T00:00:02Z"),
            point("0_2", Kind::Started, "2026-01-01T00:00:03Z"),
            point("0", Kind::Completed, "2026-01-01T00:00:05Z"),
        ];
        let mut b = bars(&points);
        let nodes = vec![
            serde_json::json!({"nid": "0_0", "state": "completed", "ended_at": "2026-01-01T00:00:02Z"}),
            serde_json::json!({"nid": "0_1", "state": "failed", "ended_at": "2026-01-01T00:00:04Z"}),
        ];
        close_flow_nodes(&mut b, &nodes, &points);
        let ends: Vec<(&str, Option<&str>)> = b
            .iter()
            .map(|x| (x.outcome.as_str(), x.ended.as_deref()))
            .collect();
        assert_eq!(
            ends,
            [
                ("completed", Some("2026-01-01T00:00:02Z")),
                ("failed", Some("2026-01-01T00:00:04Z")),
                ("ended", Some("2026-01-01T00:00:05Z")),
            ]
        );
    }

    #[test]
    fn the_last_hour_counts_by_minute() {
        let now = parse("2026-01-01T01:00:00Z").unwrap();
        let t = |state, ended: &str| Summary {
            id: "x".into(),
            state,
            domain: "d".into(),
            taskee: None,
            attempts: 1,
            priority: 0,
            created_at: None,
            started_at: None,
            ended_at: Some(ended.into()),
            error_kind: None,
            reason: None,
            flow: false,
            slurm: Vec::new(),
        };
        let tasks = [
            t(ListState::Completed, "2026-01-01T00:59:30Z"),
            t(ListState::Failed, "2026-01-01T00:59:10Z"),
            t(ListState::Aborted, "2026-01-01T00:00:30Z"),
            t(ListState::Completed, "2025-12-31T23:00:00Z"),
            t(ListState::Rejected, "2026-01-01T00:59:30Z"),
        ];
        let m = last_hour(&tasks, now);
        assert_eq!(m.len(), 60);
        assert_eq!(
            m[59],
            Minute {
                completed: 1,
                failed: 1
            }
        );
        assert_eq!(
            m[0],
            Minute {
                completed: 0,
                failed: 1
            }
        );
        assert_eq!(m.iter().map(|x| x.completed + x.failed).sum::<usize>(), 3);
    }
}
