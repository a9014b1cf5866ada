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
    let index_path = root.records_index();
    let mut cached = load(&index_path);
    let mut out = Records::default();
    let mut keys: Vec<(&'static str, String, u64)> = Vec::new();
    let mut changed = false;
    for (dir_name, dir) in [("done", root.done()), ("failed", root.failed())] {
        for (name, ino) in listing(&dir) {
            let path = dir.join(&name);
            let hit = cached
                .remove(&name)
                .filter(|(d, i, _)| d == dir_name && *i == ino);
            let summary = match hit {
                Some((_, _, s)) => s,
                None => match read_record(&path) {
                    Ok(r) => {
                        changed = true;
                        Summary::of_record(&r)
                    }
                    Err(e) => {
                        out.unreadable.push(e.to_string());
                        continue;
                    }
                },
            };
            keys.push((dir_name, name, ino));
            out.files.push(RecordFile { path, summary });
        }
    }
    if changed || !cached.is_empty() {
        // Best effort: a cache that cannot be saved is rebuilt next time.
        let _ = save(&index_path, &keys, &out.files);
    }
    out
}

/// The record files of a directory: (name, inode), from the listing alone.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (name.ends_with(".json") && !name.starts_with('.')).then(|| (name, e.ino()))
        })
        .collect()
}

/// The cached summaries by record file name: (directory, inode, summary).
type Cached = HashMap<String, (String, u64, Summary)>;

/// The cached lines, or nothing when the file is missing, of another
/// version, or torn (a line that does not parse is dropped: its record is
/// read again).
fn load(path: &Path) -> Cached {
    let Ok(bytes) = std::fs::read(path) else {
        return Cached::new();
    };
    let mut lines = bytes.split(|b| *b == b'\n');
    let header = format!("spoolflow records index {VERSION}");
    if lines.next() != Some(header.as_bytes()) {
        return Cached::new();
    }
    let mut cached = Cached::with_capacity(bytes.len() / 256);
    for l in lines {
        if let Ok(l) = serde_json::from_slice::<LineIn>(l) {
            cached.insert(l.name, (l.dir, l.ino, l.summary));
        }
    }
    cached
}

/// Writes the index whole (temp file, rename; no fsync: it is a cache).
fn save(path: &Path, keys: &[(&str, String, u64)], files: &[RecordFile]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut w = BufWriter::new(tmp.as_file());
    writeln!(w, "spoolflow records index {VERSION}")?;
    for ((dir, name, ino), file) in keys.iter().zip(files) {
        let line = LineOut {
            dir,
            name,
            ino: *ino,
            summary: &file.summary,
        };
        serde_json::to_writer(&mut w, &line)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    drop(w);
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
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
}
