//! The watcher of the spool: one inotify instance on `var/spool/`, `in/`
//! (and every directory below it), `cancel/`, `priority/` and the
//! taskers' points directory, read by one thread that turns events into
//! [`WatchEvent`]s ([`super::translate`]) and sends them to the engine.
//!
//! Directories are watched with masks of what the engine acts on only
//! ([`Role::mask`]). The engine adds watches itself (a new directory of
//! `in/` before it lists it, a watched directory made again) through
//! [`SpoolWatcher::watch_dir`] and [`SpoolWatcher::rewatch`]: a watch is
//! in place when the call returns, so every later entry has its event.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use inotify::{Inotify, WatchDescriptor, Watches};
use tokio::sync::mpsc::UnboundedSender;

use super::translate::{translate, Action, Role, SpoolDirs};
use super::{PointsPending, Seam, WatchError, WatchEvent};
use crate::layout::Root;

/// A watched directory: where it is and what it is to the engine.
struct Watched {
    path: PathBuf,
    role: Role,
    wd: WatchDescriptor,
}

/// The watches, by descriptor id; shared by the engine (which adds) and
/// the reading thread (which translates, and adds under `in/`).
struct Table {
    watches: Watches,
    by_wd: HashMap<i32, Watched>,
}

impl Table {
    /// Watches `dir` as `role`; replaces the mask of a watch already there.
    fn add(&mut self, dir: &Path, role: Role) -> std::io::Result<()> {
        let wd = self.watches.add(dir, role.mask())?;
        let id = wd.get_watch_descriptor_id();
        self.by_wd.insert(
            id,
            Watched {
                path: dir.to_path_buf(),
                role,
                wd,
            },
        );
        Ok(())
    }

    /// Watches `dir` and every directory below it (links not followed) as
    /// part of `in/`. A directory below that cannot be watched is left
    /// out (the engine says so when it lists it); `dir` itself must be.
    fn add_tree(&mut self, dir: &Path) -> std::io::Result<()> {
        self.add(dir, Role::In)?;
        let below = walkdir::WalkDir::new(dir)
            .follow_links(false)
            .min_depth(1)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_dir());
        for entry in below {
            if let Err(e) = self.add(entry.path(), Role::In) {
                tracing::debug!("cannot watch {}: {e}", entry.path().display());
            }
        }
        Ok(())
    }

    /// Drops the watches of `dir` and of everything below it.
    fn remove_under(&mut self, dir: &Path) {
        let ids: Vec<i32> = self
            .by_wd
            .iter()
            .filter(|(_, w)| w.path.starts_with(dir))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(w) = self.by_wd.remove(&id) {
                let _ = self.watches.remove(w.wd);
            }
        }
    }
}

/// The spool's watcher; the reading thread ends when it is dropped.
pub struct SpoolWatcher {
    table: Arc<Mutex<Table>>,
    points: PointsPending,
    /// The engine's channel, for [`Self::points_again`].
    tx: UnboundedSender<WatchEvent>,
    /// Dropping the write end of this pipe wakes the thread to end.
    _stop: OwnedFd,
}

impl SpoolWatcher {
    /// Starts watching; events go to `tx` until the watcher drops.
    pub fn start(
        root: &Root,
        points_dir: &Path,
        tx: UnboundedSender<WatchEvent>,
        seam: Option<Seam>,
    ) -> Result<SpoolWatcher, WatchError> {
        let inotify = Inotify::init().map_err(|source| WatchError::new(&root.spool(), source))?;
        let mut table = Table {
            watches: inotify.watches(),
            by_wd: HashMap::new(),
        };
        let watched = [
            (root.spool(), Role::Spool),
            (root.spool_in(), Role::In),
            (root.cancel(), Role::Cancel),
            (root.priority_requests(), Role::Priority),
            (points_dir.to_path_buf(), Role::Points),
        ];
        for (dir, role) in &watched {
            let added = match role {
                Role::In => table.add_tree(dir),
                _ => table.add(dir, *role),
            };
            added.map_err(|source| WatchError::new(dir, source))?;
        }
        let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| WatchError::new(&root.spool(), e.into()))?;
        let table = Arc::new(Mutex::new(table));
        let points = PointsPending::default();
        let events = tx.clone();
        let reader = Reader {
            inotify,
            stop: stop_r,
            table: table.clone(),
            points: points.clone(),
            spool: SpoolDirs {
                spool_in: root.spool_in(),
                cancel: root.cancel(),
                priority: root.priority_requests(),
            },
            tx,
            seam,
        };
        if let Some(seam) = &reader.seam {
            seam.connect(reader.tx.clone());
        }
        std::thread::Builder::new()
            .name("spoolflow-watch".into())
            .spawn(move || reader.run())
            .map_err(|source| WatchError::new(&root.spool(), source))?;
        Ok(SpoolWatcher {
            table,
            points,
            tx: events,
            _stop: stop_w,
        })
    }

    /// The engine read part of what a points file holds: the rest is
    /// told as a write would be, after what is queued already.
    pub fn points_again(&self, path: &Path) {
        if self.points.announce(path) {
            let _ = self.tx.send(WatchEvent::Points(path.to_path_buf()));
        }
    }

    /// The engine is about to read the points file at `path`: a write
    /// after that read is told again (see [`PointsPending`]).
    pub fn points_taken(&self, path: &Path) {
        self.points.taken(path);
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a table still usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes sure a directory that appeared under `in/` is watched (with
    /// what is below it) before the engine lists it: once this returns,
    /// every later entry has an event.
    pub fn watch_dir(&mut self, dir: &Path) {
        if let Err(e) = self.table().add_tree(dir) {
            // Gone already (taken or removed): nothing to list either.
            tracing::debug!("cannot watch {}: {e}", dir.display());
        }
    }

    /// Watches `dir` (a watched directory of the spool made again, or
    /// moved back) afresh: the watches of the directory that was there
    /// before, if any are left, are dropped first. Returns whether it is
    /// watched.
    pub fn rewatch(&mut self, dir: &Path, role: Role) -> bool {
        let mut table = self.table();
        table.remove_under(dir);
        let added = match role {
            Role::In => table.add_tree(dir),
            _ => table.add(dir, role),
        };
        match added {
            Ok(()) => true,
            Err(e) => {
                // Gone again: its next event says when it is back.
                tracing::debug!("cannot watch {}: {e}", dir.display());
                false
            }
        }
    }
}

/// The reading thread's state.
struct Reader {
    inotify: Inotify,
    stop: OwnedFd,
    table: Arc<Mutex<Table>>,
    points: PointsPending,
    spool: SpoolDirs,
    tx: UnboundedSender<WatchEvent>,
    seam: Option<Seam>,
}

impl Reader {
    fn run(mut self) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let mut fds = [
                PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return self.fail(e.into()),
            }
            if fds[1].any().unwrap_or(true) {
                return; // the watcher was dropped
            }
            if let Err(e) = self.read_once(&mut buffer) {
                return self.fail(e);
            }
        }
    }

    /// Reads what is queued and tells the engine (nothing once the engine
    /// is gone); an error is a failed read.
    fn read_once(&mut self, buffer: &mut [u8]) -> std::io::Result<()> {
        let events = match self.inotify.read_events(buffer) {
            Ok(events) => events,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        for ev in events {
            let id = ev.wd.get_watch_descriptor_id();
            if ev.mask.contains(inotify::EventMask::IGNORED) {
                // The kernel dropped the watch (its directory is gone).
                table.by_wd.remove(&id);
                continue;
            }
            let (dir, role) = match table.by_wd.get(&id) {
                Some(w) => (w.path.clone(), w.role),
                None if ev.mask.contains(inotify::EventMask::Q_OVERFLOW) => {
                    (PathBuf::new(), Role::In)
                }
                None => continue,
            };
            let is_regular =
                |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file());
            let event = match translate(role, &dir, ev.name, ev.mask, &self.spool, is_regular) {
                Action::Nothing => continue,
                Action::Tell(event) => event,
                Action::WatchAndTell(path) => {
                    if let Err(e) = table.add_tree(&path) {
                        tracing::debug!("cannot watch {}: {e}", path.display());
                    }
                    WatchEvent::Input(path)
                }
            };
            if matches!(&event, WatchEvent::Points(p) if !self.points.announce(p)) {
                continue; // told already, not looked at yet
            }
            let losing = self.seam.as_ref().is_some_and(Seam::losing);
            if matches!(event, WatchEvent::Input(_) | WatchEvent::Made(Role::In, _)) && losing {
                continue;
            }
            if self.tx.send(event).is_err() {
                return Ok(()); // the engine is gone; the stop pipe ends the thread
            }
        }
        Ok(())
    }

    fn fail(&self, e: std::io::Error) {
        let _ = self.tx.send(WatchEvent::Error(e.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use tokio::sync::mpsc::error::TryRecvError;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    /// A root with its layout and a watcher on it, and where its events go.
    fn watching() -> (
        tempfile::TempDir,
        Root,
        SpoolWatcher,
        UnboundedReceiver<WatchEvent>,
    ) {
        let (tmp, root) = crate::layout::temp_root();
        std::fs::create_dir_all(root.points_dir()).unwrap();
        let (tx, rx) = unbounded_channel();
        let w = SpoolWatcher::start(&root, &root.points_dir(), tx, None).unwrap();
        (tmp, root, w, rx)
    }

    /// What `rx` says first within `within`: an event, or that it closed.
    fn first(
        rx: &mut UnboundedReceiver<WatchEvent>,
        within: Duration,
    ) -> Result<WatchEvent, TryRecvError> {
        let deadline = Instant::now() + within;
        loop {
            match rx.try_recv() {
                Err(TryRecvError::Empty) if Instant::now() <= deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                got => return got,
            }
        }
    }

    /// The next event within a second, if any.
    fn next(rx: &mut UnboundedReceiver<WatchEvent>) -> Option<WatchEvent> {
        first(rx, Duration::from_secs(1)).ok()
    }

    #[test]
    fn the_engines_own_reads_and_moves_tell_nothing_and_arrivals_are_told() {
        let (_tmp, root, _w, mut rx) = watching();
        // What a submitter does: write aside, rename in.
        let aside = root.spool().join("a.tmp");
        std::fs::write(&aside, "{}").unwrap();
        let file = root.spool_in().join("a.json");
        std::fs::rename(&aside, &file).unwrap();
        assert_eq!(next(&mut rx), Some(WatchEvent::Input(file.clone())));
        // What the engine does with it: read it, move it to run/, fsync
        // the directories; then a marker arrival shows nothing came before.
        std::fs::read(&file).unwrap();
        std::fs::rename(&file, root.run().join("a.json")).unwrap();
        for dir in [root.spool_in(), root.done(), root.run()] {
            std::fs::File::open(&dir).unwrap().sync_all().unwrap();
        }
        let marker = root.cancel().join("t1");
        std::fs::write(&marker, "").unwrap();
        let made = WatchEvent::Made(Role::Cancel, marker.clone());
        assert_eq!(next(&mut rx), Some(made));
        assert_eq!(next(&mut rx), Some(WatchEvent::Cancel(marker)));
    }

    /// The events up to `marker`'s (a cancel request made as a marker).
    fn told_until(rx: &mut UnboundedReceiver<WatchEvent>, marker: &Path) -> Vec<WatchEvent> {
        let mut told = Vec::new();
        loop {
            match next(rx) {
                Some(WatchEvent::Cancel(p)) if p == marker => return told,
                Some(WatchEvent::Made(Role::Cancel, p)) if p == marker => {}
                Some(ev) => told.push(ev),
                None => panic!("no event for {}; told {told:?}", marker.display()),
            }
        }
    }

    #[test]
    fn a_points_file_written_line_by_line_is_told_once_until_the_engine_reads_it() {
        use std::io::Write;
        let (_tmp, root, w, mut rx) = watching();
        let points = root.points_dir().join("e1-0");
        let mut f = std::fs::File::create(&points).unwrap();
        for _ in 0..1000 {
            f.write_all(b"{\"point\":\"tick\"}\n").unwrap();
        }
        let marker = root.cancel().join("m1");
        std::fs::write(&marker, "").unwrap();
        let once = vec![WatchEvent::Points(points.clone())];
        assert_eq!(told_until(&mut rx, &marker), once);
        // Not read yet: more writes tell nothing more.
        f.write_all(b"{\"point\":\"tick\"}\n").unwrap();
        let marker = root.cancel().join("m2");
        std::fs::write(&marker, "").unwrap();
        assert_eq!(told_until(&mut rx, &marker), vec![]);
        // Read: the next write is told again, once.
        w.points_taken(&points);
        for _ in 0..100 {
            f.write_all(b"{\"point\":\"tick\"}\n").unwrap();
        }
        let marker = root.cancel().join("m3");
        std::fs::write(&marker, "").unwrap();
        assert_eq!(told_until(&mut rx, &marker), once);
        // What the engine left to read is told as a write is, once.
        w.points_taken(&points);
        w.points_again(&points);
        w.points_again(&points);
        let marker = root.cancel().join("m4");
        std::fs::write(&marker, "").unwrap();
        assert_eq!(told_until(&mut rx, &marker), once);
    }

    #[test]
    fn directories_made_under_in_are_watched_to_any_depth() {
        let (_tmp, root, _w, mut rx) = watching();
        let domain = root.spool_in().join("org.example");
        std::fs::create_dir(&domain).unwrap();
        assert_eq!(next(&mut rx), Some(WatchEvent::Input(domain.clone())));
        let deep = domain.join("sub");
        std::fs::create_dir(&deep).unwrap();
        assert_eq!(next(&mut rx), Some(WatchEvent::Input(deep.clone())));
        let file = deep.join("x.json");
        std::fs::write(&file, "{}").unwrap();
        let made = WatchEvent::Made(Role::In, file.clone());
        assert_eq!(next(&mut rx), Some(made));
        assert_eq!(next(&mut rx), Some(WatchEvent::Input(file)));
        // in/ removed and made again: gone, then back, and watched anew
        // once the engine asks.
        std::fs::remove_dir_all(root.spool_in()).unwrap();
        assert_eq!(next(&mut rx), Some(WatchEvent::DirGone(root.spool_in())));
        std::fs::create_dir(root.spool_in()).unwrap();
        assert_eq!(next(&mut rx), Some(WatchEvent::DirBack(root.spool_in())));
    }

    #[test]
    fn the_reading_thread_ends_with_the_watcher() {
        let (_tmp, _root, w, mut rx) = watching();
        drop(w);
        // The thread held the only sender: the channel closes when it ends.
        assert_eq!(
            first(&mut rx, Duration::from_secs(5)),
            Err(TryRecvError::Disconnected),
            "the thread still runs"
        );
    }
}
