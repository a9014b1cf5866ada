//! The watcher: `notify` events on `var/spool/in/` (recursive),
//! `var/spool/cancel/`, `var/spool/priority/` and the taskers' points directory, filtered into the
//! few [`WatchEvent`]s the engine acts on.
//!
//! `tsk/` is watched apart ([`TskWatch`]), with raw inotify and a mask of
//! changes only, so that the engine may cache what taskees and taskmasters
//! resolve to and forget it when something there changes. (`notify` also
//! reports every open, and every task execs a file under `tsk/`: watching
//! `tsk/` through it cost more than the lookups it saves.)
//!
//! A file written in place is reported once its writer closed it
//! (`IN_CLOSE_WRITE`); a renamed-in file when the rename lands; a symlink,
//! FIFO or directory as soon as it is created (they have no close). An
//! overflow becomes [`WatchEvent::Rescan`].

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use crate::layout::Root;

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
    /// Events were lost: rescan the spool.
    Rescan,
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
        source: notify::Error,
        hint: &'static str,
    },
}

/// Starts watching; events go to `tx` until the returned watcher drops.
pub fn start(
    root: &Root,
    points_dir: &Path,
    tx: UnboundedSender<WatchEvent>,
) -> Result<RecommendedWatcher, WatchError> {
    let spool_in = root.spool_in();
    let cancel = root.cancel();
    let points = points_dir.to_path_buf();
    let priority = root.priority_requests();
    let (in2, cancel2, points2) = (spool_in.clone(), cancel.clone(), points.clone());
    let priority2 = priority.clone();
    let handler = move |res: notify::Result<Event>| {
        let ev = match res {
            Ok(ev) => ev,
            Err(e) => {
                let _ = tx.send(WatchEvent::Error(e.to_string()));
                return;
            }
        };
        if ev.need_rescan() {
            let _ = tx.send(WatchEvent::Rescan);
            return;
        }
        let Some((path, data_only)) = interesting_path(&ev) else {
            return;
        };
        let event = if data_only {
            // Only points files are read while their writer goes on.
            if !path.starts_with(&points2) {
                return;
            }
            WatchEvent::Points(path)
        } else if path.starts_with(&in2) {
            WatchEvent::Input(path)
        } else if path.starts_with(&cancel2) {
            WatchEvent::Cancel(path)
        } else if path.starts_with(&priority2) {
            WatchEvent::Priority(path)
        } else if path.starts_with(&points2) {
            WatchEvent::Points(path)
        } else {
            return;
        };
        let _ = tx.send(event);
    };
    // Symlinks are never followed: one under tsk/ pointing at / must not
    // make the watcher walk the whole filesystem.
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher =
        RecommendedWatcher::new(handler, config).map_err(|source| WatchError::Watch {
            path: spool_in.clone(),
            hint: hint_for(&source),
            source,
        })?;
    for (path, mode) in [
        (&spool_in, RecursiveMode::Recursive),
        (&cancel, RecursiveMode::NonRecursive),
        (&priority, RecursiveMode::NonRecursive),
        (&points, RecursiveMode::NonRecursive),
    ] {
        watcher
            .watch(path, mode)
            .map_err(|source| WatchError::Watch {
                path: path.clone(),
                hint: hint_for(&source),
                source,
            })?;
    }
    Ok(watcher)
}

fn hint_for(e: &notify::Error) -> &'static str {
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => {
            " (raise the inotify limits: sysctl fs.inotify.max_user_watches and fs.inotify.max_user_instances)"
        }
        _ => "",
    }
}

/// The path an event makes worth a look, if any, and whether the event is
/// only a write of data (the writer may still be writing).
fn interesting_path(ev: &Event) -> Option<(PathBuf, bool)> {
    let path = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => ev.paths.first().cloned(),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => ev.paths.first().cloned(),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => ev.paths.get(1).cloned(),
        // Data appended to a points file (taskers may keep it open).
        EventKind::Modify(ModifyKind::Data(_)) | EventKind::Modify(ModifyKind::Any) => {
            return ev.paths.first().cloned().map(|p| (p, true));
        }
        // A created directory, symlink or special file never sees a close;
        // a created regular file waits for its writer's close.
        EventKind::Create(CreateKind::Folder) => ev.paths.first().cloned(),
        EventKind::Create(_) => {
            let p = ev.paths.first()?;
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_file() => None,
                Ok(_) => Some(p.clone()),
                Err(_) => None,
            }
        }
        _ => None,
    };
    path.map(|p| (p, false))
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
