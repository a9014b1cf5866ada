//! The replies journal (`var/run/replies.log`): a tasker's completing
//! reply is appended here (one JSON line, `write(2)`, no fsync) the moment
//! it reaches the engine, before its record goes to the durable writer.
//! When the engine process dies (`kill -9`, a panic) while the record is
//! still in the writer's queue, the line is in the page cache all the
//! same, and the next start completes the task from it instead of running
//! its tasker again: only taskers still running at the crash run again.
//! (A machine crash can lose the line; the task then runs again — at least
//! once, as always.)
//!
//! The journal is not emptied while a reply it holds waits for its
//! durable home: a standalone task's record, or the progress write of its
//! flow that covers the node's end (the [`Ledger`] counts them). A busy
//! flow always has a progress write under way, so the journal is not
//! emptied in place but turned over: once it holds more than
//! [`SETTLE_BYTES`], it is renamed `replies.old.log` and a new one begun;
//! the old file is removed as soon as none of its replies waits any more
//! (and a new turn-over waits until then, so there are two files at most).
//! A journal whose replies all have their home is simply emptied. Lines
//! stay until then, so each names the life of its task (the execution's
//! `created` time): an id used again after `gc` removed its record starts
//! its attempts at 1 again, and must not be completed by the reply of the
//! life before.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::layout::Root;
use crate::model::names::{Exid, Nid};
use crate::model::task::Object;

/// Turned over (or emptied) once it holds more than this.
const SETTLE_BYTES: u64 = 256 * 1024;

/// Which file of the journal a line is in: the files are numbered as they
/// are begun. At start the old file (if any) is [`OLD_AT_START`], the
/// journal [`CURRENT_AT_START`].
pub type Gen = u64;
const OLD_AT_START: Gen = 0;
const CURRENT_AT_START: Gen = 1;

/// One completing reply, as written (borrowing what it says).
#[derive(Serialize)]
struct LineOut<'a> {
    exid: &'a Exid,
    nid: &'a Nid,
    attempt: u32,
    created: &'a str,
    payload: &'a Object,
}

/// One completing reply, as read back.
#[derive(Debug, Deserialize)]
struct Line {
    exid: Exid,
    nid: Nid,
    attempt: u32,
    /// The execution's `created` time (`timestamp`), as its `created`
    /// point has it; absent in lines of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<String>,
    payload: Object,
}

/// A journaled reply: which life and attempt of its node it ended, and
/// which file holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Replied {
    pub attempt: u32,
    pub created: Option<String>,
    pub payload: Object,
    pub gen: Gen,
}

impl Replied {
    /// Whether this reply ended `attempt` of the life created at
    /// `created` (a line without its life, from an older version, is
    /// taken by its attempt alone).
    pub fn ended(&self, attempt: u32, created: &str) -> bool {
        self.attempt > 0
            && self.attempt == attempt
            && self.created.as_deref().is_none_or(|c| c == created)
    }
}

/// How many waiting replies each file holds (two files at most, so a
/// couple of entries).
#[derive(Debug, Default, Clone, PartialEq)]
struct Counts(Vec<(Gen, u64)>);

impl Counts {
    fn add(&mut self, gen: Gen, n: u64) {
        match self.0.iter_mut().find(|(g, _)| *g == gen) {
            Some((_, count)) => *count += n,
            None => self.0.push((gen, n)),
        }
    }

    fn merge(&mut self, other: Counts) {
        for (gen, n) in other.0 {
            self.add(gen, n);
        }
    }
}

/// The replies of one execution that wait for their durable home.
#[derive(Debug, Default)]
struct Waiting {
    /// Not yet in a write sent to the durable writer.
    unwritten: Counts,
    /// In the progress write under way.
    writing: Counts,
}

/// What the journal's files need, as the [`Ledger`] decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tidy {
    /// The old file holds no waiting reply: remove it.
    RemoveOld,
    /// The journal is large and none of its replies waits: empty it.
    Empty,
    /// The journal is large, some of its replies wait, and there is no
    /// old file: rename it the old file and begin a new one.
    TurnOver,
}

/// The journal's bookkeeping, without I/O: which replies wait for a
/// durable home, in which file, and what the files need.
#[derive(Debug)]
pub struct Ledger {
    /// The journal's file.
    gen: Gen,
    /// Its length.
    len: u64,
    /// Its replies that wait.
    current: u64,
    /// The old file's replies that wait, while it exists.
    old: Option<u64>,
    by_exid: HashMap<Exid, Waiting>,
}

impl Ledger {
    /// At start: the journal holds `len` bytes, an old file may be left.
    fn new(len: u64, old_exists: bool) -> Ledger {
        Ledger {
            gen: CURRENT_AT_START,
            len,
            current: 0,
            old: old_exists.then_some(0),
            by_exid: HashMap::new(),
        }
    }

    /// A line of `bytes` was appended for `exid`.
    fn appended(&mut self, exid: &Exid, bytes: u64) {
        self.len += bytes;
        self.hold(exid, self.gen);
    }

    /// A reply of `exid` in file `gen` waits (one read back at start, to
    /// complete its task with).
    fn hold(&mut self, exid: &Exid, gen: Gen) {
        match self.count_of(gen) {
            Some(count) => *count += 1,
            // A file no longer there: nothing to keep.
            None => return,
        }
        self.by_exid
            .entry(exid.clone())
            .or_default()
            .unwritten
            .add(gen, 1);
    }

    fn count_of(&mut self, gen: Gen) -> Option<&mut u64> {
        if gen == self.gen {
            Some(&mut self.current)
        } else if gen + 1 == self.gen {
            self.old.as_mut()
        } else {
            None
        }
    }

    /// A progress write of `exid` was sent: it covers the replies so far.
    fn writing(&mut self, exid: &Exid) {
        if let Some(w) = self.by_exid.get_mut(exid) {
            let unwritten = std::mem::take(&mut w.unwritten);
            w.writing.merge(unwritten);
        }
    }

    /// The progress write of `exid` under way is durable.
    fn written(&mut self, exid: &Exid) {
        let Some(w) = self.by_exid.get_mut(exid) else {
            return;
        };
        let done = std::mem::take(&mut w.writing);
        if w.unwritten.0.is_empty() {
            self.by_exid.remove(exid);
        }
        self.release(done);
    }

    /// The record of `exid` is durable: none of its replies waits.
    fn forget(&mut self, exid: &Exid) {
        if let Some(mut w) = self.by_exid.remove(exid) {
            w.unwritten.merge(w.writing);
            self.release(w.unwritten);
        }
    }

    fn release(&mut self, counts: Counts) {
        for (gen, n) in counts.0 {
            if let Some(count) = self.count_of(gen) {
                *count = count.saturating_sub(n);
            }
        }
    }

    /// What the files need now, if anything.
    fn next(&self) -> Option<Tidy> {
        if self.old == Some(0) {
            return Some(Tidy::RemoveOld);
        }
        if self.len < SETTLE_BYTES {
            return None;
        }
        if self.current == 0 {
            Some(Tidy::Empty)
        } else if self.old.is_none() {
            Some(Tidy::TurnOver)
        } else {
            None
        }
    }

    /// `tidy` was done.
    fn did(&mut self, tidy: Tidy) {
        match tidy {
            Tidy::RemoveOld => self.old = None,
            Tidy::Empty => self.len = 0,
            Tidy::TurnOver => {
                self.old = Some(self.current);
                self.current = 0;
                self.gen += 1;
                self.len = 0;
            }
        }
    }
}

/// The journal, open for appending.
pub struct Replies {
    file: Option<File>,
    ledger: Ledger,
    journal: std::path::PathBuf,
    old: std::path::PathBuf,
}

impl Replies {
    /// Opens (or creates) the journal without emptying it: what it holds
    /// (and the old file, if one is left) may be all that is left of
    /// replies a crash cut short. Without it the engine still runs (tasks
    /// cut short then run again).
    pub fn open(root: &Root) -> Replies {
        let journal = root.replies_journal();
        let old = root.replies_journal_old();
        let old_exists = old.is_file();
        let (file, len) = match open_journal(&journal) {
            Some((file, len)) => (Some(file), len),
            None => (None, 0),
        };
        Replies {
            file,
            ledger: Ledger::new(len, old_exists),
            journal,
            old,
        }
    }

    /// Appends a completing reply of `attempt` of the life created at
    /// `created` (one write of one line); it waits for its durable home.
    pub fn append(
        &mut self,
        exid: &Exid,
        nid: &Nid,
        (attempt, created): (u32, String),
        payload: &Object,
    ) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let line = LineOut {
            exid,
            nid,
            attempt,
            created: &created,
            payload,
        };
        let Ok(mut bytes) = serde_json::to_vec(&line) else {
            return;
        };
        bytes.push(b'\n');
        match file.write_all(&bytes) {
            Ok(()) => self.ledger.appended(exid, bytes.len() as u64),
            Err(e) => {
                tracing::warn!("cannot append to the replies journal: {e}");
                // A torn line would swallow the next one.
                let _ = file.set_len(self.ledger.len);
            }
        }
        self.tidy();
    }

    /// A reply read back at start (in file `gen`) completes its task: it
    /// waits for that task's durable home again.
    pub fn hold(&mut self, exid: &Exid, gen: Gen) {
        self.ledger.hold(exid, gen);
    }

    /// A progress write of the flow `exid` was sent to the writer.
    pub fn writing(&mut self, exid: &Exid) {
        self.ledger.writing(exid);
    }

    /// The progress write of the flow `exid` under way is durable.
    pub fn written(&mut self, exid: &Exid) {
        self.ledger.written(exid);
        self.tidy();
    }

    /// The record of `exid` is durable.
    pub fn forget(&mut self, exid: &Exid) {
        self.ledger.forget(exid);
        self.tidy();
    }

    /// Does what the files need: removes the old file, empties or turns
    /// over the journal. A step that fails is left for a later call (the
    /// journal then only grows).
    pub fn tidy(&mut self) {
        if self.file.is_none() {
            return;
        }
        while let Some(tidy) = self.ledger.next() {
            let done = match tidy {
                Tidy::RemoveOld => match std::fs::remove_file(&self.old) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                },
                Tidy::Empty => match self.file.as_mut() {
                    Some(file) => file.set_len(0),
                    None => return,
                },
                Tidy::TurnOver => self.turn_over(),
            };
            match done {
                Ok(()) => self.ledger.did(tidy),
                Err(e) => {
                    tracing::warn!("cannot tidy the replies journal ({tidy:?}): {e}");
                    return;
                }
            }
        }
    }

    /// Renames the journal the old file and begins a new one.
    fn turn_over(&mut self) -> std::io::Result<()> {
        std::fs::rename(&self.journal, &self.old)?;
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)
        {
            Ok(file) => {
                self.file = Some(file);
                Ok(())
            }
            Err(e) => {
                // Appends go on to the file as it was; if it cannot be
                // put back, they stop (replies cut short by a crash then
                // run again), rather than go to a file the ledger takes
                // for the old one.
                if std::fs::rename(&self.old, &self.journal).is_err() {
                    tracing::warn!(
                        "the replies journal is no longer kept: tasks cut short by a crash will run again"
                    );
                    self.file = None;
                }
                Err(e)
            }
        }
    }

    /// Opens the journal again when its file is no longer at its path (an
    /// operator removed `var/run/`): the replies it held whose records are
    /// not durable yet would run again after a crash (at least once).
    pub fn keep(&mut self, root: &Root) {
        use std::os::unix::fs::MetadataExt;
        let ident = |m: std::fs::Metadata| (m.dev(), m.ino());
        let open = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(ident);
        let at_path = std::fs::symlink_metadata(root.replies_journal())
            .ok()
            .map(ident);
        // Not open at start (an unwritable var/run/): not tried again.
        if open.is_none() || open == at_path {
            return;
        }
        if let Some((file, len)) = open_journal(&self.journal) {
            self.file = Some(file);
            self.ledger.len = len;
            tracing::warn!(
                "{} was removed while the engine ran; made it again",
                root.replies_journal().display()
            );
        }
    }
}

/// Opens (or creates) a journal file for appending, with its length. A
/// file a crash left ending in a torn line is ended with a newline, so
/// the next line is not appended onto it.
fn open_journal(path: &std::path::Path) -> Option<(File, u64)> {
    match OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
    {
        Ok(mut file) => {
            let mut len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len > 0 && !ends_a_line(&file, len) && file.write_all(b"\n").is_ok() {
                len += 1;
            }
            Some((file, len))
        }
        Err(e) => {
            tracing::warn!(
                "cannot open {}: {e}; replies cut short by a crash will run again",
                path.display()
            );
            None
        }
    }
}

/// Whether the file's last byte (of `len`) ends a line.
fn ends_a_line(file: &File, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1).is_ok() && last[0] == b'\n'
}

/// The replies the journal holds (its old file's, then its own): the last
/// one of each node, with its attempt, life and file (a torn line is
/// skipped).
pub fn read(root: &Root) -> HashMap<(Exid, Nid), Replied> {
    let mut replies = HashMap::new();
    for (path, gen) in [
        (root.replies_journal_old(), OLD_AT_START),
        (root.replies_journal(), CURRENT_AT_START),
    ] {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        let lines = bytes
            .split(|b| *b == b'\n')
            .filter_map(|l| serde_json::from_slice::<Line>(l).ok());
        for l in lines {
            let replied = Replied {
                attempt: l.attempt,
                created: l.created,
                payload: l.payload,
                gen,
            };
            replies.insert((l.exid, l.nid), replied);
        }
    }
    replies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: i64) -> Object {
        let mut o = Object::new();
        o.insert("v".into(), v.into());
        o
    }

    fn life() -> String {
        "2026-12-06T02:00:00.000001Z".to_string()
    }

    fn ex(s: &str) -> Exid {
        s.parse().unwrap()
    }

    #[test]
    fn replies_are_read_back_last_one_first_and_a_torn_line_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        let (a, n): (Exid, Nid) = (ex("a"), Nid::root());
        let mut r = Replies::open(&root);
        r.append(&a, &n, (1, life()), &obj(1));
        r.append(&a, &n, (2, life()), &obj(2));
        drop(r);
        let mut f = OpenOptions::new()
            .append(true)
            .open(root.replies_journal())
            .unwrap();
        f.write_all(b"{\"exid\":\"b\",\"ni").unwrap();
        let got = read(&root);
        assert_eq!(got.len(), 1);
        let last = Replied {
            attempt: 2,
            created: Some(life()),
            payload: obj(2),
            gen: CURRENT_AT_START,
        };
        assert_eq!(got[&(a.clone(), n.clone())], last);

        // Emptied only past its threshold, and kept otherwise.
        let mut r = Replies::open(&root);
        r.tidy();
        assert!(!read(&root).is_empty());
        r.ledger.len = SETTLE_BYTES;
        r.tidy();
        assert!(read(&root).is_empty());
        r.append(&a, &n, (3, life()), &obj(3));
        assert_eq!(
            read(&root)[&(a, n)].attempt,
            3,
            "appends go on after emptying"
        );
    }

    #[test]
    fn a_reply_ends_only_its_own_life_and_attempt() {
        let life = life();
        let life = life.as_str();
        let replied = |attempt, created: Option<&str>| Replied {
            attempt,
            created: created.map(str::to_string),
            payload: Object::new(),
            gen: CURRENT_AT_START,
        };
        assert!(replied(1, Some(life)).ended(1, life));
        assert!(!replied(2, Some(life)).ended(1, life));
        // The same id used again after gc: attempt 1 again, another life.
        assert!(!replied(1, Some(life)).ended(1, "2026-12-06T03:00:00.000001Z"));
        // A line of an older version names no life.
        assert!(replied(1, None).ended(1, life));
        assert!(!replied(0, None).ended(0, life));
    }

    #[test]
    fn a_large_journal_whose_replies_all_have_a_home_is_emptied() {
        let mut l = Ledger::new(0, false);
        l.appended(&ex("a"), SETTLE_BYTES - 1);
        assert_eq!(l.next(), None, "small: kept");
        l.forget(&ex("a"));
        l.appended(&ex("b"), 10);
        assert_eq!(l.next(), Some(Tidy::TurnOver), "large, and b waits");
        l.forget(&ex("b"));
        assert_eq!(l.next(), Some(Tidy::Empty), "large, nothing waits");
        l.did(Tidy::Empty);
        assert_eq!(l.next(), None);
        assert!(l.by_exid.is_empty());
    }

    #[test]
    fn a_busy_flows_replies_turn_the_journal_over_and_the_old_file_goes_once_they_are_saved() {
        let f = ex("flow");
        let mut l = Ledger::new(0, false);
        // A node ends while a progress write is under way: its reply
        // waits for the next write, which covers it.
        l.writing(&f);
        l.appended(&f, SETTLE_BYTES);
        l.written(&f);
        assert_eq!(l.next(), Some(Tidy::TurnOver), "the reply is not saved yet");
        l.did(Tidy::TurnOver);
        assert_eq!(l.next(), None);
        l.writing(&f); // the write that covers the first reply
        l.appended(&f, SETTLE_BYTES); // another node ends meanwhile
        assert_eq!(
            l.next(),
            None,
            "the old file's reply waits: no second turn-over"
        );
        l.written(&f);
        assert_eq!(l.next(), Some(Tidy::RemoveOld));
        l.did(Tidy::RemoveOld);
        assert_eq!(
            l.next(),
            Some(Tidy::TurnOver),
            "the second reply still waits"
        );
        l.did(Tidy::TurnOver);
        l.forget(&f); // the flow's record is durable
        assert_eq!(l.next(), Some(Tidy::RemoveOld));
        l.did(Tidy::RemoveOld);
        assert_eq!(l.next(), None);
        assert!(l.by_exid.is_empty());
    }

    #[test]
    fn a_reply_read_back_from_the_old_file_keeps_it_until_its_home_is_durable() {
        let mut l = Ledger::new(10, true);
        assert_eq!(l.next(), Some(Tidy::RemoveOld), "nothing held: it goes");
        l.hold(&ex("a"), OLD_AT_START);
        l.hold(&ex("b"), CURRENT_AT_START);
        assert_eq!(l.next(), None);
        l.forget(&ex("a"));
        assert_eq!(l.next(), Some(Tidy::RemoveOld));
        l.did(Tidy::RemoveOld);
        // A file that is no longer there holds nothing.
        l.hold(&ex("c"), OLD_AT_START);
        assert_eq!(l.old, None);
        assert!(!l.by_exid.contains_key(&ex("c")));
    }

    #[test]
    fn the_journal_is_turned_over_on_disk_and_read_back_across_both_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        let (f, n0, n1) = (
            ex("flow"),
            "0_0".parse::<Nid>().unwrap(),
            "0_1".parse::<Nid>().unwrap(),
        );
        let mut r = Replies::open(&root);
        let mut big = Object::new();
        big.insert("pad".into(), "x".repeat(SETTLE_BYTES as usize).into());
        r.append(&f, &n0, (1, life()), &big);
        assert!(root.replies_journal_old().is_file(), "turned over");
        r.writing(&f);
        r.append(&f, &n1, (1, life()), &obj(1));
        r.append(&f, &n0, (2, life()), &obj(2));
        let got = read(&root);
        assert_eq!(got[&(f.clone(), n1.clone())].gen, CURRENT_AT_START);
        assert_eq!(
            got[&(f.clone(), n0.clone())].attempt,
            2,
            "the newer file wins"
        );
        r.written(&f);
        assert!(!root.replies_journal_old().exists(), "its reply is saved");
        assert_eq!(read(&root).len(), 2);
    }

    #[test]
    fn a_torn_line_left_by_a_crash_does_not_swallow_the_next_reply() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        std::fs::write(root.replies_journal(), b"{\"exid\":\"a\",\"ni").unwrap();
        let (b, n) = (ex("b"), Nid::root());
        let mut r = Replies::open(&root);
        r.append(&b, &n, (1, life()), &obj(1));
        let got = read(&root);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[&(b, n)].payload, obj(1));
        assert_eq!(
            r.ledger.len,
            std::fs::metadata(root.replies_journal()).unwrap().len()
        );
    }
}
