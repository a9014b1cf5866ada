//! What the engine tells its operator (issue 9, items 11 and 15): one log
//! line per task outcome, built from the task's record by a pure function,
//! and the [`Progress`] counters that `spoolflow run --drain` draws on a
//! terminal. The counters are a few relaxed atomics the loop stores into
//! once per turn: the CLI reads them from its own thread, so drawing never
//! touches the engine's hot path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Engine;
use crate::model::task::{Record, State};

/// Counters of a running engine, shared with whoever draws them.
#[derive(Debug, Default)]
pub struct Progress {
    completed: AtomicU64,
    failed: AtomicU64,
    running: AtomicU64,
    queued: AtomicU64,
}

/// One reading of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Tasks completed since the engine started.
    pub completed: u64,
    /// Tasks failed or aborted since the engine started.
    pub failed: u64,
    /// Taskers running (or being offered a worker) now.
    pub running: u64,
    /// Tasks claimed and waiting (queued, delayed, parked on a limit).
    pub queued: u64,
}

impl Progress {
    /// The counters now.
    pub fn counts(&self) -> Counts {
        Counts {
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
        }
    }
}

impl Counts {
    /// The progress line: `12 done, 1 failed, 2 running, 40 queued, 8.3/s`
    /// (the rate: ended tasks per second over `elapsed`).
    pub fn line(&self, elapsed: Duration) -> String {
        let ended = self.completed + self.failed;
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { ended as f64 / secs } else { 0.0 };
        format!(
            "{} done, {} failed, {} running, {} queued, {rate:.1}/s",
            self.completed, self.failed, self.running, self.queued
        )
    }
}

impl Engine {
    /// A task ended (its record is built and goes to the writer): log its
    /// line and count it.
    pub(super) fn ended(&mut self, record: &Record) {
        // The line is built only when a subscriber wants it (tracing's
        // macros evaluate their arguments lazily): the benchmark, with
        // none, pays nothing.
        if record.state == State::Completed {
            tracing::info!("{}", outcome_line(record));
        } else {
            tracing::warn!("{}", outcome_line(record));
        }
        if let Some(p) = &self.options.progress {
            let c = if record.state == State::Completed {
                &p.completed
            } else {
                &p.failed
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stores how many nodes run and wait (once per turn of the loop).
    pub(super) fn count_live(&self) {
        if let Some(p) = &self.options.progress {
            let running = self.sched.running() as u64;
            let live = self.nodes.len() as u64;
            p.running.store(running, Ordering::Relaxed);
            p.queued
                .store(live.saturating_sub(running), Ordering::Relaxed);
        }
    }
}

/// The log line of a task's outcome: id, state, taskee, how long it ran
/// (from its first attempt's start to its end) and its attempts; for a
/// failure, the error kind and the first line of the reason:
///
/// `task a1 completed (taskee stamp, 1.20s, 1 attempt)`
/// `task b2 failed (taskee bad, 12ms, 3 attempts): work: exit status 3`
pub fn outcome_line(r: &Record) -> String {
    let taskee = r.taskee.as_ref().map_or("-", |t| t.as_str());
    let start = r.first_started_at.as_deref().or(r.started_at.as_deref());
    let took = match (start.and_then(parse), r.ended_at.as_deref().and_then(parse)) {
        (Some(s), Some(e)) => human((e - s).to_std().unwrap_or_default()),
        _ => "never started".to_string(),
    };
    let plural = if r.attempts == 1 { "" } else { "s" };
    let mut line = format!(
        "task {} {} (taskee {taskee}, {took}, {} attempt{plural})",
        r.id,
        r.state.as_str(),
        r.attempts
    );
    if let Some(e) = &r.error {
        let kind = serde_json::to_value(e.kind).unwrap_or_default();
        let first = e.message.lines().next().unwrap_or_default();
        line.push_str(&format!(": {}: {first}", kind.as_str().unwrap_or("?")));
    }
    line
}

fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A duration for people: `350ms`, `1.20s`, `3m12s`, `2h05m`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{:.2}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::{ErrorKind, TaskError};

    fn record(state: State, error: Option<TaskError>, attempts: u32) -> Record {
        serde_json::from_value(serde_json::json!({
            "id": "a1", "exid": "a1", "nid": "0", "domain": "org", "tasker": null,
            "taskee": "stamp", "tasker_path": null, "state": state, "reason": null,
            "error": error, "attempts": attempts, "offers": 1, "priority": 0,
            "headers": {}, "created_at": "2026-01-01T00:00:00.000000Z",
            "started_at": "2026-01-01T00:00:05.000000Z",
            "first_started_at": "2026-01-01T00:00:01.000000Z",
            "ended_at": "2026-01-01T00:00:06.500000Z", "payload": {}
        }))
        .unwrap()
    }

    #[test]
    fn outcome_lines_name_the_task_and_why_it_failed() {
        assert_eq!(
            outcome_line(&record(State::Completed, None, 1)),
            "task a1 completed (taskee stamp, 5.50s, 1 attempt)"
        );
        let err = TaskError::new(ErrorKind::Work, "exit status 3\nsecond line");
        assert_eq!(
            outcome_line(&record(State::Failed, Some(err), 3)),
            "task a1 failed (taskee stamp, 5.50s, 3 attempts): work: exit status 3"
        );
        let mut r = record(State::Aborted, None, 0);
        r.first_started_at = None;
        r.started_at = None;
        r.taskee = None;
        assert_eq!(
            outcome_line(&r),
            "task a1 aborted (taskee -, never started, 0 attempts)"
        );
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human(Duration::from_millis(350)), "350ms");
        assert_eq!(human(Duration::from_millis(1204)), "1.20s");
        assert_eq!(human(Duration::from_secs(192)), "3m12s");
        assert_eq!(human(Duration::from_secs(7500)), "2h05m");
    }

    #[test]
    fn the_progress_line_counts_and_rates() {
        let c = Counts {
            completed: 12,
            failed: 1,
            running: 2,
            queued: 40,
        };
        assert_eq!(
            c.line(Duration::from_secs(2)),
            "12 done, 1 failed, 2 running, 40 queued, 6.5/s"
        );
        assert_eq!(
            Counts::default().line(Duration::ZERO),
            "0 done, 0 failed, 0 running, 0 queued, 0.0/s"
        );
    }
}
