//! The records index: the [`Summary`] of every record in `done/` and
//! `failed/`, cached in `var/cache/records.idx` so that `status` and `list`
//! need not open 100 000 records each time. It is derived from the records
//! and never the truth: each use lists the two directories, keeps the
//! cached summaries whose file (name and inode) is still there, reads the
//! records that are new, and drops the rest. Deleting the file loses
//! nothing; a root that cannot be written (a read-only mount, another
//! user) is read without saving it.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::layout::Root;
use crate::read::find::read_record;
use crate::read::summary::Summary;

/// The format of the index file; a file of another version is rebuilt.
const VERSION: u32 = 2;

/// One record's line in the index (as written: borrowed).
#[derive(Debug, Serialize)]
struct LineOut<'a> {
    /// `done` or `failed`.
    dir: &'a str,
    name: &'a str,
    ino: u64,
    summary: &'a Summary,
}

/// One record's line in the index (as read).
#[derive(Debug, Deserialize)]
struct LineIn {
    dir: String,
    name: String,
    ino: u64,
    summary: Summary,
}

/// A record file found in `done/` or `failed/`.
#[derive(Debug)]
pub struct RecordFile {
    pub path: PathBuf,
    pub summary: Summary,
}

/// What the index gives: the records' summaries, and the record files
/// that could not be read (named, not skipped silently).
#[derive(Debug, Default)]
pub struct Records {
    pub files: Vec<RecordFile>,
    pub unreadable: Vec<String>,
}

/// Every record's summary, through the index (updated when it is stale).
pub fn records(root: &Root) -> Records {
    let mut index = Index::load(root);
    let (changed, unreadable) = index.refresh(root);
    if changed {
        // Best effort: a cache that cannot be saved is rebuilt next time.
        let _ = index.save(root);
    }
    Records {
        files: index.into_files(root),
        unreadable,
    }
}

/// The two directories of records, as the index names them.
const DIRS: [&str; 2] = ["done", "failed"];

/// The records index in memory: loaded from its file by each command, or
/// kept between changes by a long-lived reader (the dashboard), which then
/// reads only the records that are new and copies none of the others.
#[derive(Debug, Default)]
pub struct Index {
    /// One map per directory of [`DIRS`], by file name.
    dirs: [HashMap<String, Entry>; 2],
    /// The number of the latest [`Index::refresh`].
    pass: u64,
}

/// One record file of the index.
#[derive(Debug)]
struct Entry {
    ino: u64,
    summary: Arc<Summary>,
    /// The refresh that last saw the file.
    seen: u64,
}

impl Index {
    /// The index as its file holds it (empty when the file is missing, of
    /// another version, or torn: a line that does not parse is dropped,
    /// its record is read again).
    pub fn load(root: &Root) -> Index {
        let mut index = Index::default();
        let Ok(bytes) = std::fs::read(root.records_index()) else {
            return index;
        };
        let mut lines = bytes.split(|b| *b == b'\n');
        let header = format!("spoolflow records index {VERSION}");
        if lines.next() != Some(header.as_bytes()) {
            return index;
        }
        for l in lines {
            let Ok(l) = serde_json::from_slice::<LineIn>(l) else {
                continue;
            };
            let Some(d) = DIRS.iter().position(|d| *d == l.dir) else {
                continue;
            };
            let entry = Entry {
                ino: l.ino,
                summary: Arc::new(l.summary),
                seen: 0,
            };
            index.dirs[d].insert(l.name, entry);
        }
        index
    }

    /// Brings the index up to `done/` and `failed/` as they are listed
    /// now: keeps the summaries whose file (name and inode) is still
    /// there, reads the records that are new, drops the rest. Gives
    /// whether the index changed, and the record files that could not be
    /// read (named, not skipped silently).
    pub fn refresh(&mut self, root: &Root) -> (bool, Vec<String>) {
        self.pass += 1;
        let pass = self.pass;
        let mut changed = false;
        let mut unreadable = Vec::new();
        for (d, dir) in [root.done(), root.failed()].iter().enumerate() {
            let map = &mut self.dirs[d];
            let names = match listing(dir) {
                Ok(names) => names,
                // Not listed is not empty: its summaries are kept as they
                // were, and the next refresh lists it again.
                Err(e) => {
                    unreadable.push(format!("cannot list {}: {e}", dir.display()));
                    map.values_mut().for_each(|e| e.seen = pass);
                    continue;
                }
            };
            for (name, ino) in names {
                match map.get_mut(name.as_str()) {
                    Some(e) if e.ino == ino => e.seen = pass,
                    _ => match read_record(&dir.join(&name)) {
                        Ok(r) => {
                            changed = true;
                            let summary = Arc::new(Summary::of_record(&r));
                            map.insert(
                                name,
                                Entry {
                                    ino,
                                    summary,
                                    seen: pass,
                                },
                            );
                        }
                        Err(e) => unreadable.push(e.to_string()),
                    },
                }
            }
            let before = map.len();
            map.retain(|_, e| e.seen == pass);
            changed |= map.len() != before;
        }
        (changed, unreadable)
    }

    /// Forgets what the index holds of the record file at `path` (in
    /// `done/` or `failed/`): the next [`Index::refresh`] reads it again
    /// if it is there. For a reader told that the file changed: its inode
    /// alone cannot tell a new record that got a freed number.
    pub fn forget(&mut self, path: &Path) {
        let dir = path
            .parent()
            .and_then(Path::file_name)
            .and_then(|d| DIRS.iter().position(|x| std::ffi::OsStr::new(x) == d));
        let name = path.file_name().and_then(|n| n.to_str());
        if let (Some(d), Some(name)) = (dir, name) {
            self.dirs[d].remove(name);
        }
    }

    /// Every record's summary, shared.
    pub fn summaries(&self) -> impl Iterator<Item = &Arc<Summary>> {
        self.dirs
            .iter()
            .flat_map(|m| m.values().map(|e| &e.summary))
    }

    /// The record files with their summaries.
    fn into_files(self, root: &Root) -> Vec<RecordFile> {
        let [done, failed] = self.dirs;
        let files = |map: HashMap<String, Entry>, dir: PathBuf| {
            map.into_iter().map(move |(name, e)| RecordFile {
                path: dir.join(name),
                summary: Arc::unwrap_or_clone(e.summary),
            })
        };
        files(done, root.done())
            .chain(files(failed, root.failed()))
            .collect()
    }

    /// Writes the index whole (temp file, rename; no fsync: it is a cache).
    pub fn save(&self, root: &Root) -> std::io::Result<()> {
        let path = root.records_index();
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        let mut w = BufWriter::new(tmp.as_file());
        writeln!(w, "spoolflow records index {VERSION}")?;
        for (dir, map) in DIRS.iter().zip(&self.dirs) {
            for (name, e) in map {
                let line = LineOut {
                    dir,
                    name,
                    ino: e.ino,
                    summary: &e.summary,
                };
                serde_json::to_writer(&mut w, &line)?;
                w.write_all(b"\n")?;
            }
        }
        w.flush()?;
        drop(w);
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The record files of a directory: (name, inode), from the listing
/// alone. A directory that is not there holds none.
fn listing(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e?;
        if let Ok(name) = e.file_name().into_string() {
            if name.ends_with(".json") && !name.starts_with('.') {
                names.push((name, e.ino()));
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: &str, state: &str) -> String {
        json!({
            "id": id, "exid": id, "nid": "0", "domain": "org.example", "tasker": null,
            "taskee": "stamp", "tasker_path": null, "state": state, "reason": null,
            "error": null, "attempts": 1, "offers": 1, "priority": 0, "headers": {},
            "created_at": null, "started_at": null, "ended_at": null, "payload": {}
        })
        .to_string()
    }

    #[test]
    fn the_index_follows_the_records_and_is_never_the_truth() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        std::fs::write(root.done().join("a.json"), record("a", "completed")).unwrap();
        std::fs::write(root.failed().join("b.json"), record("b", "failed")).unwrap();
        std::fs::write(root.failed().join("bad.json"), "not json").unwrap();
        let first = records(&root);
        assert_eq!(first.files.len(), 2);
        assert_eq!(first.unreadable.len(), 1, "{:?}", first.unreadable);
        assert!(root.records_index().exists());

        // A record rewritten under the same name (a new inode) is read
        // again; a removed one is gone; a new one appears.
        let tmp_file = root.done().join(".new");
        std::fs::write(&tmp_file, record("a", "aborted")).unwrap();
        std::fs::rename(&tmp_file, root.done().join("a.json")).unwrap();
        std::fs::remove_file(root.failed().join("b.json")).unwrap();
        std::fs::write(root.done().join("c.json"), record("c", "completed")).unwrap();
        let mut second: Vec<(String, String)> = records(&root)
            .files
            .into_iter()
            .map(|f| (f.summary.id, f.summary.state.to_string()))
            .collect();
        second.sort();
        assert_eq!(
            second,
            [
                ("a".into(), "aborted".into()),
                ("c".into(), "completed".into())
            ]
        );

        // A torn or foreign index is rebuilt from the records.
        std::fs::write(root.records_index(), "garbage\n{").unwrap();
        assert_eq!(records(&root).files.len(), 2);
    }

    #[test]
    fn a_record_forgotten_is_read_again_whatever_its_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        let path = root.done().join("a.json");
        std::fs::write(&path, record("a", "completed")).unwrap();
        let mut index = Index::load(&root);
        index.refresh(&root);
        // What `gc` and a new record of the same id that got the freed
        // inode look like to the listing: the same name and number.
        std::fs::write(&path, record("a", "aborted")).unwrap();
        index.refresh(&root);
        let state = |i: &Index| {
            i.summaries()
                .map(|s| s.state.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            state(&index),
            ["completed"],
            "the listing alone cannot tell"
        );
        index.forget(&path);
        index.forget(&root.failed().join("nosuch.json"));
        index.forget(Path::new("/elsewhere/a.json"));
        assert_eq!(index.refresh(&root), (true, vec![]));
        assert_eq!(state(&index), ["aborted"]);
    }

    #[test]
    fn a_kept_index_reads_only_the_records_that_are_new() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        std::fs::write(root.done().join("a.json"), record("a", "completed")).unwrap();
        let mut index = Index::load(&root);
        assert_eq!(index.refresh(&root), (true, vec![]));
        // Nothing new: nothing read (a record garbled in place, the same
        // inode, is not read again) and nothing changed.
        std::fs::write(root.done().join("a.json"), "garbled").unwrap();
        assert_eq!(index.refresh(&root), (false, vec![]));
        std::fs::write(root.failed().join("b.json"), record("b", "failed")).unwrap();
        assert_eq!(index.refresh(&root), (true, vec![]));
        let mut ids: Vec<String> = index.summaries().map(|s| s.id.clone()).collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        // A directory that cannot be listed is not taken as empty.
        let away = tmp.path().join("done.away");
        std::fs::rename(root.done(), &away).unwrap();
        std::fs::write(root.done(), "not a directory").unwrap();
        let (changed, unreadable) = index.refresh(&root);
        assert!(!changed && unreadable.len() == 1, "{unreadable:?}");
        assert_eq!(index.summaries().count(), 2);
        std::fs::remove_file(root.done()).unwrap();
        std::fs::rename(&away, root.done()).unwrap();
        // A record gone is dropped; the saved index is what a command loads.
        std::fs::remove_file(root.done().join("a.json")).unwrap();
        assert_eq!(index.refresh(&root), (true, vec![]));
        index.save(&root).unwrap();
        let loaded = Index::load(&root);
        let ids: Vec<&str> = loaded.summaries().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["b"]);
    }
}
