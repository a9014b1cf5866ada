//! Containment: no tasker process outlives its task (issue 10, item 5).
//! A process group does not hold a tasker's descendants that leave it
//! (`setsid`, a double fork into a new session); two mechanisms do:
//!
//! - **cgroup v2**, where the engine can create cgroups below its own (a
//!   delegated subtree: `Delegate=yes` under systemd, or root): a parent
//!   `spoolflow-<pid>-<n>` below the engine's cgroup, and one child per
//!   worker slot. A tasker enters its slot's cgroup before it execs (the
//!   child writes `0` to the slot's `cgroup.procs`, see `vfork`), so that all
//!   it ever starts is in it; when its task ends the cgroup is killed
//!   (`cgroup.kill`, or SIGKILL to every pid of `cgroup.procs` until it is
//!   empty on kernels before 5.14). The parent's path is kept in
//!   `var/run/cgroup`, so that the next start after a `kill -9` kills what
//!   is left in it.
//! - otherwise the engine is a **child subreaper** (`PR_SET_CHILD_SUBREAPER`):
//!   a descendant whose parent dies is re-parented to the engine, not to
//!   init. When a task ends, the engine's children that carry the task's
//!   `SPOOLFLOW_ROOT`, `SPOOLFLOW_EXID` and `SPOOLFLOW_NID` are killed and
//!   reaped (only those: the taskers tokio waits for are never reaped
//!   here), round after round, as their own children are re-parented in
//!   turn (`sweep`). The next start after a `kill -9` finds them by their
//!   environment (`recovery::scan_for_orphans`).
//!
//! `SPOOLFLOW_CONTAIN=subreaper` (in the engine's environment) skips the
//! cgroups; `auto` (or unset) tries them first.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::sweep::{children, is_ours, sweep, Leaders};
use crate::layout::Root;

/// The variable that chooses the mechanism (`auto`, `cgroup`, `subreaper`).
pub const CONTAIN_VAR: &str = "SPOOLFLOW_CONTAIN";

/// How the engine keeps track of its taskers' descendants.
#[derive(Debug, Clone, Default)]
pub enum Contain {
    /// A cgroup v2 per worker slot, below this parent.
    Cgroup(Arc<Cgroups>),
    /// The engine is a child subreaper; `SPOOLFLOW_ROOT=<root>` is what
    /// marks its taskers' environment.
    Subreaper {
        root: Arc<Vec<u8>>,
        leaders: Leaders,
    },
    /// Neither is available: process groups only.
    #[default]
    Groups,
}

/// The engine's cgroup parent for its taskers.
#[derive(Debug)]
pub struct Cgroups {
    /// `<the engine's cgroup>/spoolflow-<pid>-<n>`.
    dir: PathBuf,
    /// Whether the kernel has `cgroup.kill` (5.14).
    kill_file: bool,
}

/// Why the cgroups cannot be used (said at start-up).
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 line in /proc/self/cgroup")]
    NoV2,
    #[error("no cgroup2 file system mounted")]
    NoMount,
    #[error("the engine's cgroup {0} is outside the cgroup2 mount")]
    Outside(String),
    #[error("{path} is not writable: {source}")]
    NotWritable { path: PathBuf, source: nix::Error },
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// Numbers the cgroup parents of the engines of one process (tests run
/// several engines in one process).
static SEQ: AtomicU32 = AtomicU32::new(0);

impl Contain {
    /// Chooses the mechanism at start-up, and says which.
    pub fn detect(root: &Root) -> Contain {
        // Cgroups cost the kernel's migration of each tasker (and, until
        // spawns became our own, a full fork per spawn): twice the
        // engine's CPU per task in the benchmark. They are asked for, not
        // the default.
        let wanted = std::env::var(CONTAIN_VAR).unwrap_or_default();
        let cgroup_error = if wanted != "cgroup" {
            format!("not asked for ({CONTAIN_VAR}=cgroup asks)")
        } else {
            match Cgroups::create(root) {
                Ok(c) => {
                    tracing::info!(
                        "taskers are contained in cgroups below {}{}",
                        c.dir.display(),
                        if c.kill_file {
                            ""
                        } else {
                            " (no cgroup.kill: killed pid by pid)"
                        }
                    );
                    return Contain::Cgroup(Arc::new(c));
                }
                Err(e) => e.to_string(),
            }
        };
        match nix::sys::prctl::set_child_subreaper(true) {
            Ok(()) => {
                tracing::info!(
                    "taskers are contained by the engine as child subreaper (no cgroup: {cgroup_error})"
                );
                Contain::Subreaper {
                    root: Arc::new(root_var(root.dir())),
                    leaders: Leaders::default(),
                }
            }
            Err(e) => {
                tracing::warn!(
                    "taskers are contained by process groups only: a process that leaves its group may outlive its task (no cgroup: {cgroup_error}; no subreaper: {e})"
                );
                Contain::Groups
            }
        }
    }

    /// What one tasker is tracked by: its slot's cgroup, or its task's
    /// variables.
    pub fn track(&self, slot: usize, exid: &str, nid: &str) -> Tracked {
        match self {
            Contain::Cgroup(c) => Tracked::Cgroup {
                dir: c.dir.join(slot.to_string()),
                kill_file: c.kill_file,
            },
            Contain::Subreaper { root, leaders } => Tracked::Subreaper(Marks {
                root: root.clone(),
                leaders: leaders.clone(),
                exid: format!("SPOOLFLOW_EXID={exid}").into_bytes(),
                nid: format!("SPOOLFLOW_NID={nid}").into_bytes(),
            }),
            Contain::Groups => Tracked::Groups,
        }
    }

    /// At the engine's end: the cgroups go (every tasker has ended).
    pub fn finish(&self, root: &Root) {
        if let Contain::Cgroup(c) = self {
            remove_tree(&c.dir, c.kill_file);
            let _ = std::fs::remove_file(root.taskers_cgroup());
        }
    }
}

impl Cgroups {
    fn create(root: &Root) -> Result<Cgroups, CgroupError> {
        let own = own_cgroup()?;
        let procs = own.join("cgroup.procs");
        nix::unistd::access(&procs, nix::unistd::AccessFlags::W_OK).map_err(|source| {
            CgroupError::NotWritable {
                path: procs.clone(),
                source,
            }
        })?;
        remove_stale(&own);
        let name = format!(
            "spoolflow-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = own.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Create { path: dir, source }),
        }
        let record = root.taskers_cgroup();
        if let Err(source) = std::fs::write(&record, dir.as_os_str().as_encoded_bytes()) {
            let _ = std::fs::remove_dir(&dir);
            return Err(CgroupError::Create {
                path: record,
                source,
            });
        }
        Ok(Cgroups {
            kill_file: dir.join("cgroup.kill").exists(),
            dir,
        })
    }
}

/// Removes the empty cgroup parents of engines that are gone (killed
/// with their root, say); one that still holds processes is left to its
/// root's next start.
fn remove_stale(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("spoolflow-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = kill(Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH);
        let dir = e.path();
        if gone && !populated(&dir) {
            if let Ok(children) = std::fs::read_dir(&dir) {
                for c in children.flatten() {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// The engine's own cgroup v2 directory: its `0::` line of
/// `/proc/self/cgroup` below the cgroup2 mount.
fn own_cgroup() -> Result<PathBuf, CgroupError> {
    let read = |p: &str| {
        std::fs::read_to_string(p).map_err(|source| CgroupError::Read {
            path: p.into(),
            source,
        })
    };
    let cgroup = read("/proc/self/cgroup")?;
    let rel = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or(CgroupError::NoV2)?
        .to_string();
    let mountinfo = read("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        // `id parent maj:min root mountpoint options... - fstype source ...`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        let (Some(mroot), Some(point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let Some(below) = rel.strip_prefix(mroot.trim_end_matches('/')) else {
            return Err(CgroupError::Outside(rel));
        };
        return Ok(Path::new(&unescape(point)).join(below.trim_start_matches('/')));
    }
    Err(CgroupError::NoMount)
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let b = field.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let code = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What one tasker is tracked by.
#[derive(Debug, Clone)]
pub enum Tracked {
    /// Its slot's cgroup.
    Cgroup { dir: PathBuf, kill_file: bool },
    /// Its task's variables, as its descendants inherit them.
    Subreaper(Marks),
    /// Its process group only.
    Groups,
}

/// What marks a task's processes for the subreaper: its variables
/// (`NAME=value`), and the leaders of the taskers running beside it.
#[derive(Debug, Clone)]
pub struct Marks {
    root: Arc<Vec<u8>>,
    exid: Vec<u8>,
    nid: Vec<u8>,
    leaders: Leaders,
}

impl Marks {
    fn vars(&self) -> [&[u8]; 3] {
        [&self.root, &self.exid, &self.nid]
    }
}

impl Tracked {
    /// Before the spawn: the slot's cgroup (created if need be) and its
    /// `cgroup.procs`, opened for the child to write itself into.
    pub fn cgroup_procs(&self) -> io::Result<Option<File>> {
        let Tracked::Cgroup { dir, .. } = self else {
            return Ok(None);
        };
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map(Some)
    }

    /// Kills everything in the tasker's cgroup now (nothing for the other
    /// mechanisms, which act once the tasker has exited).
    pub fn kill(&self) {
        if let Tracked::Cgroup { dir, kill_file } = self {
            kill_cgroup(dir, *kill_file);
        }
    }

    /// The task ended (its tasker exited and was reaped, its group got
    /// SIGKILL): nothing it started may go on. Blocking (the subreaper
    /// waits for the processes it kills): call it off the event loop.
    pub fn end(&self, pgid: i32) {
        match self {
            Tracked::Cgroup { dir, kill_file } => kill_cgroup(dir, *kill_file),
            Tracked::Subreaper(marks) => {
                let killed = sweep(&marks.vars(), pgid, &marks.leaders);
                let exid = &marks.exid;
                if killed > 0 {
                    tracing::info!(
                        "killed {} left by the tasker of {}",
                        crate::text::count(killed, "process"),
                        String::from_utf8_lossy(
                            exid.strip_prefix(b"SPOOLFLOW_EXID=").unwrap_or(exid)
                        )
                    );
                }
            }
            Tracked::Groups => {}
        }
    }

    /// The tasker's leader `pid` was spawned: until it is reaped it is a
    /// child of the engine that no task's sweep needs to look at.
    pub fn spawned(&self, pid: i32) {
        if let Tracked::Subreaper(marks) = self {
            marks.leaders.insert(pid);
        }
    }

    /// The leader `pid` was reaped (its number may be used again).
    pub fn reaped(&self, pid: i32) {
        if let Tracked::Subreaper(marks) = self {
            marks.leaders.remove(pid);
        }
    }

    /// Whether [`Tracked::end`] blocks (and so belongs on a blocking thread).
    pub fn end_blocks(&self) -> bool {
        matches!(self, Tracked::Subreaper(_))
    }

    /// Whether the subreaper's [`Tracked::end`] has nothing to do: none of
    /// the engine's children belongs to the task. A look without blocking
    /// (it reads `/proc`, kills and waits for nothing), so that the usual
    /// end, a tasker that left nothing behind, needs no blocking thread.
    pub fn nothing_left(&self, pgid: i32) -> bool {
        match self {
            Tracked::Subreaper(marks) => {
                let me = super::sweep::engine_pid();
                !children(me, pgid, &marks.leaders)
                    .iter()
                    .any(|child| is_ours(child, &marks.vars(), pgid, &marks.leaders))
            }
            // A cgroup is killed whole, without a look.
            Tracked::Cgroup { .. } => false,
            Tracked::Groups => true,
        }
    }
}

/// Kills every process of a cgroup.
fn kill_cgroup(dir: &Path, kill_file: bool) {
    if kill_file {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.kill"))
        {
            if f.write_all(b"1").is_ok() {
                return;
            }
        }
    }
    // Before 5.14: pid by pid, until none is left (a process forking
    // meanwhile is caught by the next round).
    for _ in 0..100 {
        let pids = cgroup_pids(dir);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The live processes of a cgroup.
fn cgroup_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether a cgroup (and its descendants) holds no process.
fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|e| e.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Kills and removes a cgroup parent and its children (at the engine's
/// end, and for a dead engine's at the next start). Returns how many
/// processes were still in it.
fn remove_tree(dir: &Path, kill_file: bool) -> usize {
    let mut found = 0;
    let children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    for child in children.iter().map(PathBuf::as_path).chain([dir]) {
        found += cgroup_pids(child).len();
        kill_cgroup(child, kill_file);
    }
    // The killed processes leave the cgroup as they exit: a moment.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while populated(dir) && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for child in children.iter().map(PathBuf::as_path).chain([dir]) {
        let _ = std::fs::remove_dir(child);
    }
    found
}

/// At start-up: the cgroups an engine of this root that died left behind
/// are killed and removed. `None` when that engine used none; else how
/// many processes were killed.
pub fn kill_dead_cgroups(root: &Root) -> Option<usize> {
    let record = root.taskers_cgroup();
    let text = std::fs::read_to_string(&record).ok()?;
    let _ = std::fs::remove_file(&record);
    let dir = PathBuf::from(text.trim());
    // Only a spoolflow cgroup parent on a cgroup2 file system is touched,
    // whatever the file says.
    let ours = dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("spoolflow-"));
    let is_cgroup = nix::sys::statfs::statfs(&dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if !(ours && is_cgroup) {
        return Some(0);
    }
    let kill_file = dir.join("cgroup.kill").exists();
    let killed = remove_tree(&dir, kill_file);
    if killed > 0 {
        tracing::warn!(
            "killed {} left in {} by an engine that died",
            crate::text::count(killed, "tasker process"),
            dir.display()
        );
    }
    Some(killed)
}

/// `SPOOLFLOW_ROOT=<root>`, as it appears in a tasker's environment.
pub fn root_var(root: &Path) -> Vec<u8> {
    let mut want = b"SPOOLFLOW_ROOT=".to_vec();
    want.extend_from_slice(root.as_os_str().as_encoded_bytes());
    want
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_cgroup_that_is_not_spoolflows_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        assert_eq!(kill_dead_cgroups(&root), None);
        let victim = tmp.path().join("spoolflow-1-0");
        std::fs::create_dir(&victim).unwrap();
        for named in [victim.clone(), tmp.path().join("var")] {
            std::fs::write(root.taskers_cgroup(), named.as_os_str().as_encoded_bytes()).unwrap();
            // Not on a cgroup2 file system: nothing is killed or removed.
            assert_eq!(kill_dead_cgroups(&root), Some(0));
            assert!(named.is_dir());
            assert!(!root.taskers_cgroup().exists());
        }
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/a\"), r"/a\");
    }
}
