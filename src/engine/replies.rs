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
//! Once it holds more than [`SETTLE_BYTES`], the journal is emptied when
//! no record is waiting for the writer: every line it holds is then in a
//! durable record. Until then old lines stay, so each line names the life
//! of its task (the execution's `created` time): an id used again after
//! `gc` removed its record starts its attempts at 1 again, and must not be
//! completed by the reply of the life before.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::layout::Root;
use crate::model::names::{Exid, Nid};
use crate::model::task::Object;

/// Emptied once it holds more than this and nothing is pending.
const SETTLE_BYTES: u64 = 256 * 1024;

/// One completing reply.
#[derive(Debug, Serialize, Deserialize)]
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

/// A journaled reply: which life and attempt of its node it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Replied {
    pub attempt: u32,
    pub created: Option<String>,
    pub payload: Object,
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

/// The journal, open for appending.
pub struct Replies {
    file: Option<File>,
    len: u64,
}

impl Replies {
    /// Opens (or creates) the journal without emptying it: what it holds
    /// may be all that is left of replies a crash cut short. Without it
    /// the engine still runs (tasks cut short then run again).
    pub fn open(root: &Root) -> Replies {
        let path = root.replies_journal();
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                Replies {
                    file: Some(file),
                    len,
                }
            }
            Err(e) => {
                tracing::warn!(
                    "cannot open {}: {e}; replies cut short by a crash will run again",
                    path.display()
                );
                Replies { file: None, len: 0 }
            }
        }
    }

    /// Appends a completing reply of `attempt` of the life created at
    /// `created` (one write of one line).
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
        let line = Line {
            exid: exid.clone(),
            nid: nid.clone(),
            attempt,
            created: Some(created),
            payload: payload.clone(),
        };
        let Ok(mut bytes) = serde_json::to_vec(&line) else {
            return;
        };
        bytes.push(b'\n');
        match file.write_all(&bytes) {
            Ok(()) => self.len += bytes.len() as u64,
            Err(e) => tracing::warn!("cannot append to the replies journal: {e}"),
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
        *self = Replies::open(root);
        if self.file.is_some() {
            tracing::warn!(
                "{} was removed while the engine ran; made it again",
                root.replies_journal().display()
            );
        }
    }

    /// Called when no record waits for the writer: every reply journaled
    /// is in a durable record, so the journal may be emptied.
    pub fn settle(&mut self) {
        if self.len < SETTLE_BYTES {
            return;
        }
        if let Some(file) = self.file.as_mut() {
            match file.set_len(0) {
                Ok(()) => self.len = 0,
                Err(e) => tracing::warn!("cannot empty the replies journal: {e}"),
            }
        }
    }
}

/// The replies the journal holds: the last one of each node, with its
/// attempt and life (a torn last line is skipped).
pub fn read(root: &Root) -> HashMap<(Exid, Nid), Replied> {
    let Ok(bytes) = std::fs::read(root.replies_journal()) else {
        return HashMap::new();
    };
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Line>(l).ok())
        .map(|l| {
            let replied = Replied {
                attempt: l.attempt,
                created: l.created,
                payload: l.payload,
            };
            ((l.exid, l.nid), replied)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_back_last_one_first_and_a_torn_line_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        let (a, n): (Exid, Nid) = ("a".parse().unwrap(), Nid::root());
        let mut r = Replies::open(&root);
        let p = |v: i64| {
            let mut o = Object::new();
            o.insert("v".into(), v.into());
            o
        };
        let life = || "2026-12-06T02:00:00.000001Z".to_string();
        r.append(&a, &n, (1, life()), &p(1));
        r.append(&a, &n, (2, life()), &p(2));
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
            payload: p(2),
        };
        assert_eq!(got[&(a.clone(), n.clone())], last);

        // Emptied only past its threshold, and kept otherwise.
        let mut r = Replies::open(&root);
        r.settle();
        assert!(!read(&root).is_empty());
        r.len = SETTLE_BYTES;
        r.settle();
        assert!(read(&root).is_empty());
        r.append(&a, &n, (3, life()), &p(3));
        assert_eq!(
            read(&root)[&(a, n)].attempt,
            3,
            "appends go on after emptying"
        );
    }

    #[test]
    fn a_reply_ends_only_its_own_life_and_attempt() {
        let life = "2026-12-06T02:00:00.000001Z";
        let replied = |attempt, created: Option<&str>| Replied {
            attempt,
            created: created.map(str::to_string),
            payload: Object::new(),
        };
        assert!(replied(1, Some(life)).ended(1, life));
        assert!(!replied(2, Some(life)).ended(1, life));
        // The same id used again after gc: attempt 1 again, another life.
        assert!(!replied(1, Some(life)).ended(1, "2026-12-06T03:00:00.000001Z"));
        // A line of an older version names no life.
        assert!(replied(1, None).ended(1, life));
        assert!(!replied(0, None).ended(0, life));
    }
}
