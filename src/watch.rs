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
//!
//! `var/spool/` itself is watched too (its own entries only), so that a
//! watched directory deleted or moved away ([`WatchEvent::DirGone`]) and
//! made again ([`WatchEvent::DirBack`]) is watched again at once, not at
//! the next safety rescan.

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
        source: notify::Error,
        hint: &'static str,
    },
}

/// A test seam on the watcher of the spool: it can lose the events of
/// `in/` (as the kernel does when its queue overflows) and inject events
/// into the handler that `notify` calls, such as the overflow itself.
#[derive(Clone, Default)]
pub struct Seam {
    inner: std::sync::Arc<SeamInner>,
}

#[derive(Default)]
struct SeamInner {
    lose: std::sync::atomic::AtomicBool,
    handler: std::sync::Mutex<Option<Handler>>,
}

type Handler = Box<dyn Fn(notify::Result<Event>) + Send>;

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

    /// Passes `ev` to the watcher's handler, as `notify` would.
    pub fn inject(&self, ev: Event) {
        if let Some(h) = self.inner.handler.lock().unwrap().as_ref() {
            h(Ok(ev));
        }
    }

    /// Injects what `notify` reports on `IN_Q_OVERFLOW`.
    pub fn overflow(&self) {
        self.inject(Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan));
    }

    fn losing(&self) -> bool {
        self.inner.lose.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The directories watched, and where their events go.
#[derive(Clone)]
struct Dirs {
    /// `var/spool/`: only its entries that are watched directories count.
    spool: PathBuf,
    spool_in: PathBuf,
    cancel: PathBuf,
    priority: PathBuf,
    points: PathBuf,
}

/// What the engine is told of one `notify` event, if anything.
fn translate(dirs: &Dirs, res: notify::Result<Event>) -> Option<WatchEvent> {
    let ev = match res {
        Ok(ev) => ev,
        Err(e) => return Some(WatchEvent::Error(e.to_string())),
    };
    if ev.need_rescan() {
        return Some(WatchEvent::Rescan);
    }
    if let Some(change) = watched_dir_change(dirs, &ev) {
        return change;
    }
    let (path, data_only) = interesting_path(&ev)?;
    Some(if data_only {
        // Only points files are read while their writer goes on.
        if !path.starts_with(&dirs.points) {
            return None;
        }
        WatchEvent::Points(path)
    } else if path.starts_with(&dirs.spool_in) {
        WatchEvent::Input(path)
    } else if path.starts_with(&dirs.cancel) {
        WatchEvent::Cancel(path)
    } else if path.starts_with(&dirs.priority) {
        WatchEvent::Priority(path)
    } else if path.starts_with(&dirs.points) {
        WatchEvent::Points(path)
    } else {
        return None;
    })
}

/// What an event says of a watched directory itself (`Some`), if it is
/// about one: gone, back, or nothing worth telling (`Some(None)`: an open,
/// say). `None` when the event is about something else. Every other entry
/// of `var/spool/` (`run/`, `done/`, …) is nothing worth telling either.
fn watched_dir_change(dirs: &Dirs, ev: &Event) -> Option<Option<WatchEvent>> {
    let is_watched = |p: &Path| p == dirs.spool_in || p == dirs.cancel || p == dirs.priority;
    let first = ev.paths.first()?;
    let target = match ev.kind {
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => ev.paths.get(1)?,
        _ => first,
    };
    if !is_watched(first) && !is_watched(target) {
        return (first.parent() == Some(dirs.spool.as_path())).then_some(None);
    }
    Some(match ev.kind {
        EventKind::Create(_)
        | EventKind::Modify(ModifyKind::Name(RenameMode::To))
        | EventKind::Modify(ModifyKind::Name(RenameMode::Both))
            if is_watched(target) =>
        {
            Some(WatchEvent::DirBack(target.clone()))
        }
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
            if is_watched(first) =>
        {
            Some(WatchEvent::DirGone(first.clone()))
        }
        _ => None,
    })
}

/// Watches `dir` (a watched directory of the spool made again, or moved
/// back) afresh: its old watch, if `notify` still holds one (on the
/// directory moved away), is dropped first. Returns whether it is watched.
pub fn rewatch(watcher: &mut RecommendedWatcher, dir: &Path, recursive: bool) -> bool {
    let _ = watcher.unwatch(dir);
    let mode = if recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    match watcher.watch(dir, mode) {
        Ok(()) => true,
        Err(e) => {
            // Gone again: its next event says when it is back.
            tracing::debug!("cannot watch {}: {e}", dir.display());
            false
        }
    }
}

/// Starts watching; events go to `tx` until the returned watcher drops.
pub fn start(
    root: &Root,
    points_dir: &Path,
    tx: UnboundedSender<WatchEvent>,
    seam: Option<Seam>,
) -> Result<RecommendedWatcher, WatchError> {
    let dirs = Dirs {
        spool: root.spool(),
        spool_in: root.spool_in(),
        cancel: root.cancel(),
        priority: root.priority_requests(),
        points: points_dir.to_path_buf(),
    };
    let spool_in = dirs.spool_in.clone();
    let watched = [
        (dirs.spool.clone(), RecursiveMode::NonRecursive),
        (dirs.spool_in.clone(), RecursiveMode::Recursive),
        (dirs.cancel.clone(), RecursiveMode::NonRecursive),
        (dirs.priority.clone(), RecursiveMode::NonRecursive),
        (dirs.points.clone(), RecursiveMode::NonRecursive),
    ];
    let seam2 = seam.clone();
    let handler = move |res: notify::Result<Event>| {
        let Some(event) = translate(&dirs, res) else {
            return;
        };
        if matches!(event, WatchEvent::Input(_)) && seam2.as_ref().is_some_and(Seam::losing) {
            return;
        }
        let _ = tx.send(event);
    };
    if let Some(seam) = &seam {
        *seam.inner.handler.lock().unwrap() = Some(Box::new(handler.clone()));
    }
    // Symlinks are never followed: one under tsk/ pointing at / must not
    // make the watcher walk the whole filesystem.
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher =
        RecommendedWatcher::new(handler, config).map_err(|source| WatchError::Watch {
            path: spool_in.clone(),
            hint: hint_for(&source),
            source,
        })?;
    for (path, mode) in &watched {
        match watcher.watch(path, *mode) {
            Ok(()) => {}
            Err(e) if below(&e, path) => watch_each_below(&mut watcher, path),
            Err(source) => {
                return Err(WatchError::Watch {
                    path: path.clone(),
                    hint: hint_for(&source),
                    source,
                })
            }
        }
    }
    Ok(watcher)
}

/// Whether a failed watch failed on a directory below `dir`, not on `dir`
/// itself (a domain's directory of `in/` the engine may not read: `dir`
/// is watched, and the engine says once that it cannot read that one).
fn below(e: &notify::Error, dir: &Path) -> bool {
    !matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
        && !e.paths.is_empty()
        && e.paths.iter().all(|p| p != dir && p.starts_with(dir))
}

/// Watches each directory just below `dir` on its own (a recursive watch
/// of `dir` stopped at one it could not watch: the others still are).
fn watch_each_below(watcher: &mut RecommendedWatcher, dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            watch_dir(watcher, &entry.path());
        }
    }
}

/// Makes sure a directory that appeared under `in/` is watched before the
/// engine lists it. `notify` adds the watch on a new directory only after
/// it has passed on the directory's own event, and a file put into the
/// directory between the engine's listing and that watch would have no
/// event at all; once this returns, every later entry has one. (A round
/// trip to the watcher's thread; `notify` adds a watch already there as a
/// no-op update of its mask.)
pub fn watch_dir(watcher: &mut RecommendedWatcher, dir: &Path) {
    if let Err(e) = watcher.watch(dir, RecursiveMode::Recursive) {
        // Gone already (taken or removed): nothing to list either.
        tracing::debug!("cannot watch {}: {e}", dir.display());
    }
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

#[cfg(test)]
mod tests {
    use super::{translate, Dirs, WatchEvent};
    use notify::event::{AccessKind, AccessMode, CreateKind, Flag, ModifyKind, RenameMode};
    use notify::{Event, EventKind};
    use std::path::PathBuf;

    fn dirs() -> Dirs {
        Dirs {
            spool: "/r".into(),
            spool_in: "/r/in".into(),
            cancel: "/r/cancel".into(),
            priority: "/r/priority".into(),
            points: "/r/points".into(),
        }
    }

    fn ev(kind: EventKind, paths: &[&str]) -> notify::Result<Event> {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        Ok(e)
    }

    #[test]
    fn an_overflow_asks_for_a_rescan() {
        let overflow = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert_eq!(translate(&dirs(), Ok(overflow)), Some(WatchEvent::Rescan));
    }

    #[test]
    fn entries_of_in_are_announced_when_complete() {
        let d = dirs();
        let input = |p: &str| Some(WatchEvent::Input(PathBuf::from(p)));
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(
            translate(&d, ev(close, &["/r/in/a.json"])),
            input("/r/in/a.json")
        );
        let moved = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert_eq!(
            translate(&d, ev(moved, &["/r/in/org.x"])),
            input("/r/in/org.x")
        );
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert_eq!(
            translate(&d, ev(both, &["/r/staging/b.json", "/r/in/b.json"])),
            input("/r/in/b.json")
        );
        let folder = EventKind::Create(CreateKind::Folder);
        assert_eq!(
            translate(&d, ev(folder, &["/r/in/org.y"])),
            input("/r/in/org.y")
        );
        // A write of data: the writer goes on; only points files are read.
        let data = EventKind::Modify(ModifyKind::Any);
        assert_eq!(translate(&d, ev(data, &["/r/in/a.json"])), None);
        assert_eq!(
            translate(&d, ev(data, &["/r/points/p"])),
            Some(WatchEvent::Points("/r/points/p".into()))
        );
    }

    #[test]
    fn a_watched_directory_gone_or_back_is_told() {
        let d = dirs();
        let gone = |p: &str| Some(WatchEvent::DirGone(PathBuf::from(p)));
        let back = |p: &str| Some(WatchEvent::DirBack(PathBuf::from(p)));
        let folder = EventKind::Create(CreateKind::Folder);
        let removed = EventKind::Remove(notify::event::RemoveKind::Folder);
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert_eq!(translate(&d, ev(removed, &["/r/in"])), gone("/r/in"));
        assert_eq!(translate(&d, ev(from, &["/r/cancel"])), gone("/r/cancel"));
        assert_eq!(translate(&d, ev(folder, &["/r/in"])), back("/r/in"));
        assert_eq!(translate(&d, ev(to, &["/r/priority"])), back("/r/priority"));
        assert_eq!(
            translate(&d, ev(both, &["/r/in.new", "/r/in"])),
            back("/r/in")
        );
        // in/ moved away: told by its From event; the Both names the new
        // place, which is nothing to the engine.
        assert_eq!(translate(&d, ev(both, &["/r/in", "/r/in.old"])), None);
        // Other entries of var/spool/, and opens of a watched directory.
        assert_eq!(translate(&d, ev(folder, &["/r/done"])), None);
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert_eq!(translate(&d, ev(open, &["/r/in"])), None);
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(translate(&d, ev(close, &["/r/x.json"])), None);
        // Entries inside in/ are as before.
        assert_eq!(
            translate(&d, ev(folder, &["/r/in/org.x"])),
            Some(WatchEvent::Input("/r/in/org.x".into()))
        );
    }
}
