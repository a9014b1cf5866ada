//! The watchers: [`SpoolWatcher`] on `var/spool/` (`in/` recursively,
//! `cancel/`, `priority/`, and `var/spool/` itself) and the taskers' points
//! directory, turning inotify events into the few [`WatchEvent`]s the
//! engine acts on ([`translate`]); and [`TskWatch`] on `tsk/`.
//!
//! Both use raw inotify with masks of what the engine acts on: `notify`
//! watches for every open and close too, and the engine opens files of
//! the watched directories for every task (reading a task file, fsyncing
//! `done/`), each of which then woke a thread for nothing.
//!
//! A file written in place is reported once its writer closed it
//! (`IN_CLOSE_WRITE`); a renamed-in file when the rename lands; a symlink,
//! FIFO or directory as soon as it is created (they have no close). A
//! regular file's creation is told too ([`WatchEvent::Made`]): a file
//! published whole by a hard link has no other event, and the engine
//! takes it only once nobody has it open for writing. An overflow becomes
//! [`WatchEvent::Rescan`].
//!
//! `var/spool/` itself is watched too (its own entries only), so that a
//! watched directory deleted or moved away ([`WatchEvent::DirGone`]) and
//! made again ([`WatchEvent::DirBack`]) is watched again at once, not at
//! the next safety rescan.
//!
//! `tsk/` is watched apart ([`TskWatch`]), for changes only, so that the
//! engine may cache what taskees and taskmasters resolve to and forget it
//! when something there changes.

mod spool;
pub mod translate;

use std::path::{Path, PathBuf};

use tokio::sync::mpsc::UnboundedSender;

pub use spool::SpoolWatcher;
pub use translate::Role;

/// What the engine is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Something under `in/` may be ready to take.
    Input(PathBuf),
    /// A cancel request may be ready.
    Cancel(PathBuf),
    /// A priority request may be ready.
    Priority(PathBuf),
    /// A tasker appended to its points file.
    Points(PathBuf),
    /// A regular file was made in `in/` (or below), `cancel/` or
    /// `priority/` (the role): the start of a write in place, whose close
    /// is told later, or a file published whole by a hard link (`link(2)`
    /// as maildir writers do, `linkat` of an `O_TMPFILE`), which no other
    /// event tells.
    Made(Role, PathBuf),
    /// Events were lost: rescan the spool.
    Rescan,
    /// A watched directory of the spool (`in/`, `cancel/`, `priority/`)
    /// was deleted or moved away.
    DirGone(PathBuf),
    /// A watched directory of the spool was made (again), or renamed into
    /// place: watch it again and look at what it holds.
    DirBack(PathBuf),
    /// The watcher failed.
    Error(String),
}

/// The watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {source} (if the limit is reached, raise fs.inotify.max_user_watches and fs.inotify.max_user_instances)")]
    Tsk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch {path}: {source}{hint}")]
    Watch {
        path: PathBuf,
        source: std::io::Error,
        hint: &'static str,
    },
}

impl WatchError {
    fn new(path: &Path, source: std::io::Error) -> WatchError {
        let hint = match source.raw_os_error() {
            // inotify_add_watch: too many watches; inotify_init1: too
            // many instances.
            Some(nix::libc::ENOSPC | nix::libc::EMFILE) => {
                " (raise the inotify limits: sysctl fs.inotify.max_user_watches and fs.inotify.max_user_instances)"
            }
            _ => "",
        };
        WatchError::Watch {
            path: path.to_path_buf(),
            source,
            hint,
        }
    }
}

/// The points files announced to the engine and not looked at yet: a
/// tasker that appends without end (a line per `write`, thousands a
/// second) then costs the engine one look per turn of its loop, however
/// many writes it makes, instead of one event per write queued ahead of
/// everything else. The watcher tells a path only when it enters the set;
/// the engine takes it out *before* it reads the file, so that a write
/// after that read is told again.
#[derive(Clone, Default)]
pub struct PointsPending {
    paths: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
}

impl PointsPending {
    fn set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<PathBuf>> {
        // A panic while holding the lock leaves a set still usable.
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The watcher saw a write to `path`: whether to tell the engine (it
    /// was not told already).
    fn announce(&self, path: &Path) -> bool {
        let mut set = self.set();
        !set.contains(path) && set.insert(path.to_path_buf())
    }

    /// The engine is about to read `path`: a later write is told again.
    pub fn taken(&self, path: &Path) {
        self.set().remove(path);
    }
}

/// A test seam on the watcher of the spool: it can lose the events of
/// `in/` (as the kernel does when its queue overflows) and tell the engine
/// what the kernel says on an overflow.
#[derive(Clone, Default)]
pub struct Seam {
    inner: std::sync::Arc<SeamInner>,
}

#[derive(Default)]
struct SeamInner {
    lose: std::sync::atomic::AtomicBool,
    tx: std::sync::Mutex<Option<UnboundedSender<WatchEvent>>>,
}

impl std::fmt::Debug for Seam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seam")
    }
}

impl Seam {
    /// While `on`, the events of `in/` are dropped before the engine sees
    /// them.
    pub fn lose_events(&self, on: bool) {
        self.inner
            .lose
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Tells the engine what the watcher tells it on `IN_Q_OVERFLOW`.
    pub fn overflow(&self) {
        let tx = self.inner.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(WatchEvent::Rescan);
        }
    }

    fn connect(&self, tx: UnboundedSender<WatchEvent>) {
        *self.inner.tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    fn losing(&self) -> bool {
        self.inner.lose.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// How deep below `tsk/` directories are watched: `tsk/<domain>/<taskee>/`
/// holds the deepest thing a lookup reads (`tasker.json`); what a tasker
/// keeps further down (a virtualenv, say) is none of the engine's business.
const TSK_DEPTH: usize = 2;

/// The watched directories: descriptor → (path, depth below `tsk/`).
type WatchedDirs = std::collections::HashMap<inotify::WatchDescriptor, (PathBuf, usize)>;

/// A watch on `tsk/` and the directories below it (symlinks not followed)
/// for changes — entries created, deleted, moved, written or `chmod`ed,
/// never opens or reads. The engine asks [`TskWatch::changed`] before each
/// lookup: one non-blocking `read`, and since the kernel queues an event
/// when the change happens, a lookup never misses a change made before it.
pub struct TskWatch {
    inotify: inotify::Inotify,
    dirs: WatchedDirs,
    buffer: Vec<u8>,
}

impl TskWatch {
    pub fn new(tsk: &Path) -> Result<TskWatch, WatchError> {
        let watch_err = |source: std::io::Error| WatchError::Tsk {
            path: tsk.to_path_buf(),
            source,
        };
        let inotify = inotify::Inotify::init().map_err(watch_err)?;
        let mut w = TskWatch {
            inotify,
            dirs: WatchedDirs::new(),
            buffer: vec![0u8; 16 * 1024],
        };
        w.add_tree(tsk, 0).map_err(watch_err)?;
        Ok(w)
    }

    /// Whether anything under `tsk/` changed since the last call (an
    /// overflow or a read error counts as a change).
    pub fn changed(&mut self) -> bool {
        use inotify::EventMask;
        let mut changed = false;
        loop {
            let mut new_dirs = Vec::new();
            match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => {
                    for ev in events {
                        changed = true;
                        if ev.mask.contains(EventMask::ISDIR)
                            && ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
                        {
                            if let (Some((parent, depth)), Some(name)) =
                                (self.dirs.get(&ev.wd), ev.name)
                            {
                                if *depth < TSK_DEPTH {
                                    new_dirs.push((parent.join(name), depth + 1));
                                }
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return changed,
                Err(_) => return true,
            }
            for (dir, depth) in new_dirs {
                let _ = self.add_tree(&dir, depth);
            }
        }
    }

    /// Adds a watch on `dir`, which lies `depth` levels below `tsk/`, and on
    /// the directories under it down to [`TSK_DEPTH`].
    fn add_tree(&mut self, dir: &Path, depth: usize) -> std::io::Result<()> {
        use inotify::WatchMask;
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE
            | WatchMask::MOVE_SELF
            | WatchMask::CLOSE_WRITE
            | WatchMask::MODIFY
            | WatchMask::ATTRIB
            | WatchMask::DONT_FOLLOW
            | WatchMask::ONLYDIR;
        let below = TSK_DEPTH.saturating_sub(depth);
        let mut watches = self.inotify.watches();
        for entry in walkdir::WalkDir::new(dir)
            .follow_links(false)
            .max_depth(below)
        {
            let Ok(entry) = entry else { continue };
            if entry.file_type().is_dir() {
                let wd = watches.add(entry.path(), mask)?;
                self.dirs
                    .insert(wd, (entry.path().to_path_buf(), depth + entry.depth()));
            }
        }
        Ok(())
    }
}
