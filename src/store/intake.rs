//! Intake (SPEC section 3): what an entry of `var/spool/in/` is — a task
//! to claim, a domain's spool directory, something to reject (with the
//! reason a person reads in `rejected/<name>.reason`), or a name to ignore.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::layout::Root;
use crate::model::names::{Domain, TaskId};
use crate::model::task::{InputError, Task, TaskFile};
use crate::store::spool::{self, SpoolError};

/// What to do with an entry of `in/`.
#[derive(Debug)]
pub enum Intake {
    /// A dotfile, a `*.tmp`, or gone already.
    Ignore,
    /// Move to `rejected/` with this reason.
    Reject { path: PathBuf, reason: String },
    /// A regular file whose bytes end before its JSON does: cut short, or
    /// still being written in place. Rejected with this reason unless its
    /// writer may still be at work (the engine decides: see
    /// `engine::intake`).
    Incomplete { path: PathBuf, reason: String },
    /// A valid `in/<domain>/` directory: scan it.
    DomainDir(PathBuf),
    /// A task to claim. `self_contained`: its bytes name its domain, so the
    /// file can be renamed into `run/` as it is; otherwise the engine
    /// writes the completed task there.
    Task {
        path: PathBuf,
        task: Box<Task>,
        self_contained: bool,
        /// When the file was last written (the record's `created_at`).
        submitted: Option<std::time::SystemTime>,
        /// The file read (device, inode): the claim moves only that one.
        ident: (u64, u64),
    },
}

/// Whether a file name is one the engine never looks at (a writer's
/// temporary).
pub fn is_ignored_name(name: &str) -> bool {
    is_ignored_bytes(name.as_bytes())
}

/// [`is_ignored_name`] for any name, UTF-8 or not (`.` and `.tmp` are
/// the same bytes either way).
pub fn is_ignored_bytes(name: &[u8]) -> bool {
    name.starts_with(b".") || name.ends_with(b".tmp")
}

/// The reason an entry whose name is not UTF-8 is rejected: the name with
/// its bytes shown (the rejected copy's name has U+FFFD in their place).
pub fn not_utf8_reason(name: &std::ffi::OsStr) -> String {
    use std::os::unix::ffi::OsStrExt;
    format!(
        "name is not valid UTF-8: {} (bytes that are not UTF-8 shown as \\xNN; the rejected copy's name has U+FFFD in their place); use a UTF-8 name",
        crate::text::escaped_bytes(name.as_bytes())
    )
}

/// The entries of `in/` that count (the one definition, shared by intake,
/// `--drain` and `cancel`): every entry whose name is not ignored, except
/// that a domain's directory is not itself an entry — the entries inside
/// it whose names are not ignored are.
pub fn counted_entries(root: &Root) -> impl Iterator<Item = PathBuf> {
    let listing = |dir: &Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !is_ignored_name(&e.file_name().to_string_lossy()))
    };
    listing(&root.spool_in()).flat_map(move |e| {
        let inner: Vec<PathBuf> = if is_domain_dir(&e) {
            listing(&e.path()).map(|f| f.path()).collect()
        } else {
            vec![e.path()]
        };
        inner
    })
}

/// Whether an entry of `in/` is a domain's directory (by its type as
/// listed, and its name).
pub fn is_domain_dir(e: &std::fs::DirEntry) -> bool {
    e.file_type().is_ok_and(|t| t.is_dir())
        && e.file_name().to_string_lossy().parse::<Domain>().is_ok()
}

/// The entries of `dir` (`in/`, or a domain's `in/<domain>/`) in
/// submission order: by modification time (a renamed file keeps the time
/// its writer last wrote it), then by name. In `in/` itself the files of
/// each domain's directory are listed in place of the directory, so that
/// they take their turn among the others (a directory that cannot be
/// listed is itself listed).
pub fn in_submission_order(root: &Root, dir: &Path) -> Vec<PathBuf> {
    let top = dir == root.spool_in();
    let listing = |d: &Path| -> Vec<std::fs::DirEntry> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .collect()
    };
    let mut paths = Vec::new();
    for e in listing(dir) {
        let domain_dir = top
            && e.file_type().is_ok_and(|t| t.is_dir())
            && e.file_name()
                .to_str()
                .is_some_and(|n| !is_ignored_name(n) && n.parse::<Domain>().is_ok());
        if domain_dir {
            match std::fs::read_dir(e.path()) {
                Ok(entries) => paths.extend(entries.flatten().map(|f| f.path())),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                // Unreadable: the directory itself, for the engine to say so.
                Err(_) => paths.push(e.path()),
            }
        } else {
            paths.push(e.path());
        }
    }
    sort_by_submission(&mut paths);
    paths
}

/// Sorts paths by modification time, then name (a path that cannot be
/// read sorts first: looking at it costs nothing).
pub fn sort_by_submission(paths: &mut [PathBuf]) {
    paths.sort_by_cached_key(|p| {
        let mtime = std::fs::symlink_metadata(p).and_then(|m| m.modified()).ok();
        (mtime, p.file_name().map(|n| n.to_os_string()))
    });
}

/// `fcntl`'s `F_SETSIG` on Linux (every architecture; `libc` lacks it).
const F_SETSIG: libc::c_int = 10;

/// Whether some process has the regular file at `path` open for writing:
/// `Some(true)`, `Some(false)`, or `None` when this cannot be told (the
/// file is not this user's and the engine lacks `CAP_LEASE`, leases are
/// off or unsupported by the filesystem). Told by a read lease, which
/// the kernel grants only on a file nobody has open for writing, and
/// which is given back at once; a writer opening the file in the
/// microseconds between would only send `SIGWINCH` (ignored by default)
/// and wait for the release.
#[allow(unsafe_code)]
pub fn open_for_writing(path: &Path) -> Option<bool> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor owned by `file`, open for the whole
    // block, with integer arguments only.
    let granted = unsafe {
        if libc::fcntl(fd, F_SETSIG, libc::SIGWINCH) != 0 {
            return None;
        }
        let granted = libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0;
        if granted {
            libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
        }
        granted
    };
    if granted {
        return Some(false);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Some(true),
        _ => None,
    }
}

/// Whether `in/` holds nothing to take (what `run --drain` waits for).
pub fn in_is_empty(root: &Root) -> bool {
    counted_entries(root).next().is_none()
}

/// The result of one step of [`examine`]: `Ok` to go on, `Err` once the
/// entry's fate is settled — not only by a refusal: an entry to ignore and
/// a domain's directory end the examination too.
type Step<T> = Result<T, Intake>;

/// Examines one path under `in/`, reading at most `limit` bytes of it.
pub fn examine(root: &Root, path: &Path, limit: u64) -> Intake {
    examine_steps(root, path, limit).unwrap_or_else(|settled| settled)
}

/// The checks of [`examine`] in their order: cheap ones on the name first,
/// then the entry's type, and the file's bytes only once it may be a task.
fn examine_steps(root: &Root, path: &Path, limit: u64) -> Step<Intake> {
    let spool_in = root.spool_in();
    let parts = parts_under(&spool_in, path);
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        // Gone already (taken, or renamed by its writer).
        return Err(Intake::Ignore);
    };
    let parts = parts?;
    let Some(&name) = parts.last() else {
        return Err(Intake::Ignore);
    };
    let dir_domain = dir_domain(&parts)?;
    check_type(path, &parts, dir_domain.is_some(), meta.file_type())?;
    let mut file = read_task_file(path, name, limit)?;
    // What was read is the file stat'ed above (not one renamed over it
    // meanwhile, which its own event brings).
    if crate::store::writer::ident_of(path) != Some(ident(&meta)) {
        return Err(Intake::Ignore);
    }
    let domain = file.domain.clone().or_else(|| dir_domain.clone());
    if let (Some(flow), Some(domain)) = (file.flow.take(), domain) {
        let resolved = prepare_flow(root, &domain, flow).map_err(|e| reject(path, e))?;
        file.flow = Some(resolved);
    }
    Ok(accept(path, file, name, &meta, dir_domain))
}

/// A file's device and inode.
fn ident(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// A flow's tree checked and made whole (SPEC 12): a stored flow's name or
/// a tree, with every stored flow it names inlined (so that editing one
/// never changes a flow already claimed), within the limits of depth and
/// size. The error is the reason the task file is rejected.
pub fn prepare_flow(root: &Root, domain: &Domain, flow: Value) -> Result<Value, String> {
    use crate::flow::tree::{self, FlowNode, Kind, OnError};
    let node = match &flow {
        Value::String(name) => FlowNode {
            kind: Kind::Stored(name.clone()),
            on_error: OnError::Fail,
        },
        _ => tree::parse(&flow).map_err(|e| format!("flow: {e}"))?,
    };
    let mut lookup = |name: &str| crate::store::flows::lookup(root, domain, name);
    let resolved = tree::resolve(node, &mut lookup).map_err(|e| format!("flow: {e}"))?;
    Ok(tree::to_json(&resolved))
}

/// A refusal of the entry at `path`.
fn reject(path: &Path, reason: impl Into<String>) -> Intake {
    Intake::Reject {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The names of `path`'s components below `in/`, none of them empty. An
/// entry whose own name is not UTF-8 is rejected, with its bytes in the
/// reason; one inside a directory whose name is not UTF-8 goes with that
/// directory, rejected as a whole.
fn parts_under<'p>(spool_in: &Path, path: &'p Path) -> Step<Vec<&'p str>> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(rel) = path.strip_prefix(spool_in) else {
        return Err(Intake::Ignore);
    };
    let names: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s),
            _ => None,
        })
        .collect();
    let Some(last) = names.last() else {
        return Err(Intake::Ignore);
    };
    if names.iter().any(|n| n.as_bytes().starts_with(b".")) || is_ignored_bytes(last.as_bytes()) {
        return Err(Intake::Ignore);
    }
    let mut parts = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        match n.to_str() {
            Some(s) => parts.push(s),
            // In in/ or a domain's directory: that entry is rejected.
            None if i + 1 == names.len()
                && (i == 0 || (i == 1 && parts[0].parse::<Domain>().is_ok())) =>
            {
                return Err(reject(path, not_utf8_reason(n)))
            }
            // Inside a directory that is itself rejected as a whole.
            None => return Err(Intake::Ignore),
        }
    }
    Ok(parts)
}

/// The domain of the spool directory an entry was dropped into
/// (`in/<domain>/<name>`), `None` for an entry of `in/` itself.
fn dir_domain(parts: &[&str]) -> Step<Option<Domain>> {
    if parts.len() > 2 {
        // Inside a subdirectory of a domain's spool: that subdirectory is
        // rejected as a whole when it is seen.
        return Err(Intake::Ignore);
    }
    if parts.len() != 2 {
        return Ok(None);
    }
    match parts[0].parse::<Domain>() {
        Ok(d) => Ok(Some(d)),
        // The directory itself is rejected.
        Err(_) => Err(Intake::Ignore),
    }
}

/// Settles every entry that is not a regular file: a link is refused
/// without being followed, a domain's directory is to be scanned, any
/// other directory or special file is refused.
fn check_type(path: &Path, parts: &[&str], nested: bool, ft: std::fs::FileType) -> Step<()> {
    let name = parts[parts.len() - 1];
    if ft.is_symlink() {
        return Err(reject(
            path,
            "symbolic links are not accepted (moved here as the link, never followed)",
        ));
    }
    if ft.is_dir() {
        if nested {
            return Err(reject(path, format!(
                "subdirectory {name} of in/{} is not accepted: drop task files into in/ or in/<domain>/",
                parts[0]
            )));
        }
        return Err(match name.parse::<Domain>() {
            Ok(_) => Intake::DomainDir(path.to_path_buf()),
            Err(e) => reject(
                path,
                format!("subdirectory {name} of in/ is not a domain's spool: {e}"),
            ),
        });
    }
    if !ft.is_file() {
        return Err(reject(
            path,
            "not a regular file (a FIFO, socket or device)",
        ));
    }
    Ok(())
}

/// Reads and parses a regular file named `name`, at most `limit` bytes;
/// a file gone meanwhile is ignored (taken or renamed by its writer).
fn read_task_file(path: &Path, name: &str, limit: u64) -> Step<TaskFile> {
    if !name.ends_with(".json") {
        return Err(reject(path, format!("{name} does not end in .json (task files are *.json; writers use .tmp or dotfile names, then rename)")));
    }
    let bytes = match spool::read_capped(path, limit) {
        Ok(b) => b,
        Err(SpoolError::TooLarge { limit, .. }) => {
            return Err(reject(path, format!("file is larger than {limit} bytes")))
        }
        Err(SpoolError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(Intake::Ignore)
        }
        Err(SpoolError::Read { source, .. }) => {
            return Err(reject(path, format!("unreadable: {source}")))
        }
        Err(e) => return Err(reject(path, e.to_string())),
    };
    TaskFile::parse(&bytes).map_err(|e| match e {
        InputError::Json { eof: true, .. } => Intake::Incomplete {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
        e => reject(path, e.to_string()),
    })
}

/// The task of a parsed file, within the bounds of the spool directory it
/// was dropped into. A file with no usable id (neither its own nor its
/// name's) gets one derived from the file, so that examining it again
/// names the same task.
fn accept(
    path: &Path,
    mut file: TaskFile,
    name: &str,
    meta: &std::fs::Metadata,
    dir_domain: Option<Domain>,
) -> Intake {
    let stem = name.strip_suffix(".json");
    if file.id.is_none() && stem.and_then(|s| s.parse::<TaskId>().ok()).is_none() {
        file.id = Some(TaskId::for_file(meta));
    }
    if let (Some(fd), Some(dd)) = (&file.domain, &dir_domain) {
        if !fd.is_in_branch_of(dd) {
            return reject(path, format!("domain {fd} is outside in/{dd}"));
        }
    }
    // A flow's claim writes its resolved tree into run/.
    let self_contained = file.domain.is_some() && file.flow.is_none();
    match Task::from_file(file, stem, dir_domain.as_ref()) {
        Ok(task) => Intake::Task {
            path: path.to_path_buf(),
            task: Box::new(task),
            self_contained,
            submitted: meta.modified().ok(),
            ident: ident(meta),
        },
        Err(e) => reject(path, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use crate::layout::temp_root as root;

    fn reason(i: Intake) -> String {
        match i {
            Intake::Reject { reason, .. } => reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn classifies_entries() {
        let (_t, root) = root();
        let inn = root.spool_in();
        fs::write(inn.join(".part"), "x").unwrap();
        fs::write(inn.join("a.tmp"), "x").unwrap();
        assert!(matches!(
            examine(&root, &inn.join(".part"), 100),
            Intake::Ignore
        ));
        assert!(matches!(
            examine(&root, &inn.join("a.tmp"), 100),
            Intake::Ignore
        ));
        assert!(matches!(
            examine(&root, &inn.join("gone.json"), 100),
            Intake::Ignore
        ));
        fs::write(inn.join("notes.txt"), "x").unwrap();
        assert!(
            reason(examine(&root, &inn.join("notes.txt"), 100)).contains("does not end in .json")
        );
        fs::write(inn.join("big.json"), vec![b' '; 101]).unwrap();
        assert!(
            reason(examine(&root, &inn.join("big.json"), 100)).contains("larger than 100 bytes")
        );
        fs::create_dir(inn.join("Bad Dir")).unwrap();
        assert!(reason(examine(&root, &inn.join("Bad Dir"), 100)).contains("not a domain's spool"));
        fs::create_dir(inn.join("org.example")).unwrap();
        assert!(matches!(
            examine(&root, &inn.join("org.example"), 100),
            Intake::DomainDir(_)
        ));
        fs::create_dir(inn.join("org.example/sub")).unwrap();
        assert!(reason(examine(&root, &inn.join("org.example/sub"), 100)).contains("not accepted"));
        std::os::unix::fs::symlink("/etc/passwd", inn.join("l.json")).unwrap();
        assert!(reason(examine(&root, &inn.join("l.json"), 100)).contains("symbolic link"));
    }

    #[test]
    fn a_file_open_for_writing_is_told_apart() {
        use std::io::Write;
        let (_t, root) = root();
        let p = root.spool_in().join("w.json");
        let mut f = fs::File::create(&p).unwrap();
        f.write_all(b"{").unwrap();
        // The tests' user owns the file: a lease can be asked for.
        assert_eq!(open_for_writing(&p), Some(true));
        drop(f);
        assert_eq!(open_for_writing(&p), Some(false));
        let reader = fs::File::open(&p).unwrap();
        assert_eq!(open_for_writing(&p), Some(false));
        drop(reader);
        assert_eq!(open_for_writing(&root.spool_in().join("gone.json")), None);
    }

    #[test]
    fn entries_come_in_submission_order() {
        use std::time::{Duration, SystemTime};
        let (_t, root) = root();
        let inn = root.spool_in();
        fs::create_dir(inn.join("org.x")).unwrap();
        let t0 = SystemTime::now() - Duration::from_secs(100);
        let files = [
            ("b.json", 1),
            ("a.json", 3),
            ("org.x/c.json", 2),
            ("d.json", 3),
        ];
        for (name, secs) in files {
            let f = fs::File::create(inn.join(name)).unwrap();
            f.set_modified(t0 + Duration::from_secs(secs)).unwrap();
        }
        let order: Vec<String> = in_submission_order(&root, &inn)
            .iter()
            .map(|p| p.strip_prefix(&inn).unwrap().display().to_string())
            .collect();
        assert_eq!(order, ["b.json", "org.x/c.json", "a.json", "d.json"]);
    }

    #[test]
    fn a_name_that_is_not_utf8_rejects_only_itself() {
        use std::os::unix::ffi::OsStrExt;
        let (_t, root) = root();
        let dir = root.spool_in().join("org.x");
        fs::create_dir(&dir).unwrap();
        let bad = dir.join(std::ffi::OsStr::from_bytes(b"bad\xff.json"));
        fs::write(&bad, "{}").unwrap();
        match examine(&root, &bad, 100) {
            Intake::Reject { path, reason } => {
                assert_eq!(path, bad);
                assert!(reason.contains("UTF-8"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_name_that_is_not_utf8_directly_in_in_is_rejected_with_its_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let (_t, root) = root();
        let inn = root.spool_in();
        let bad = inn.join(std::ffi::OsStr::from_bytes(b"bad\xff.json"));
        fs::write(&bad, "{}").unwrap();
        let r = reason(examine(&root, &bad, 100));
        assert!(
            r.starts_with("name is not valid UTF-8: bad\\xff.json"),
            "{r}"
        );
        // A writer's temporary is ignored, UTF-8 or not.
        let tmp = inn.join(std::ffi::OsStr::from_bytes(b".bad\xff"));
        fs::write(&tmp, "{").unwrap();
        assert!(matches!(examine(&root, &tmp, 100), Intake::Ignore));
        // Inside a directory whose name is not UTF-8: that directory is
        // rejected as a whole, not the entry.
        let dir = inn.join(std::ffi::OsStr::from_bytes(b"d\xfe"));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("x.json"), "{}").unwrap();
        assert!(reason(examine(&root, &dir, 100)).contains("d\\xfe"));
        assert!(matches!(
            examine(&root, &dir.join("x.json"), 100),
            Intake::Ignore
        ));
    }

    #[test]
    fn a_file_cut_short_is_told_apart() {
        let (_t, root) = root();
        let p = root.spool_in().join("half.json");
        fs::write(&p, r#"{"domain":"org","#).unwrap();
        assert!(matches!(examine(&root, &p, 100), Intake::Incomplete { .. }));
        fs::write(&p, r#"{"domain":"org",}"#).unwrap();
        assert!(reason(examine(&root, &p, 100)).starts_with("invalid JSON"));
    }

    #[test]
    fn a_generated_id_is_the_same_for_the_same_file() {
        let (_t, root) = root();
        let dir = root.spool_in().join("org.x");
        fs::create_dir(&dir).unwrap();
        let p = dir.join("not an id.json");
        fs::write(&p, "{}").unwrap();
        let id = |i: Intake| match i {
            Intake::Task { task, .. } => task.id,
            other => panic!("{other:?}"),
        };
        let first = id(examine(&root, &p, 100));
        assert_eq!(first, id(examine(&root, &p, 100)));
        let q = dir.join("also not.json");
        fs::write(&q, "{}").unwrap();
        assert_ne!(first, id(examine(&root, &q, 100)));
    }

    #[test]
    fn domain_directories_imply_and_bound_the_domain() {
        let (_t, root) = root();
        let dir = root.spool_in().join("org.example");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("a.json"), r#"{"tasker":"x"}"#).unwrap();
        match examine(&root, &dir.join("a.json"), 1000) {
            Intake::Task {
                task,
                self_contained,
                ..
            } => {
                assert_eq!(task.domain.as_str(), "org.example");
                assert_eq!(task.id.as_str(), "a");
                assert!(!self_contained);
            }
            other => panic!("{other:?}"),
        }
        fs::write(dir.join("b.json"), r#"{"domain":"org.example.sales"}"#).unwrap();
        assert!(matches!(
            examine(&root, &dir.join("b.json"), 1000),
            Intake::Task {
                self_contained: true,
                ..
            }
        ));
        fs::write(dir.join("c.json"), r#"{"domain":"org.other"}"#).unwrap();
        assert_eq!(
            reason(examine(&root, &dir.join("c.json"), 1000)),
            "domain org.other is outside in/org.example"
        );
    }
}
