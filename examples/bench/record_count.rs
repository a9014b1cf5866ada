//! Counting the records in `done/` while an engine runs, at a cost that
//! does not grow with the directory.
//!
//! The steady windows used to count `done/` with a `readdir` every 20 ms:
//! that costs more the more records the root holds (about 3 ms on tmpfs
//! and 6 ms on ext4 at 10 000 entries here), on a thread that shares the
//! machine's two CPUs with the engine and its taskers, so it taxed the
//! deep queue's root more than the shallow one's; and a window's ends
//! were known only to the poll's 20 ms. This counter reads the directory
//! once, before the engine starts, then follows inotify: records arrive by
//! `rename` (`IN_MOVED_TO`) or, for any other writer, `IN_CREATE`;
//! dotfiles are the engine's temporaries and are not counted. A waiter
//! wakes as each record lands.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use inotify::{EventMask, Inotify, WatchMask};

use super::*;

pub struct RecordCount {
    inotify: Inotify,
    dir: PathBuf,
    count: usize,
    buf: Vec<u8>,
}

impl RecordCount {
    /// Starts counting `dir`'s records. Call it while nothing writes to
    /// `dir` (before the engine starts): the watch is set, then the
    /// directory read once.
    pub fn new(dir: &Path) -> BenchResult<RecordCount> {
        let inotify = Inotify::init().map_err(|e| format!("inotify: {e}"))?;
        let mask =
            WatchMask::MOVED_TO | WatchMask::CREATE | WatchMask::MOVED_FROM | WatchMask::DELETE;
        inotify
            .watches()
            .add(dir, mask)
            .map_err(|e| format!("inotify watch on {}: {e}", dir.display()))?;
        Ok(RecordCount {
            inotify,
            dir: dir.to_path_buf(),
            count: count_files(dir),
            buf: vec![0; 64 * 1024],
        })
    }

    /// The records in the directory now: the events since the last call,
    /// without blocking. If the kernel's event queue overflowed, the
    /// directory is read again.
    pub fn now(&mut self) -> usize {
        loop {
            let events = match self.inotify.read_events(&mut self.buf) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return self.count,
                Err(_) => return self.recount(),
            };
            let mut overflow = false;
            let mut any = false;
            for ev in events {
                any = true;
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    overflow = true;
                } else if ev.name.is_some_and(is_record) {
                    if ev.mask.intersects(EventMask::MOVED_TO | EventMask::CREATE) {
                        self.count += 1;
                    } else {
                        self.count = self.count.saturating_sub(1);
                    }
                }
            }
            if overflow {
                return self.recount();
            }
            if !any {
                return self.count;
            }
        }
    }

    /// The records in the directory once one more event arrived, or
    /// `timeout` passed.
    pub fn wait(&mut self, timeout: Duration) -> usize {
        use std::os::fd::AsFd;
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            self.inotify.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
        self.now()
    }

    fn recount(&mut self) -> usize {
        self.count = count_files(&self.dir);
        self.count
    }
}

/// Counted as `count_files` counts: every name but dotfiles.
fn is_record(name: &OsStr) -> bool {
    !name.as_bytes().starts_with(b".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_renames_creates_and_removals_but_not_dotfiles() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::write(d.join("a.json"), "{}").unwrap();
        let mut c = RecordCount::new(d).unwrap();
        assert_eq!(c.now(), 1);
        fs::write(d.join(".b.tmp"), "{}").unwrap();
        assert_eq!(c.now(), 1);
        fs::rename(d.join(".b.tmp"), d.join("b.json")).unwrap();
        fs::write(d.join("c.json"), "{}").unwrap();
        assert_eq!(c.now(), 3);
        fs::remove_file(d.join("a.json")).unwrap();
        assert_eq!(c.now(), 2);
        assert_eq!(c.now(), count_files(d));
        let t = Instant::now();
        assert_eq!(c.wait(Duration::from_millis(200)), 2);
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "no event: waited the timeout"
        );
        fs::write(d.join("d.json"), "{}").unwrap();
        assert_eq!(c.wait(Duration::from_secs(60)), 3);
    }
}
