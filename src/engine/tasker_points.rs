//! Following a tasker's `$SPOOLFLOW_POINTS` file (SPEC 6, informative
//! points): [`PointsTail`] reads what the tasker appended since the last
//! look and turns its lines into points for the points log.
//!
//! The path is the tasker's to write, so nothing done to it may block or
//! slow the engine: it is opened without following a link and without
//! blocking, only a regular file is read, a look while the tasker runs
//! reads at most [`LIVE_CHUNK`] (the rest at a later turn of the loop)
//! and the last one at most [`READ_CHUNK`] at a time, a line longer than [`LINE_MAX`] is skipped (the lines
//! after it are read), and one run of a tasker is followed for at most
//! [`POINTS_CAP`] points or [`BYTES_CAP`] bytes. What is not copied is
//! said once per run, as an engine point (`"source": "engine"`) in the
//! points log and a line in the engine log:
//!
//! - `points-unread`: the path is not a regular file (a FIFO, a link, a
//!   directory, a device…) or cannot be opened;
//! - `points-capped`: the cap was reached; the rest is not read;
//! - `points-dropped`: lines that are no point (not JSON, too long, a
//!   final point), with their count and the first one's reason, at the
//!   end of the run.
//!
//! At the end of a run the entry is removed without following a link or
//! recursing into a directory ([`remove_entry`]).

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::state::NodeState;
use super::Engine;
use crate::model::names::{Exid, Nid, TaskId};
use crate::model::point::{Kind, Point};
use crate::scheduler::NodeKey;
use crate::store::points::kind_in_words;

/// The most points copied from one run of a tasker.
pub const POINTS_CAP: u32 = 10_000;
/// The most bytes of the file read in one run of a tasker.
pub const BYTES_CAP: u64 = 8 << 20;
/// The longest line taken as a point; a longer one is dropped.
pub const LINE_MAX: usize = 64 << 10;
/// The most bytes read in one look at the end of a run (looks follow one
/// another up to the caps).
pub const READ_CHUNK: u64 = 1 << 20;
/// The most bytes read in one look while the tasker runs (a few thousand
/// short lines): a tasker that writes fast costs the loop short turns,
/// between which other work goes on; the rest is read at the next turn
/// ([`Look::more`]).
pub const LIVE_CHUNK: u64 = 64 << 10;

/// The ids a tasker's points are tagged with.
pub struct Ids<'a> {
    pub id: &'a TaskId,
    pub exid: &'a Exid,
    pub nid: &'a Nid,
}

/// What one look produced: points to log, in order (notes included), and
/// lines for the engine log.
#[derive(Debug, Default)]
pub struct Look {
    pub points: Vec<Point>,
    pub warnings: Vec<String>,
    /// A look while the tasker runs stopped at [`LIVE_CHUNK`] with more
    /// to read.
    pub more: bool,
}

/// How far a tasker's points file was followed in one run.
#[derive(Debug)]
pub struct PointsTail {
    path: PathBuf,
    /// Bytes consumed (read and split into lines, or carried).
    offset: u64,
    /// Bytes read in all (the file may be truncated and read again).
    read: u64,
    /// The start of a line whose end was not read yet.
    partial: Vec<u8>,
    /// In an over-long line: bytes are skipped up to its end.
    skipping: bool,
    /// Lines seen (for the reasons: "line 3 …").
    lines: u64,
    copied: u32,
    dropped: u32,
    first_drop: Option<String>,
    /// Said that the path was not a regular file (once).
    refused: bool,
    /// A cap was reached: nothing more is read.
    capped: bool,
    /// Points a dead engine copied already (a re-attached Slurm job's):
    /// the first this many are counted, not copied again.
    copied_before: u32,
    /// The watcher announced a write to the path (or the run was followed
    /// before this engine started): worth a look once `started` is logged.
    announced: bool,
    /// The latest look found nothing at the path.
    gone: bool,
}

/// Why a line is no point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    NotJson(String),
    NotAnObject,
    NoName,
    BadName,
    Final(String),
    TooLong,
}

impl Dropped {
    fn describe(&self) -> String {
        match self {
            Dropped::NotJson(e) => format!("is not JSON ({e})"),
            Dropped::NotAnObject => "is not a JSON object".into(),
            Dropped::NoName => "has no string \"point\"".into(),
            Dropped::BadName => "has a \"point\" name that is empty or longer than 64 bytes".into(),
            Dropped::Final(name) => {
                format!("is a final point ({name}); only the tasker's reply ends a task")
            }
            Dropped::TooLong => format!("is longer than {} KiB", LINE_MAX >> 10),
        }
    }
}

/// A tasker's line as a point, or why it is none (pure).
pub fn classify(line: &[u8], ids: &Ids<'_>) -> Result<Point, Dropped> {
    if line.len() > LINE_MAX {
        return Err(Dropped::TooLong);
    }
    if let Some(p) = Point::informative(line, ids.id, ids.exid, ids.nid) {
        return Ok(p);
    }
    // Why not: looked at again only for a line that is dropped.
    let v: serde_json::Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return Err(Dropped::NotJson(e.to_string())),
    };
    let Some(obj) = v.as_object() else {
        return Err(Dropped::NotAnObject);
    };
    match obj.get("point") {
        Some(serde_json::Value::String(p)) if Kind::is_final_name(p) => {
            Err(Dropped::Final(p.clone()))
        }
        Some(serde_json::Value::String(_)) => Err(Dropped::BadName),
        _ => Err(Dropped::NoName),
    }
}

/// Bytes read from the path, or why it was not read.
enum Got {
    /// Nothing there (the tasker wrote no point yet).
    Missing,
    /// Not read, in words ("was replaced by a FIFO").
    Refused(String),
    /// Bytes from the offset asked for, and the file's length.
    Bytes(Vec<u8>, u64),
}

/// Reads at most `max` bytes of a regular file from `offset`; opens it
/// without following a link and without blocking, and reads nothing else.
fn read_regular(path: &Path, offset: u64, max: u64) -> Got {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path);
    let f: File = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Got::Missing,
        // O_NOFOLLOW on a link: ELOOP.
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Got::Refused("was replaced by a symbolic link".into())
        }
        Err(e) => return Got::Refused(format!("cannot be opened ({e})")),
    };
    let meta = match f.metadata() {
        Ok(m) => m,
        Err(e) => return Got::Refused(format!("cannot be examined ({e})")),
    };
    if !meta.is_file() {
        let what = kind_in_words(&meta.file_type());
        return Got::Refused(format!("was replaced by {what}"));
    }
    let len = meta.len();
    let mut f = f;
    if len <= offset {
        return Got::Bytes(Vec::new(), len);
    }
    if let Err(e) = f.seek(SeekFrom::Start(offset)) {
        return Got::Refused(format!("cannot be read ({e})"));
    }
    let mut buf = Vec::new();
    match f.take(max.min(len - offset)).read_to_end(&mut buf) {
        Ok(_) => Got::Bytes(buf, len),
        Err(e) => Got::Refused(format!("cannot be read ({e})")),
    }
}

impl PointsTail {
    pub fn new(path: PathBuf) -> PointsTail {
        PointsTail {
            path,
            offset: 0,
            read: 0,
            partial: Vec::new(),
            skipping: false,
            lines: 0,
            copied: 0,
            dropped: 0,
            first_drop: None,
            refused: false,
            capped: false,
            copied_before: 0,
            announced: false,
            gone: false,
        }
    }

    /// Follows a file whose first `copied` points were copied already (by
    /// an engine that died while its Slurm job ran).
    pub fn resuming(path: PathBuf, copied: u32) -> PointsTail {
        PointsTail {
            copied_before: copied,
            announced: true,
            ..PointsTail::new(path)
        }
    }

    /// The path followed (`$SPOOLFLOW_POINTS`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the latest look found nothing at the path (the last look
    /// at the exit: nothing is left to remove).
    pub fn gone(&self) -> bool {
        self.gone
    }

    /// Reads what was appended since the last look (at most
    /// [`LIVE_CHUNK`]) and turns its complete lines into points.
    pub fn look(&mut self, ids: &Ids<'_>) -> Look {
        let mut out = Look::default();
        out.more = self.look_once(ids, &mut out, LIVE_CHUNK);
        out
    }

    /// The last look, once the tasker exited: everything it wrote, up to
    /// the caps; an unterminated last line is taken as a line; then the
    /// note of the lines dropped, if any.
    pub fn finish(&mut self, ids: &Ids<'_>) -> Look {
        let mut out = Look::default();
        // Enough looks to read up to the bytes cap; a file truncated over
        // and over by an escaped writer cannot keep the engine here.
        let most = 2 * BYTES_CAP.div_ceil(READ_CHUNK) + 2;
        for _ in 0..most {
            if !self.look_once(ids, &mut out, READ_CHUNK) {
                break;
            }
        }
        if self.skipping {
            // An over-long last line, never ended.
            self.lines += 1;
            self.drop_line(Dropped::TooLong);
        } else if !self.capped && !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.take_line(&line, ids, &mut out);
        }
        self.partial.clear();
        if self.dropped > 0 {
            let reason = format!(
                "{} line(s) of $SPOOLFLOW_POINTS were not copied; the first {}",
                self.dropped,
                self.first_drop.as_deref().unwrap_or("was dropped")
            );
            let note = self.note("points-dropped", reason, ids, &mut out);
            note.fields.insert("count".into(), self.dropped.into());
        }
        out
    }

    /// One read of at most `chunk` bytes; whether more may follow at once.
    fn look_once(&mut self, ids: &Ids<'_>, out: &mut Look, chunk: u64) -> bool {
        if self.capped {
            return false;
        }
        let max = chunk.min(BYTES_CAP.saturating_sub(self.read));
        let got = read_regular(&self.path, self.offset, max);
        self.gone = matches!(got, Got::Missing);
        let (buf, len) = match got {
            Got::Missing => return false,
            Got::Refused(why) => {
                if !self.refused {
                    self.refused = true;
                    let reason = format!("$SPOOLFLOW_POINTS {why}; its points were not read");
                    self.note("points-unread", reason, ids, out);
                }
                return false;
            }
            Got::Bytes(buf, len) => (buf, len),
        };
        if len < self.offset {
            // Truncated or made again by the tasker: follow it from its start.
            self.offset = 0;
            self.partial.clear();
            self.skipping = false;
            return true;
        }
        self.offset += buf.len() as u64;
        self.read += buf.len() as u64;
        self.split(&buf, ids, out);
        if self.read >= BYTES_CAP && !self.capped {
            let reason = format!(
                "$SPOOLFLOW_POINTS reached {} MiB; the rest was not read",
                BYTES_CAP >> 20
            );
            self.cap(reason, ids, out);
        }
        !self.capped && !buf.is_empty() && self.offset < len
    }

    /// Splits newly read bytes into lines, carrying an unfinished one.
    fn split(&mut self, buf: &[u8], ids: &Ids<'_>, out: &mut Look) {
        let mut rest = buf;
        while !self.capped {
            let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
                if !self.skipping {
                    self.partial.extend_from_slice(rest);
                    if self.partial.len() > LINE_MAX {
                        self.partial.clear();
                        self.skipping = true;
                    }
                }
                return;
            };
            let (head, tail) = (&rest[..nl], &rest[nl + 1..]);
            rest = tail;
            if self.skipping {
                self.skipping = false;
                self.lines += 1;
                self.drop_line(Dropped::TooLong);
                continue;
            }
            if self.partial.is_empty() {
                self.take_line(head, ids, out);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.take_line(&line, ids, out);
            }
        }
    }

    fn take_line(&mut self, line: &[u8], ids: &Ids<'_>, out: &mut Look) {
        self.lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match classify(line, ids) {
            Ok(_) if self.copied_before > 0 => {
                self.copied_before -= 1;
                self.copied += 1;
            }
            Ok(p) if self.copied < POINTS_CAP => {
                self.copied += 1;
                out.points.push(p);
            }
            Ok(_) => {
                let reason = format!(
                    "the tasker wrote more than {POINTS_CAP} points; the rest were not copied"
                );
                self.cap(reason, ids, out);
            }
            Err(why) => self.drop_line(why),
        }
    }

    fn drop_line(&mut self, why: Dropped) {
        self.dropped = self.dropped.saturating_add(1);
        if self.first_drop.is_none() {
            self.first_drop = Some(format!("(line {}) {}", self.lines, why.describe()));
        }
    }

    fn cap(&mut self, reason: String, ids: &Ids<'_>, out: &mut Look) {
        self.capped = true;
        self.partial.clear();
        self.note("points-capped", reason, ids, out);
    }

    /// Says once what was not copied: a point and an engine log line.
    fn note<'o>(
        &self,
        name: &str,
        reason: String,
        ids: &Ids<'_>,
        out: &'o mut Look,
    ) -> &'o mut Point {
        out.warnings
            .push(format!("task {} (node {}): {reason}", ids.id, ids.nid));
        let p = Point::engine_note(name, ids.id, ids.exid, ids.nid).with("reason", reason.as_str());
        out.points.push(p);
        let last = out.points.len() - 1;
        &mut out.points[last]
    }
}

impl Engine {
    /// Copies the lines a tasker appended to its points file since the
    /// last look (bounded, never blocking).
    pub(super) fn copy_points(&mut self, key: &NodeKey) {
        self.look_at_points(key, None);
    }

    /// The watcher saw a write to a run's points file: copied now if the
    /// run's `started` is logged, else once it is ([`Self::on_started_points`]).
    pub(super) fn points_announced(&mut self, key: &NodeKey) {
        if let Some(NodeState::Running(run)) = self.nodes.get_mut(key).map(|n| &mut n.state) {
            run.points.announced = true;
        }
        self.copy_points(key);
    }

    /// `started` was just logged: the points the tasker wrote before are
    /// copied. A local tasker's file is read only if the watcher announced
    /// a write (the kernel queues the event when the write happens; one
    /// that comes after this is copied when it comes, and the last look at
    /// the exit reads what is left in any case); a Slurm job's file, which
    /// no watch covers, is always read.
    pub(super) fn on_started_points(&mut self, key: &NodeKey) {
        let look = match self.nodes.get(key).map(|n| &n.state) {
            Some(NodeState::Running(run)) => run.points.announced || run.slot.is_none(),
            _ => false,
        };
        if look {
            self.copy_points(key);
        }
    }

    /// The last look at a run's points file, once its tasker exited
    /// (`gen`: the run's generation; a stale exit reads nothing).
    pub(super) fn finish_points(&mut self, key: &NodeKey, gen: u64) {
        self.look_at_points(key, Some(gen));
    }

    fn look_at_points(&mut self, key: &NodeKey, exited: Option<u64>) {
        let Some(node) = self.nodes.get_mut(key) else {
            return;
        };
        if exited.is_some_and(|gen| gen != node.gen) {
            return;
        }
        let NodeState::Running(run) = &mut node.state else {
            return;
        };
        if !run.process.started() {
            // Copied once `started` is logged (see on_started).
            return;
        }
        let ids = Ids {
            id: &node.task.id,
            exid: &key.exid,
            nid: &key.nid,
        };
        let look = match exited {
            Some(_) => run.points.finish(&ids),
            None => run.points.look(&ids),
        };
        if look.more {
            // The rest at a later turn, after what else is waiting.
            self.watcher.points_again(run.points.path());
        }
        for w in look.warnings {
            tracing::warn!("{w}");
        }
        for p in look.points {
            self.log(p);
        }
    }
}

/// Removes what is at a run's `$SPOOLFLOW_POINTS` once the run ended: a
/// file, a FIFO or a link is unlinked (a link is never followed); an
/// empty directory is removed; a directory with entries is left (the
/// next start of the engine clears `var/run/points/`). `Some` says what
/// was left, in words.
pub fn remove_entry(path: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_dir() {
        return match std::fs::remove_file(path) {
            Ok(()) => None,
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => Some(format!("cannot remove {} ({e})", path.display())),
        };
    }
    match std::fs::remove_dir(path) {
        Ok(()) => None,
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(_) => Some(format!(
            "$SPOOLFLOW_POINTS {} is a directory the tasker filled; it is left in place until the \
             engine's next start",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names() -> (TaskId, Nid) {
        ("t1".parse().unwrap(), Nid::root())
    }

    fn ids<'a>(id: &'a TaskId, nid: &'a Nid) -> Ids<'a> {
        Ids { id, exid: id, nid }
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    fn point_names(look: &Look) -> Vec<&str> {
        look.points.iter().map(|p| p.point.as_str()).collect()
    }

    #[test]
    fn lines_are_classified_with_a_reason() {
        let (id, nid) = names();
        let ids = ids(&id, &nid);
        assert!(classify(br#"{"point":"progress","done":1}"#, &ids).is_ok());
        assert!(matches!(classify(b"nope", &ids), Err(Dropped::NotJson(_))));
        assert_eq!(classify(b"[1]", &ids).unwrap_err(), Dropped::NotAnObject);
        assert_eq!(classify(b"{}", &ids).unwrap_err(), Dropped::NoName);
        assert_eq!(
            classify(br#"{"point":""}"#, &ids).unwrap_err(),
            Dropped::BadName
        );
        assert_eq!(
            classify(br#"{"point":"failed"}"#, &ids).unwrap_err(),
            Dropped::Final("failed".into())
        );
        let long = format!(r#"{{"point":"x","pad":"{}"}}"#, "p".repeat(LINE_MAX));
        assert_eq!(
            classify(long.as_bytes(), &ids).unwrap_err(),
            Dropped::TooLong
        );
    }

    #[test]
    fn a_line_is_copied_once_complete_and_a_point_follows_an_over_long_line() {
        let (id, nid) = names();
        let ids = ids(&id, &nid);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let mut tail = PointsTail::new(path.clone());
        assert!(tail.look(&ids).points.is_empty(), "no file yet");
        append(&path, br#"{"point":"a"}"#);
        assert!(tail.look(&ids).points.is_empty(), "not ended yet");
        append(&path, b"\n");
        assert_eq!(point_names(&tail.look(&ids)), ["a"]);
        append(&path, &vec![b'x'; LINE_MAX + 10]);
        assert!(tail.look(&ids).points.is_empty());
        append(&path, b"xx\n{\"point\":\"b\"}\n{\"point\":\"c\"}");
        assert_eq!(point_names(&tail.look(&ids)), ["b"]);
        // At the end an unterminated last line counts.
        let end = tail.finish(&ids);
        assert_eq!(point_names(&end), ["c", "points-dropped"]);
        let note = &end.points[1];
        assert_eq!(note.fields["count"], 1);
        assert_eq!(note.fields["source"], "engine");
        assert_eq!(
            note.fields["reason"],
            "1 line(s) of $SPOOLFLOW_POINTS were not copied; the first (line 2) is longer than \
             64 KiB"
        );
        assert_eq!(end.warnings.len(), 1);
    }

    #[test]
    fn the_points_cap_is_noted_once_and_nothing_more_is_read() {
        let (id, nid) = names();
        let ids = ids(&id, &nid);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let line = b"{\"point\":\"p\"}\n";
        append(&path, &line.repeat(POINTS_CAP as usize + 3));
        let look = tail_finish(&path, &ids);
        assert_eq!(look.points.len(), POINTS_CAP as usize + 1);
        assert_eq!(look.points[POINTS_CAP as usize].point, "points-capped");
        assert_eq!(look.warnings.len(), 1);
    }

    #[test]
    fn a_look_while_the_tasker_runs_reads_one_chunk_and_says_more_is_left() {
        let (id, nid) = names();
        let ids = ids(&id, &nid);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let line = b"{\"point\":\"p\",\"pad\":\"0123456789012345678\"}\n";
        let n = 3 * LIVE_CHUNK as usize / line.len();
        append(&path, &line.repeat(n));
        let mut tail = PointsTail::new(path.clone());
        let mut copied = 0;
        let mut looks = 0;
        loop {
            let look = tail.look(&ids);
            looks += 1;
            copied += look.points.len();
            // (a line begun in the chunk before is ended in this one)
            assert!(look.points.len() * line.len() <= LIVE_CHUNK as usize + line.len());
            if !look.more {
                break;
            }
        }
        assert_eq!((copied, looks), (n, 3));
        // Nothing new: nothing more.
        assert!(!tail.look(&ids).more);
    }

    fn tail_finish(path: &Path, ids: &Ids<'_>) -> Look {
        let mut tail = PointsTail::new(path.to_path_buf());
        let mut look = tail.look(ids);
        let end = tail.finish(ids);
        look.points.extend(end.points);
        look.warnings.extend(end.warnings);
        look
    }

    #[test]
    fn the_bytes_cap_bounds_a_file_of_junk() {
        let (id, nid) = names();
        let ids = ids(&id, &nid);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        append(&path, &vec![b'x'; BYTES_CAP as usize + READ_CHUNK as usize]);
        append(&path, b"\n{\"point\":\"late\"}\n");
        let look = tail_finish(&path, &ids);
        assert_eq!(point_names(&look), ["points-capped", "points-dropped"]);
        assert_eq!(
            look.points[0].fields["reason"],
            "$SPOOLFLOW_POINTS reached 8 MiB; the rest was not read"
        );
    }

    #[test]
    fn a_path_that_is_no_regular_file_is_noted_once() {
        let (id, nid) = names();
        let ids = ids(&id, &nid);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut tail = PointsTail::new(path.clone());
        let first = tail.look(&ids);
        assert_eq!(point_names(&first), ["points-unread"]);
        assert_eq!(
            first.points[0].fields["reason"],
            "$SPOOLFLOW_POINTS was replaced by a FIFO; its points were not read"
        );
        assert!(tail.finish(&ids).points.is_empty(), "said once");
        assert_eq!(remove_entry(&path), None);
        assert!(std::fs::symlink_metadata(&path).is_err());
    }

    #[test]
    fn a_device_is_not_read() {
        let (id, nid) = names();
        let mut tail = PointsTail::new(PathBuf::from("/dev/null"));
        let look = tail.finish(&ids(&id, &nid));
        assert_eq!(point_names(&look), ["points-unread"]);
        assert_eq!(
            look.points[0].fields["reason"],
            "$SPOOLFLOW_POINTS was replaced by a device; its points were not read"
        );
    }

    #[test]
    fn a_truncated_file_is_followed_from_its_start() {
        let (id, nid) = names();
        let ids = ids(&id, &nid);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        append(&path, b"{\"point\":\"first-of-a-long-name\"}\n");
        let mut tail = PointsTail::new(path.clone());
        assert_eq!(point_names(&tail.look(&ids)), ["first-of-a-long-name"]);
        std::fs::write(&path, b"{\"point\":\"again\"}\n").unwrap();
        assert_eq!(point_names(&tail.finish(&ids)), ["again"]);
    }

    #[test]
    fn removal_never_follows_a_link_nor_recurses() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("kept");
        std::fs::write(&kept, "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&kept, &link).unwrap();
        assert_eq!(remove_entry(&link), None);
        assert!(kept.exists() && std::fs::symlink_metadata(&link).is_err());
        let full = dir.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("f"), "x").unwrap();
        let left = remove_entry(&full).unwrap_or_default();
        assert!(left.contains("left in place"), "{left}");
        assert!(full.join("f").exists());
        assert_eq!(remove_entry(&dir.path().join("absent")), None);
    }
}
