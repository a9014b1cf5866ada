//! [`Root`]: the directory that holds everything (SPEC section 1). Every path
//! of the layout is built here and nowhere else.

use std::io;
use std::path::{Path, PathBuf};

use crate::model::names::{Exid, Nid, TaskId};

/// Errors finding or creating a root.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("failed to create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("{0} is not a spoolflow root (no var/spool/in); run `spoolflow init` there first")]
    NotARoot(PathBuf),
    #[error("{dir} is a spoolflow root but {missing} is missing: recreate it (mkdir -p {dir}/{missing})")]
    Incomplete { dir: PathBuf, missing: &'static str },
    #[error("{dir} is not a spoolflow root but lies inside the root {root}: give --root {root} (or none, from inside it)")]
    Inside { dir: PathBuf, root: PathBuf },
    #[error("no spoolflow root in {0} or any directory above it (a root holds tsk/ and var/spool/): name one with --root or $SPOOLFLOW_ROOT, or create one with `spoolflow init`")]
    NotFound(PathBuf),
    #[error("cannot resolve root {path}: {source}")]
    Resolve { path: PathBuf, source: io::Error },
}

/// A spoolflow root directory and the paths of its layout.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

/// The directories `init` creates, relative to the root.
const LAYOUT: &[&str] = &[
    "tsk/any",
    "var/spool/in",
    "var/spool/cancel",
    "var/spool/priority",
    "var/spool/run",
    "var/spool/done",
    "var/spool/failed",
    "var/spool/rejected",
    "var/spool/history",
    "var/log/tsk",
    "var/run",
];

impl Root {
    /// The root at `dir`, made absolute (taskers run in other directories and
    /// get `SPOOLFLOW_ROOT`, so it must not be relative).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Root, RootError> {
        let dir = dir.into();
        let abs = std::path::absolute(&dir).map_err(|source| RootError::Resolve {
            path: dir.clone(),
            source,
        })?;
        // One spelling of the root for every engine and tasker (symlinks,
        // `..`, trailing slashes resolved), so that start-up recognises the
        // taskers of a dead engine by their SPOOLFLOW_ROOT.
        let canonical = abs.canonicalize().unwrap_or(abs);
        Ok(Root { dir: canonical })
    }

    /// The root named by `--root`, else `$SPOOLFLOW_ROOT`, else the nearest
    /// root at or above the current directory ([`search_up`], as git finds
    /// its repository). (`clap` folds the first two together; see `cli`.)
    pub fn find(flag: Option<&Path>) -> Result<Root, RootError> {
        match flag {
            Some(p) => Root::new(p),
            None => match std::env::var_os("SPOOLFLOW_ROOT") {
                Some(p) if !p.is_empty() => Root::new(PathBuf::from(p)),
                _ => {
                    let cwd = std::env::current_dir().map_err(|source| RootError::Resolve {
                        path: ".".into(),
                        source,
                    })?;
                    match search_up(&cwd) {
                        Some(dir) => Root::new(dir),
                        None => Err(RootError::NotFound(cwd)),
                    }
                }
            },
        }
    }

    /// Creates the layout (idempotent: existing directories and files are
    /// left as they are).
    pub fn init(&self) -> Result<(), RootError> {
        for rel in LAYOUT {
            let path = self.dir.join(rel);
            std::fs::create_dir_all(&path).map_err(|source| RootError::Create { path, source })?;
        }
        Ok(())
    }

    /// Makes the engine's directories of the layout (`var/…`) that are
    /// missing: an operator may have removed `var/run/` or another of them.
    /// `tsk/` is the operator's and left alone.
    pub fn make_var(&self) -> Result<(), RootError> {
        for rel in LAYOUT.iter().filter(|rel| rel.starts_with("var/")) {
            let path = self.dir.join(rel);
            std::fs::create_dir_all(&path).map_err(|source| RootError::Create { path, source })?;
        }
        Ok(())
    }

    /// Fails unless the layout is there. Inside a root (see [`is_root`])
    /// the message names the missing directory instead of advising `init`.
    pub fn ensure_exists(&self) -> Result<(), RootError> {
        if self.spool_in().is_dir() {
            Ok(())
        } else if is_root(&self.dir) {
            Err(RootError::Incomplete {
                dir: self.dir.clone(),
                missing: "var/spool/in",
            })
        } else if let Some(root) = self.dir.parent().and_then(search_up) {
            Err(RootError::Inside {
                dir: self.dir.clone(),
                root,
            })
        } else {
            Err(RootError::NotARoot(self.dir.clone()))
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `path` relative to the root when it lies inside it (for messages and
    /// records: `tsk/org.example/stamp`), else as it is.
    pub fn relative<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.dir).unwrap_or(path)
    }

    pub fn tsk(&self) -> PathBuf {
        self.dir.join("tsk")
    }
    pub fn spool(&self) -> PathBuf {
        self.dir.join("var/spool")
    }
    pub fn spool_in(&self) -> PathBuf {
        self.dir.join("var/spool/in")
    }
    /// The prefix of the directories `submit --batch` stages a batch's
    /// files in, inside `in/` (a dot name: the engine ignores it). One
    /// left behind by a crash holds only files that were never submitted;
    /// `gc` removes it.
    pub const BATCH_STAGING_PREFIX: &'static str = ".spoolflow-batch-";
    pub fn cancel(&self) -> PathBuf {
        self.dir.join("var/spool/cancel")
    }
    /// `var/spool/priority/`: requests to change a queued task's priority
    /// (`spoolflow priority`), one file per task id.
    pub fn priority_requests(&self) -> PathBuf {
        self.dir.join("var/spool/priority")
    }
    pub fn run(&self) -> PathBuf {
        self.dir.join("var/spool/run")
    }
    pub fn done(&self) -> PathBuf {
        self.dir.join("var/spool/done")
    }
    pub fn failed(&self) -> PathBuf {
        self.dir.join("var/spool/failed")
    }
    pub fn rejected(&self) -> PathBuf {
        self.dir.join("var/spool/rejected")
    }
    pub fn history(&self) -> PathBuf {
        self.dir.join("var/spool/history")
    }
    pub fn log_tsk(&self) -> PathBuf {
        self.dir.join("var/log/tsk")
    }
    pub fn engine_log(&self) -> PathBuf {
        self.dir.join("var/log/engine.log")
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("var/run/engine.lock")
    }
    /// `var/run/replies.log`: completing replies not yet in a durable
    /// record (the engine's `replies` module).
    pub fn replies_journal(&self) -> PathBuf {
        self.dir.join("var/run/replies.log")
    }

    /// `var/run/replies.old.log`: the replies journal's previous file,
    /// kept while a reply it holds is not yet in a durable home.
    pub fn replies_journal_old(&self) -> PathBuf {
        self.dir.join("var/run/replies.old.log")
    }

    /// `var/slurm/`: the files of the taskers run as Slurm jobs.
    pub fn slurm_dir(&self) -> PathBuf {
        self.dir.join("var/slurm")
    }
    /// `var/slurm/<exid>.<nid>.<attempt>.<offer>/`: one Slurm run's
    /// script, stdin, stdout, stderr, points, exit status and job id (a
    /// run is named after its attempt and the offer that led to it: each
    /// run has its own, a run after `retry` too, whose offers count from 1
    /// again).
    pub fn slurm_job_dir(&self, exid: &Exid, nid: &Nid, attempt: u32, offer: u32) -> PathBuf {
        self.slurm_dir()
            .join(format!("{exid}.{nid}.{attempt}.{offer}"))
    }

    /// `var/run/points/`: where taskers append informative points
    /// (`$SPOOLFLOW_POINTS`); engine-owned and emptied at start-up.
    pub fn points_dir(&self) -> PathBuf {
        self.dir.join("var/run/points")
    }
    /// `var/run/points/<exid>.<nid>.jsonl`: one node's `$SPOOLFLOW_POINTS`.
    pub fn node_points_file(&self, exid: &Exid, nid: &Nid) -> PathBuf {
        self.points_dir().join(format!("{exid}.{nid}.jsonl"))
    }
    /// `var/run/taskers`: the process groups of running taskers, one
    /// fixed-size slot per worker, so that the next start finds the
    /// orphans of an engine that died.
    pub fn taskers_registry(&self) -> PathBuf {
        self.dir.join("var/run/taskers")
    }
    /// `var/run/cgroup`: the cgroup v2 parent of the running engine's
    /// taskers, so that the next start kills what a dead engine left in it.
    pub fn taskers_cgroup(&self) -> PathBuf {
        self.dir.join("var/run/cgroup")
    }
    /// `var/spool/.spare/`: recycled files for the next records.
    pub fn spares(&self) -> PathBuf {
        self.dir.join("var/spool/.spare")
    }
    /// `var/spool/history/<id>/`: earlier final records of a task run again.
    pub fn history_dir(&self, id: &TaskId) -> PathBuf {
        self.history().join(id.as_str())
    }

    /// `var/spool/run/<id>.json`: the accepted task while queued or running.
    pub fn run_file(&self, id: &TaskId) -> PathBuf {
        self.run().join(format!("{id}.json"))
    }
    /// `var/spool/run/<id>.journal`: what a flow did since the progress
    /// in its `run/` file was written (one JSON delta per line).
    pub fn journal_file(&self, id: &TaskId) -> PathBuf {
        self.run().join(format!("{id}.journal"))
    }
    pub fn done_file(&self, id: &TaskId) -> PathBuf {
        self.done().join(format!("{id}.json"))
    }
    pub fn failed_file(&self, id: &TaskId) -> PathBuf {
        self.failed().join(format!("{id}.json"))
    }
    /// `var/cache/`: what the reading commands derive from the spool to
    /// answer fast (rebuildable, never the truth).
    pub fn cache(&self) -> PathBuf {
        self.dir.join("var/cache")
    }
    /// `var/cache/records.idx`: the records index (`crate::read::index`).
    pub fn records_index(&self) -> PathBuf {
        self.cache().join("records.idx")
    }
    /// `var/log/tsk/<exid>.log`: the points log of an execution.
    pub fn points_log(&self, exid: &Exid) -> PathBuf {
        self.log_tsk().join(format!("{exid}.log"))
    }
    /// `var/log/tsk/<exid>.err`: what the execution's taskers wrote on stderr.
    pub fn stderr_log(&self, exid: &Exid) -> PathBuf {
        self.log_tsk().join(format!("{exid}.err"))
    }
}

/// Whether `dir` is a spoolflow root: it holds both a `tsk/` and a
/// `var/spool/` directory (what `init` creates; the source repository's
/// `tsk/` alone, before `init`, is not one).
pub fn is_root(dir: &Path) -> bool {
    dir.join("tsk").is_dir() && dir.join("var/spool").is_dir()
}

/// The nearest of `start` and its ancestors that [`is_root`], searching
/// upward to `/` as git does for its repository.
pub fn search_up(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| is_root(d))
        .map(Path::to_path_buf)
}

/// A fresh root with its layout in a temporary directory, for unit tests
/// (the directory goes when the first value drops).
#[cfg(test)]
pub(crate) fn temp_root() -> (tempfile::TempDir, Root) {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::new(tmp.path()).unwrap();
    root.init().unwrap();
    (tmp, root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_keeps_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        assert!(root.ensure_exists().is_err());
        root.init().unwrap();
        std::fs::write(root.tsk().join("any/keep"), "x").unwrap();
        root.init().unwrap();
        assert_eq!(
            std::fs::read_to_string(root.tsk().join("any/keep")).unwrap(),
            "x"
        );
        for rel in LAYOUT {
            assert!(tmp.path().join(rel).is_dir(), "{rel}");
        }
        root.ensure_exists().unwrap();
        std::fs::remove_dir_all(tmp.path().join("var/run")).unwrap();
        std::fs::remove_dir_all(tmp.path().join("tsk/any")).unwrap();
        root.make_var().unwrap();
        assert!(tmp.path().join("var/run").is_dir());
        assert!(
            !tmp.path().join("tsk/any").exists(),
            "tsk/ is the operator's"
        );
    }

    #[test]
    fn every_spelling_of_a_root_is_the_same_root() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("r");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let a = Root::new(&real).unwrap();
        for other in [link.clone(), real.join("."), tmp.path().join("r/../r/")] {
            assert_eq!(Root::new(other).unwrap().dir(), a.dir());
        }
    }

    #[test]
    fn the_nearest_root_above_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let outer = tmp.path().join("outer");
        let inner = outer.join("a/inner");
        Root::new(&outer).unwrap().init().unwrap();
        Root::new(&inner).unwrap().init().unwrap();
        let deep = inner.join("tsk/any/x/y");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(search_up(&deep), Some(inner.clone()));
        assert_eq!(search_up(&outer.join("a")), Some(outer.clone()));
        // tsk/ alone does not make a root.
        let bare = tmp.path().join("bare");
        std::fs::create_dir_all(bare.join("tsk")).unwrap();
        assert!(!is_root(&bare));
        assert_eq!(search_up(&bare.join("tsk")), None);
    }

    #[test]
    fn relative_paths() {
        let root = Root { dir: "/r".into() };
        assert_eq!(root.relative(Path::new("/r/tsk/a/b")), Path::new("tsk/a/b"));
        assert_eq!(root.relative(Path::new("/x")), Path::new("/x"));
    }
}
