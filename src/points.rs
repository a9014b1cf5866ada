//! Points (SPEC section 4): the [`Point`] type and the append-only points
//! log `var/log/tsk/<exid>.log`, one JSON line per point.
//!
//! Each point is one `write` of one complete line on a file opened with
//! `O_APPEND`, so concurrent writers never interleave; readers ignore a torn
//! last line. Open handles live in a small bounded cache ([`PointsLog`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::{Exid, Nid, TaskId};
use crate::task::{timestamp, Object};

/// The points the engine writes (taskers may add informative ones of their
/// own, see [`Point::informative`]).
pub mod kind {
    pub const CREATED: &str = "created";
    pub const OFFERED: &str = "offered";
    pub const ALLOCATED: &str = "allocated";
    pub const STARTED: &str = "started";
    pub const SUSPENDED: &str = "suspended";
    pub const REFUSED: &str = "refused";
    pub const UNCOMPLETED: &str = "uncompleted";
    pub const RETRIED: &str = "retried";
    pub const RECOVERED: &str = "recovered";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
    pub const ABORTED: &str = "aborted";

    /// Whether a point ends its task.
    pub fn is_final(point: &str) -> bool {
        matches!(point, COMPLETED | FAILED | ABORTED)
    }
}

/// One status point of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub ts: String,
    pub id: TaskId,
    pub exid: Exid,
    pub nid: Nid,
    pub point: String,
    #[serde(flatten)]
    pub fields: Object,
}

impl Point {
    /// A point stamped now.
    pub fn new(point: &str, id: &TaskId, exid: &Exid, nid: &Nid) -> Point {
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

    /// A tasker's informative point (a line of `$SPOOLFLOW_POINTS`), tagged
    /// with the task's ids and `"source": "tasker"`. `None` when the line is
    /// not a JSON object with a string `point`, or names a final point
    /// (only the reply ends a task).
    pub fn informative(line: &[u8], id: &TaskId, exid: &Exid, nid: &Nid) -> Option<Point> {
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(line) else {
            return None;
        };
        let point = match obj.remove("point") {
            Some(Value::String(p)) if !p.is_empty() && p.len() <= 64 && !kind::is_final(&p) => p,
            _ => return None,
        };
        for k in ["ts", "id", "exid", "nid"] {
            obj.remove(k);
        }
        obj.insert("source".into(), "tasker".into());
        let mut p = Point::new(&point, id, exid, nid);
        p.fields = obj;
        Some(p)
    }

    /// The final point of a task, from its record.
    pub fn final_of(record: &crate::task::Record) -> Point {
        let mut p = Point::new(record.state.as_str(), &record.id, &record.exid, &record.nid)
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

/// Appends points to per-execution logs, keeping at most `capacity` files
/// open.
#[derive(Debug)]
pub struct PointsLog {
    dir: PathBuf,
    open: HashMap<Exid, File>,
    capacity: usize,
}

impl PointsLog {
    pub fn new(dir: PathBuf, capacity: usize) -> PointsLog {
        PointsLog {
            dir,
            open: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Appends `point` to `<exid>.log` in one write.
    pub fn append(&mut self, point: &Point) -> io::Result<()> {
        let line = point.to_line();
        if !self.open.contains_key(&point.exid) {
            if self.open.len() >= self.capacity {
                // Evict everything: O(1) amortized, and a reopen is cheap.
                self.open.clear();
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("{}.log", point.exid)))?;
            self.open.insert(point.exid.clone(), file);
        }
        let file = self
            .open
            .get_mut(&point.exid)
            .expect("the handle was inserted above");
        file.write_all(&line)
    }

    /// Closes the handle of an execution that ended.
    pub fn close(&mut self, exid: &Exid) {
        self.open.remove(exid);
    }
}

/// Appends one complete line to a points log in one write (`O_APPEND`).
pub fn append_line(path: &Path, line: &[u8]) -> io::Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line)
}

/// Reads the points of a log, skipping a torn (unterminated or unparsable)
/// line.
pub fn read_points(path: &Path) -> io::Result<Vec<Point>> {
    let bytes = std::fs::read(path)?;
    Ok(parse_points(&bytes))
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
        let p = Point::new(kind::STARTED, &id, &id, &nid)
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

    #[test]
    fn log_appends_and_reader_skips_torn_line() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = PointsLog::new(tmp.path().to_path_buf(), 1);
        let (id, nid) = ids();
        let other: TaskId = "t2".parse().unwrap();
        log.append(&Point::new(kind::CREATED, &id, &id, &nid))
            .unwrap();
        log.append(&Point::new(kind::CREATED, &other, &other, &nid))
            .unwrap();
        log.append(&Point::new(kind::OFFERED, &id, &id, &nid))
            .unwrap();
        let path = tmp.path().join("t1.log");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"ts\":\"torn").unwrap();
        let points = read_points(&path).unwrap();
        assert_eq!(
            points.iter().map(|p| p.point.as_str()).collect::<Vec<_>>(),
            ["created", "offered"]
        );
    }
}
