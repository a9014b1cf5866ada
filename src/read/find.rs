//! Finding one task by id wherever it is (`in/`, `run/`, its record), and
//! reading records and points logs.

use std::io;
use std::path::{Path, PathBuf};

use crate::layout::Root;
use crate::model::names::{Exid, TaskId};
use crate::model::point::Point;
use crate::model::task::{Record, TaskFile};
use crate::store::intake::counted_entries;
use crate::store::spool;

/// The largest record or task file read.
pub const READ_LIMIT: u64 = 16 * 1024 * 1024;

/// Why something could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a record: {message}")]
    Record { path: PathBuf, message: String },
}

/// Where a task is (SPEC 4: in exactly one place at every instant).
#[derive(Debug)]
pub enum Place {
    /// Dropped, not taken yet: the file in `in/` or `in/<domain>/`.
    In(PathBuf),
    /// Accepted, queued or running: its file in `run/`.
    Run(PathBuf),
    /// Ended: its record in `done/` or `failed/`.
    Ended(Box<Record>),
    /// Refused at intake: `rejected/<id>.json`, with its reason (`None`
    /// for the moment between the move and the reason's write, or for
    /// ever after a crash in that moment).
    Rejected {
        path: PathBuf,
        reason: Option<String>,
    },
}

/// Finds a task by id. The places are looked at in the order a task
/// moves through them (`in/`, `run/`, its record; `in/`, `rejected/`), so
/// that a task moving while it is looked for is still found; the record
/// wins over a `run/` file left beside it (the record is authoritative
/// once written). A rejected file is found by its name: `<id>.json`, or
/// `<id>` itself, the name `list` gives a file not named `<id>.json`.
pub fn find(root: &Root, id: &TaskId) -> Result<Option<Place>, ReadError> {
    let waiting = find_in(root, id);
    let run = root.run_file(id);
    let running = run.exists();
    if let Some(record) = record(root, id)? {
        return Ok(Some(Place::Ended(Box::new(record))));
    }
    if running {
        return Ok(Some(Place::Run(run)));
    }
    if waiting.is_some() {
        return Ok(waiting.map(Place::In));
    }
    // A rejected file under `<id>.json`, else under the name `list`
    // shows for it (a file not named `<id>.json`: `x.txt`, `x.json.bak`).
    let own_reason = |n: &str| {
        root.rejected()
            .join(format!("{n}.reason"))
            .symlink_metadata()
            .is_ok()
    };
    let is_reason = crate::read::tasks::is_reason_name(id.as_str(), own_reason);
    let by_name = (!is_reason).then(|| id.as_str().to_string());
    for name in std::iter::once(format!("{id}.json")).chain(by_name) {
        if let Some(place) = newest_rejection(root, &name) {
            return Ok(Some(place));
        }
    }
    Ok(None)
}

/// The names a file named `name` may have in `rejected/`, as
/// [`spool::rejected_name`] gives them: `name`, then `name.1`, `name.2`,
/// … (a file of that name rejected again) as long as each exists or has
/// its reason (a crash between the two writes leaves a reason alone, and
/// the next rejection takes the number after it).
pub fn rejected_names(rejected: &Path, name: &str) -> Vec<String> {
    let taken = |n: &str| {
        rejected.join(n).symlink_metadata().is_ok()
            || rejected
                .join(format!("{n}{}", spool::REASON_SUFFIX))
                .symlink_metadata()
                .is_ok()
    };
    std::iter::once(spool::rejected_name(name, 0))
        .chain(
            (1..)
                .map(|n| spool::rejected_name(name, n))
                .take_while(|variant| taken(variant)),
        )
        .collect()
}

/// The newest rejection of a file named `name` (see [`rejected_names`]):
/// the one whose reason was written last (its own time without one). A
/// cancel or priority request named so is no task. Only the reasons of
/// the newest are read.
fn newest_rejection(root: &Root, name: &str) -> Option<Place> {
    let rejected = root.rejected();
    let mut found: Vec<(Option<std::time::SystemTime>, usize, PathBuf, PathBuf)> =
        rejected_names(&rejected, name)
            .into_iter()
            .enumerate()
            .filter_map(|(n, variant)| {
                let path = rejected.join(&variant);
                let at = path.symlink_metadata().ok()?;
                let reason_path = rejected.join(format!("{variant}.reason"));
                let written = reason_path
                    .metadata()
                    .and_then(|m| m.modified())
                    .or_else(|_| at.modified())
                    .ok();
                Some((written, n, path, reason_path))
            })
            .collect();
    // Newest first; of equal times, the later name.
    found.sort_unstable_by_key(|(written, n, ..)| std::cmp::Reverse((*written, *n)));
    found.into_iter().find_map(|(_, _, path, reason_path)| {
        let reason = read_reason(&reason_path).map(|r| r.trim_end().to_string());
        let request = reason
            .as_deref()
            .and_then(crate::read::tasks::Request::of_reason)
            .is_some();
        (!request).then_some(Place::Rejected { path, reason })
    })
}

/// The final record of a task, if it has one.
pub fn record(root: &Root, id: &TaskId) -> Result<Option<Record>, ReadError> {
    for path in [root.done_file(id), root.failed_file(id)] {
        match read_record(&path) {
            Err(ReadError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other.map(Some),
        }
    }
    Ok(None)
}

/// Reads one record file.
pub fn read_record(path: &Path) -> Result<Record, ReadError> {
    let bytes = spool::read_capped(path, READ_LIMIT).map_err(|e| match e {
        spool::SpoolError::Read { source, .. } => ReadError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => ReadError::Record {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ReadError::Record {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Every record in `done/` and `failed/` (unreadable ones as errors).
pub fn records(root: &Root) -> impl Iterator<Item = Result<Record, ReadError>> {
    [root.done(), root.failed()]
        .into_iter()
        .flat_map(|dir| {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "json")
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
        })
        .map(|p| read_record(&p))
}

/// The points of an execution (a torn last line skipped; none when it
/// has no log yet).
pub fn points(root: &Root, exid: &Exid) -> Result<Vec<Point>, ReadError> {
    let path = root.points_log(exid);
    match crate::store::points::read_points(&path) {
        Ok(points) => Ok(points),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(ReadError::Io { path, source }),
    }
}

/// A task file for `id` waiting in `in/`: named `<id>.json`, or naming
/// `id` inside (read only when no name matches).
pub fn find_in(root: &Root, id: &TaskId) -> Option<PathBuf> {
    let name = format!("{id}.json");
    let files: Vec<PathBuf> = counted_entries(root).collect();
    if let Some(p) = files
        .iter()
        .find(|p| p.file_name().is_some_and(|n| *n == *name))
    {
        return Some(p.clone());
    }
    files.into_iter().find(|p| {
        p.extension().is_some_and(|e| e == "json")
            && spool::read_capped(p, READ_LIMIT)
                .ok()
                .and_then(|b| TaskFile::parse(&b).ok())
                .and_then(|f| f.id)
                .is_some_and(|found| &found == id)
    })
}

/// How far back [`find_recently_rejected`] looks, and how many rejected
/// files at most it reads (and [`RECENT_REJECTIONS_BYTES`] at most).
pub const RECENT_REJECTIONS: std::time::Duration = std::time::Duration::from_secs(60);
pub const RECENT_REJECTIONS_READ: usize = 256;

/// A task rejected at intake under a name other than its id's (`foo.json`
/// holding `"id": "x1"`) in the last [`RECENT_REJECTIONS`] before `now`:
/// the newest rejected file naming `id` inside, among the
/// [`RECENT_REJECTIONS_READ`] newest rejections of that time. For a
/// command that looks for a task the engine may be rejecting at that
/// moment (`wait`, `logs --follow`), when [`find`] finds nothing: a
/// rejection by name costs no read, this one reads files, so it is
/// bounded, and not for every lookup. A rejection for a duplicate id is
/// another task's file, and a rejected request no task: neither is it.
pub fn find_recently_rejected(
    root: &Root,
    id: &TaskId,
    now: std::time::SystemTime,
) -> Option<Place> {
    let rejected = root.rejected();
    let since = now.checked_sub(RECENT_REJECTIONS)?;
    let mut recent: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(&rejected)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let file = name.strip_suffix(crate::store::spool::REASON_SUFFIX)?;
            let at = e.metadata().ok()?.modified().ok()?;
            (at >= since && !file.starts_with('.')).then(|| (at, file.to_string()))
        })
        .collect();
    recent.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
    let mut budget = RECENT_REJECTIONS_BYTES;
    for (_, name) in recent.into_iter().take(RECENT_REJECTIONS_READ) {
        let Some(reason) = read_reason(&rejected.join(format!("{name}.reason"))) else {
            continue;
        };
        let reason = reason.trim_end().to_string();
        if reason.starts_with("duplicate id ")
            || reason.starts_with("invalid JSON")
            || crate::read::tasks::Request::of_reason(&reason).is_some()
        {
            continue;
        }
        let path = rejected.join(&name);
        let Some(meta) = path.symlink_metadata().ok().filter(|m| m.is_file()) else {
            continue;
        };
        if meta.len() > budget {
            return None;
        }
        budget -= meta.len();
        let named = spool::read_capped(&path, READ_LIMIT)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<IdOnly>(&bytes).ok())
            .and_then(|file| file.id)
            .is_some_and(|found| found.as_str() == Some(id.as_str()));
        if named {
            return Some(Place::Rejected {
                path,
                reason: Some(reason),
            });
        }
    }
    None
}

/// The bytes of rejected files [`find_recently_rejected`] reads at most.
pub const RECENT_REJECTIONS_BYTES: u64 = 64 << 20;

/// A task file's `id`, the rest skipped unread into values.
#[derive(serde::Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// The reason beside a rejected file (at most 64 KiB of it), read as
/// every file under `var/` is (no link followed, no FIFO waited on).
pub fn read_reason(path: &Path) -> Option<String> {
    let bytes = crate::store::spool::read_capped(path, 64 << 10).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last `limit` bytes of a file, from the first whole line in them
/// (the whole file when it is smaller).
pub fn read_tail(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = crate::store::points::open_to_read(path)?;
    let len = file.metadata()?.len();
    if len <= limit {
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes)?;
        return Ok(bytes);
    }
    file.seek(SeekFrom::Start(len - limit))?;
    let mut bytes = Vec::with_capacity(limit as usize);
    file.take(limit).read_to_end(&mut bytes)?;
    let start = bytes
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |i| i + 1);
    Ok(bytes.split_off(start))
}

/// The earlier final records of a task run again by `retry`
/// (`history/<id>/`), oldest first.
pub fn history(root: &Root, id: &TaskId) -> Vec<Record> {
    crate::store::history::earlier_records(root, id)
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_found_where_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        let id = |s: &str| s.parse::<TaskId>().unwrap();
        assert!(find(&root, &id("nowhere")).unwrap().is_none());

        std::fs::create_dir(root.spool_in().join("org")).unwrap();
        std::fs::write(root.spool_in().join("org/a.json"), "{}").unwrap();
        std::fs::write(
            root.spool_in().join("x.json"),
            r#"{"domain":"org","id":"b"}"#,
        )
        .unwrap();
        std::fs::write(root.spool_in().join(".c.json"), "{}").unwrap();
        assert!(matches!(find(&root, &id("a")).unwrap(), Some(Place::In(_))));
        assert!(
            matches!(find(&root, &id("b")).unwrap(), Some(Place::In(p)) if p.ends_with("x.json"))
        );
        assert!(find(&root, &id("c")).unwrap().is_none(), "an ignored name");

        std::fs::write(root.run_file(&id("d")), "{}").unwrap();
        assert!(matches!(
            find(&root, &id("d")).unwrap(),
            Some(Place::Run(_))
        ));

        let rec = serde_json::json!({
            "id": "d", "exid": "d", "nid": "0", "domain": "org", "tasker": null,
            "taskee": null, "tasker_path": null, "state": "completed", "reason": null,
            "error": null, "attempts": 1, "offers": 1, "priority": 0, "headers": {},
            "created_at": null, "started_at": null, "ended_at": null, "payload": {}
        });
        std::fs::write(root.done_file(&id("d")), rec.to_string()).unwrap();
        match find(&root, &id("d")).unwrap() {
            Some(Place::Ended(r)) => assert_eq!(r.id.as_str(), "d"),
            other => panic!("{other:?}"),
        }
        assert_eq!(records(&root).filter(|r| r.is_ok()).count(), 1);
        std::fs::write(root.failed_file(&id("bad")), "not json").unwrap();
        assert!(matches!(
            record(&root, &id("bad")),
            Err(ReadError::Record { .. })
        ));
        assert!(points(&root, &id("d")).unwrap().is_empty());
    }

    /// A file rejected again under its name (`x2.json.1` beside an older
    /// `x2.json`) is found as its newest rejection.
    #[test]
    fn a_task_rejected_again_is_found_as_its_newest_rejection() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        let rejected = |name: &str, reason: &str, age: u64| {
            std::fs::write(root.rejected().join(name), "{").unwrap();
            let reason_path = root.rejected().join(format!("{name}.reason"));
            std::fs::write(&reason_path, reason).unwrap();
            let at = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
            std::fs::File::options()
                .write(true)
                .open(&reason_path)
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        rejected("x2.json", "an old reason\n", 3600);
        rejected("x2.json.1", "the new reason\n", 0);
        rejected("x2.json.2", "a middle reason\n", 60);
        let id: TaskId = "x2".parse().unwrap();
        let found = || match find(&root, &id).unwrap() {
            Some(Place::Rejected { path, reason }) => (path, reason),
            other => panic!("{other:?}"),
        };
        let (path, reason) = found();
        assert_eq!(path, root.rejected().join("x2.json.1"));
        assert_eq!(reason.as_deref(), Some("the new reason"));
        // A reason left alone by a crash (its file never moved) does not
        // hide the names after it.
        std::fs::remove_file(root.rejected().join("x2.json.1")).unwrap();
        rejected("x2.json.3", "the newest reason\n", 0);
        let (path, reason) = found();
        assert_eq!(path, root.rejected().join("x2.json.3"));
        assert_eq!(reason.as_deref(), Some("the newest reason"));
    }

    /// A task rejected under another name is found by the id inside, if
    /// its rejection is recent; a duplicate-id rejection or a request is
    /// not the task.
    #[test]
    fn a_task_rejected_under_another_name_is_found_while_its_rejection_is_recent() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        let rejected = |name: &str, body: &str, reason: &str| {
            std::fs::write(root.rejected().join(name), body).unwrap();
            std::fs::write(root.rejected().join(format!("{name}.reason")), reason).unwrap();
        };
        rejected(
            "foo.json",
            r#"{"id":"x1","domain":"other"}"#,
            "domain other is outside in/org\n",
        );
        rejected("dup.json", r#"{"id":"x2"}"#, "duplicate id x2\n");
        rejected(
            "bad.json",
            r#"{"id":"x3""#,
            "invalid JSON at line 1 column 11\n",
        );
        let now = std::time::SystemTime::now();
        let id = |s: &str| s.parse::<TaskId>().unwrap();
        match find_recently_rejected(&root, &id("x1"), now) {
            Some(Place::Rejected { path, reason }) => {
                assert_eq!(path, root.rejected().join("foo.json"));
                assert_eq!(reason.as_deref(), Some("domain other is outside in/org"));
            }
            other => panic!("{other:?}"),
        }
        assert!(find_recently_rejected(&root, &id("x2"), now).is_none());
        assert!(find_recently_rejected(&root, &id("x3"), now).is_none());
        assert!(find_recently_rejected(&root, &id("x4"), now).is_none());
        // Long after.
        let later = now + RECENT_REJECTIONS + std::time::Duration::from_secs(5);
        assert!(find_recently_rejected(&root, &id("x1"), later).is_none());
        // `find` itself reads no file for it.
        assert!(find(&root, &id("x1")).unwrap().is_none());
    }

    #[test]
    fn a_rejected_file_is_found_by_its_id_or_by_the_name_list_gives_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        let id = |s: &str| s.parse::<TaskId>().unwrap();
        let rejected = |name: &str, reason: &str| {
            std::fs::write(root.rejected().join(name), "{").unwrap();
            std::fs::write(root.rejected().join(format!("{name}.reason")), reason).unwrap();
        };
        rejected("a.json", "not JSON\n");
        rejected("notes.txt", "not a .json name\n");
        rejected("b.json.bak", "not a .json name\n");
        let reason_of = |s: &str| match find(&root, &id(s)).unwrap() {
            Some(Place::Rejected { reason, .. }) => reason,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(reason_of("a").as_deref(), Some("not JSON"));
        assert_eq!(reason_of("a.json").as_deref(), Some("not JSON"));
        assert_eq!(reason_of("notes.txt").as_deref(), Some("not a .json name"));
        assert_eq!(reason_of("b.json.bak").as_deref(), Some("not a .json name"));
        // A reason is no rejected task of its own.
        assert!(find(&root, &id("notes.txt.reason")).unwrap().is_none());
        assert!(find(&root, &id("notes")).unwrap().is_none());

        // A rejected file named `*.reason`, with its own reason beside it.
        rejected("x.reason", "a reason-like name\n");
        assert_eq!(reason_of("x.reason").as_deref(), Some("a reason-like name"));
    }
}
