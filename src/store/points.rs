//! The append-only points logs `var/log/tsk/<exid>.log` (SPEC section 4).
//!
//! Each point is one `write` of one complete line on a file opened with
//! `O_APPEND`, so concurrent writers never interleave; readers ignore a torn
//! last line. Open handles live in a small bounded cache ([`PointsLog`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::model::names::Exid;
use crate::model::point::{parse_points, Point};

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
        if !self.open.contains_key(&point.exid) && self.open.len() >= self.capacity {
            // Evict everything: O(1) amortized, and a reopen is cheap.
            self.open.clear();
        }
        let file = match self.open.entry(point.exid.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(format!("{}.log", point.exid)))?,
            ),
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::names::{Nid, TaskId};
    use crate::model::point::Kind;

    fn ids() -> (TaskId, Nid) {
        ("t1".parse().unwrap(), Nid::root())
    }

    #[test]
    fn log_appends_and_reader_skips_torn_line() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = PointsLog::new(tmp.path().to_path_buf(), 1);
        let (id, nid) = ids();
        let other: TaskId = "t2".parse().unwrap();
        log.append(&Point::new(Kind::Created, &id, &id, &nid))
            .unwrap();
        log.append(&Point::new(Kind::Created, &other, &other, &nid))
            .unwrap();
        log.append(&Point::new(Kind::Offered, &id, &id, &nid))
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
