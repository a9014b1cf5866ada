//! Waiting for the spool to change, for `wait`, `logs --follow` and
//! `events --follow`: a `notify` watcher on a few directories whose events
//! wake the command. The command re-reads the files on each wake-up (an
//! event says where to look, the files say what is true); a wake-up every
//! few seconds with no event is only a safety net against a lost event.
//! [`Tail`] reads what was appended to a file since the last look.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::{exit, Failure};

/// The safety net's period.
const SAFETY: Duration = Duration::from_secs(5);

/// Watches directories; [`Follow::next`] blocks until one changes.
pub struct Follow {
    _watcher: RecommendedWatcher,
    events: Receiver<Vec<PathBuf>>,
}

impl Follow {
    /// Starts watching `dirs` (not recursively). Call it before reading
    /// the files it guards, so that no change between the read and the
    /// watch is missed.
    pub fn new(dirs: &[PathBuf]) -> Result<Follow, Failure> {
        let (tx, events) = channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Reading a file is an event too (open, close without
            // writing): the commands read what they watch, and would wake
            // themselves for ever. Only changes count.
            match res {
                Ok(e) if !matches!(e.kind, notify::EventKind::Access(_)) => {
                    let _ = tx.send(e.paths);
                }
                _ => {}
            }
        })
        .map_err(|e| Failure::new(exit::FAILURE, format!("cannot watch the spool: {e}")))?;
        for dir in dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| {
                    Failure::new(
                        exit::FAILURE,
                        format!("cannot watch {}: {e}", dir.display()),
                    )
                })?;
        }
        Ok(Follow {
            _watcher: watcher,
            events,
        })
    }

    /// Blocks until something changes (or the safety net's period passes,
    /// or `deadline`); gives the paths that changed (all events pending are
    /// taken at once). `None` once `deadline` has passed.
    pub fn next(&self, deadline: Option<Instant>) -> Option<Vec<PathBuf>> {
        let now = Instant::now();
        let wait = match deadline {
            Some(d) if d <= now => return None,
            Some(d) => (d - now).min(SAFETY),
            None => SAFETY,
        };
        let mut paths = match self.events.recv_timeout(wait) {
            Ok(p) => p,
            Err(RecvTimeoutError::Timeout) => Vec::new(),
            Err(RecvTimeoutError::Disconnected) => return None,
        };
        while let Ok(more) = self.events.try_recv() {
            paths.extend(more);
        }
        Some(paths)
    }
}

/// How much [`Tail::lines`] reads at a time; also the longest line it
/// gives whole (the rest of a longer line is skipped).
const CHUNK: usize = 4 << 20;

/// A file read from where the last read stopped, whole lines at a time,
/// at most [`CHUNK`] bytes per call ([`Tail::more`] says whether more was
/// there). It is opened as every file under `var/` is (no link followed,
/// no FIFO waited on); a file replaced at the path (removed by `gc`, made
/// again by a task of the same id) or cut shorter is read again from its
/// start.
pub struct Tail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// The file read last (device and inode).
    file: Option<(u64, u64)>,
    /// Whether the last call stopped at [`CHUNK`] with more to read.
    more: bool,
    /// Inside a line longer than [`CHUNK`]: skipped up to its end.
    skipping: bool,
}

impl Tail {
    pub fn new(path: PathBuf) -> Tail {
        Tail::at(path, 0)
    }

    /// A tail that starts reading at `offset` (what is before it is
    /// taken as read).
    pub fn at(path: PathBuf, offset: u64) -> Tail {
        Tail {
            path,
            offset,
            partial: Vec::new(),
            file: None,
            more: false,
            skipping: false,
        }
    }

    /// Whether the last [`Tail::lines`] left bytes unread.
    pub fn more(&self) -> bool {
        self.more
    }

    /// The whole lines appended since the last call (up to [`CHUNK`]
    /// bytes of them).
    pub fn lines(&mut self) -> Vec<Vec<u8>> {
        use std::os::unix::fs::MetadataExt;
        self.more = false;
        let Ok(f) = spoolflow::store::points::open_to_read(&self.path) else {
            return Vec::new();
        };
        let Ok(meta) = f.metadata() else {
            return Vec::new();
        };
        let file = (meta.dev(), meta.ino());
        let replaced = self.file.is_some_and(|was| was != file);
        if replaced || meta.len() < self.offset {
            self.offset = 0;
            self.partial.clear();
            self.skipping = false;
        }
        self.file = Some(file);
        let mut bytes = Vec::new();
        let mut f = f;
        if f.seek(SeekFrom::Start(self.offset)).is_err()
            || (&mut f).take(CHUNK as u64).read_to_end(&mut bytes).is_err()
        {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.more = bytes.len() == CHUNK && meta.len() > self.offset;
        self.split(bytes)
    }

    /// Adds `bytes` to the line begun and gives the lines they end.
    fn split(&mut self, mut bytes: Vec<u8>) -> Vec<Vec<u8>> {
        if self.skipping {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    bytes.drain(..=end);
                    self.skipping = false;
                }
                None => return Vec::new(),
            }
        }
        self.partial.extend(bytes);
        let mut lines = Vec::new();
        if let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') {
            let rest = self.partial.split_off(end + 1);
            let whole = std::mem::replace(&mut self.partial, rest);
            lines.extend(
                whole
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(<[u8]>::to_vec),
            );
        }
        if self.partial.len() > CHUNK {
            // A line longer than any the engine writes: its start is
            // given, the rest skipped.
            self.partial.truncate(CHUNK);
            lines.push(std::mem::take(&mut self.partial));
            self.skipping = true;
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::{Tail, CHUNK};

    #[test]
    fn a_tail_reads_a_replaced_or_shortened_file_from_its_start() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t1.log");
        std::fs::write(&path, "one\ntwo\npart").unwrap();
        let mut tail = Tail::new(path.clone());
        assert_eq!(tail.lines(), [b"one".to_vec(), b"two".to_vec()]);
        // Removed (gc) and made again by a task of the same id: shorter.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(tail.lines(), [b"new".to_vec()]);
        // Replaced by a longer file (another inode): read whole, too.
        let other = tmp.path().join("other");
        std::fs::write(&other, "a\nb\nc\nd\ne\n").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(tail.lines().len(), 5);
        // Cut shorter in place (same inode).
        std::fs::write(&path, "x\n").unwrap();
        assert_eq!(tail.lines(), [b"x".to_vec()]);
        // A FIFO or a link at the path: nothing, at once.
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(tail.lines().is_empty());
    }

    #[test]
    fn a_tail_reads_a_large_file_a_chunk_at_a_time_and_cuts_an_endless_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t1.log");
        let line = format!("{}\n", "p".repeat(999));
        let count = 3 * CHUNK / line.len();
        std::fs::write(&path, line.repeat(count)).unwrap();
        let mut tail = Tail::new(path.clone());
        let mut read = 0;
        let mut calls = 0;
        loop {
            let lines = tail.lines();
            calls += 1;
            assert!(lines.iter().map(|l| l.len() + 1).sum::<usize>() <= CHUNK);
            assert!(lines.iter().all(|l| l.len() == 999));
            read += lines.len();
            if !tail.more() {
                break;
            }
        }
        assert_eq!(read, count);
        assert_eq!(calls, 3);
        // A line with no end in sight: its first CHUNK bytes, then the
        // lines after it.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        use std::io::Write;
        f.write_all(&vec![b'x'; 2 * CHUNK + 10]).unwrap();
        let first = tail.lines();
        assert!(tail.more());
        let mut cut = first;
        cut.extend(tail.lines());
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].len(), CHUNK);
        f.write_all(b"tail\nnext\n").unwrap();
        let mut after = Vec::new();
        loop {
            after.extend(tail.lines());
            if !tail.more() {
                break;
            }
        }
        assert_eq!(after, [b"next".to_vec()]);
    }
}
