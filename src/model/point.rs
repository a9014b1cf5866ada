//! Points (SPEC section 4): the [`Point`] wire type (one JSON line of
//! `var/log/tsk/<exid>.log`) and the [`Kind`]s of point the engine writes.

use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::names::{Exid, Nid, TaskId};
use crate::model::task::{timestamp, Object};

/// The points the engine writes (taskers may add informative ones of their
/// own, see [`Point::informative`], whose names are free).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Created,
    Offered,
    Allocated,
    Submitted,
    Started,
    Suspended,
    Refused,
    Uncompleted,
    Retried,
    Recovered,
    Completed,
    Failed,
    Aborted,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Created,
        Kind::Offered,
        Kind::Allocated,
        Kind::Submitted,
        Kind::Started,
        Kind::Suspended,
        Kind::Refused,
        Kind::Uncompleted,
        Kind::Retried,
        Kind::Recovered,
        Kind::Completed,
        Kind::Failed,
        Kind::Aborted,
    ];

    /// Whether a point of this kind ends a run of a tasker (or the life
    /// that a run belonged to).
    pub fn ends_a_run(self) -> bool {
        matches!(
            self,
            Kind::Created
                | Kind::Refused
                | Kind::Uncompleted
                | Kind::Retried
                | Kind::Recovered
                | Kind::Completed
                | Kind::Failed
                | Kind::Aborted
        )
    }

    /// The name written in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Created => "created",
            Kind::Offered => "offered",
            Kind::Allocated => "allocated",
            Kind::Submitted => "submitted",
            Kind::Started => "started",
            Kind::Suspended => "suspended",
            Kind::Refused => "refused",
            Kind::Uncompleted => "uncompleted",
            Kind::Retried => "retried",
            Kind::Recovered => "recovered",
            Kind::Completed => "completed",
            Kind::Failed => "failed",
            Kind::Aborted => "aborted",
        }
    }

    /// The kind a name in the log stands for.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether a point of this kind ends its task.
    pub fn is_final(self) -> bool {
        matches!(self, Kind::Completed | Kind::Failed | Kind::Aborted)
    }

    /// Whether a point named `name` ends its task.
    pub fn is_final_name(name: &str) -> bool {
        Kind::parse(name).is_some_and(Kind::is_final)
    }
}

/// One status point of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Point {
    /// When: RFC 3339, UTC, microseconds (`2026-11-22T10:00:00.123456Z`).
    pub ts: String,
    /// The task's id (a flow's id for the flow's nodes).
    pub id: TaskId,
    /// The execution's id: the task's own, or its flow's.
    pub exid: Exid,
    /// The node: `0` for a standalone task.
    pub nid: Nid,
    /// The point's name: one of the engine's (`created`, `offered`,
    /// `allocated`, `started`, `suspended`, `refused`, `uncompleted`,
    /// `retried`, `recovered`, `completed`, `failed`, `aborted`) or a
    /// tasker's own (with `"source": "tasker"`).
    #[schemars(length(min = 1, max = 64))]
    pub point: String,
    /// The point's other fields (`taskee`, `tasker`, `attempt`, `pid`,
    /// `offer`, `reason`, `error`, `delay`, …).
    #[serde(flatten)]
    pub fields: Object,
}

impl Point {
    /// A point of the engine's, stamped now.
    pub fn new(kind: Kind, id: &TaskId, exid: &Exid, nid: &Nid) -> Point {
        Point::named(kind.as_str(), id, exid, nid)
    }

    /// The kind of an engine point; `None` for a name only a tasker uses.
    pub fn kind(&self) -> Option<Kind> {
        Kind::parse(&self.point)
    }

    fn named(point: &str, id: &TaskId, exid: &Exid, nid: &Nid) -> Point {
        Point {
            ts: timestamp(Utc::now()),
            id: id.clone(),
            exid: exid.clone(),
            nid: nid.clone(),
            point: point.to_string(),
            fields: Object::new(),
        }
    }

    /// Adds a field (builder style).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Point {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    /// An informative point of the engine's own (`"source": "engine"`):
    /// a note that changes nothing, such as `points-dropped` (a name
    /// outside [`Kind`], so that no reader takes it for a change of state).
    pub fn engine_note(name: &str, id: &TaskId, exid: &Exid, nid: &Nid) -> Point {
        Point::named(name, id, exid, nid).with("source", "engine")
    }

    /// A tasker's informative point (a line of `$SPOOLFLOW_POINTS`), tagged
    /// with the task's ids and `"source": "tasker"`. `None` when the line is
    /// not a JSON object with a string `point`, or names a final point
    /// (only the reply ends a task).
    pub fn informative(line: &[u8], id: &TaskId, exid: &Exid, nid: &Nid) -> Option<Point> {
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(line) else {
            return None;
        };
        let point = match obj.remove("point") {
            Some(Value::String(p))
                if !p.is_empty() && p.len() <= 64 && !Kind::is_final_name(&p) =>
            {
                p
            }
            _ => return None,
        };
        for k in ["ts", "id", "exid", "nid"] {
            obj.remove(k);
        }
        obj.insert("source".into(), "tasker".into());
        let mut p = Point::named(&point, id, exid, nid);
        p.fields = obj;
        Some(p)
    }

    /// The final point of a task, from its record.
    pub fn final_of(record: &crate::model::task::Record) -> Point {
        let mut p = Point::named(record.state.as_str(), &record.id, &record.exid, &record.nid)
            .with("attempt", record.attempts);
        if let Some(t) = &record.taskee {
            p = p.with("taskee", t.as_str());
        }
        if let Some(e) = &record.error {
            p = p
                .with("reason", e.message.as_str())
                .with("error", serde_json::to_value(e).unwrap_or_default());
        }
        p
    }

    /// The point as one JSON line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing a struct of strings and a JSON map cannot fail.
        let mut line = serde_json::to_vec(self).expect("a point serializes");
        line.push(b'\n');
        line
    }
}

/// Parses complete point lines.
pub fn parse_points(bytes: &[u8]) -> Vec<Point> {
    let complete = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(i) => &bytes[..=i],
        None => &[][..],
    };
    complete
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (TaskId, Nid) {
        ("t1".parse().unwrap(), Nid::root())
    }

    #[test]
    fn a_point_is_one_line_with_fields_in_order() {
        let (id, nid) = ids();
        let p = Point::new(Kind::Started, &id, &id, &nid)
            .with("taskee", "stamp")
            .with("pid", 42);
        let line = String::from_utf8(p.to_line()).unwrap();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        assert!(line.starts_with("{\"ts\":\""), "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], "t1");
        assert_eq!(v["exid"], "t1");
        assert_eq!(v["nid"], "0");
        assert_eq!(v["point"], "started");
        assert_eq!(v["pid"], 42);
    }

    #[test]
    fn informative_points_are_tagged_and_final_ones_dropped() {
        let (id, nid) = ids();
        let p = Point::informative(
            br#"{"point":"started","progress":0.4,"id":"x"}"#,
            &id,
            &id,
            &nid,
        )
        .unwrap();
        assert_eq!(p.id.as_str(), "t1");
        assert_eq!(p.fields["progress"], 0.4);
        assert_eq!(p.fields["source"], "tasker");
        for bad in [
            &br#"{"point":"completed"}"#[..],
            br#"{"point":"failed"}"#,
            br#"{"point":"aborted"}"#,
            br#"{"progress":1}"#,
            b"not json",
            b"[1]",
        ] {
            assert!(Point::informative(bad, &id, &id, &nid).is_none());
        }
    }
}
