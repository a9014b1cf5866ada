//! Whether an engine runs on the root. The engine holds an exclusive
//! `flock` on the root directory itself (see `engine::lock`), which
//! `/proc/locks` lists with the holder's pid; its pid record
//! `var/run/engine.lock` (the pid on the first line, `workers N` on the
//! second, its modification time the engine's start) adds the workers and
//! the start. A reader never takes the lock, which would make an engine
//! starting at that moment fail. A record naming a live pid proves nothing
//! by itself (the engine may have stopped, its process lives on).

use chrono::{DateTime, Utc};

use crate::layout::Root;

/// A running engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    pub pid: i32,
    pub started_at: DateTime<Utc>,
    /// `--workers` of that engine (unknown for an engine that did not
    /// write it).
    pub workers: Option<usize>,
}

/// The engine running on `root`, if one does: the root directory's lock is
/// held.
pub fn engine(root: &Root) -> Option<EngineInfo> {
    let dir = FileId::of(&std::fs::metadata(root.dir()).ok()?);
    let record = std::fs::read_to_string(root.lock())
        .ok()
        .and_then(|text| parse_lock(&text));
    let recorded = record.map(|(pid, _)| pid);
    let pid = match std::fs::read_to_string("/proc/locks") {
        // On the root, or on the record itself where the root cannot be
        // locked (see `engine::lock`).
        Ok(locks) => flock_holder(&locks, dir, recorded).or_else(|| {
            let file = FileId::of(&std::fs::metadata(root.lock()).ok()?);
            flock_holder(&locks, file, recorded)
        })?,
        // No /proc: the recorded pid's process existing is the best sign
        // left.
        Err(_) => record?.0,
    };
    // A lock whose taker is dead is held by a child the engine was
    // spawning when it died (the descriptor closes as that child execs):
    // no engine runs. (In a pid namespace other than the first, the
    // kernel lists no lock whose taker it cannot name there; a pid of 0
    // is not checked.)
    if pid > 0 && !process_exists(pid) {
        return None;
    }
    // The record is this engine's only when it names the holder (it may
    // be gone for a moment, or be a dead engine's).
    let workers = record.filter(|(p, _)| *p == pid).and_then(|(_, w)| w);
    let started_at = record
        .filter(|(p, _)| *p == pid)
        .and_then(|_| std::fs::metadata(root.lock()).ok()?.modified().ok())
        .or_else(|| {
            std::fs::metadata(format!("/proc/{pid}"))
                .ok()?
                .modified()
                .ok()
        })
        .map(DateTime::<Utc>::from)
        .unwrap_or_else(Utc::now);
    Some(EngineInfo {
        pid,
        started_at,
        workers,
    })
}

/// Whether a process of that pid exists (a zombie counts: it has not been
/// reaped yet).
pub(crate) fn process_exists(pid: i32) -> bool {
    pid > 0
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            != Err(nix::errno::Errno::ESRCH)
}

/// A file as `/proc/locks` names it: its device's major and minor numbers
/// and its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    pub major: u64,
    pub minor: u64,
    pub ino: u64,
}

impl FileId {
    pub(crate) fn of(meta: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            major: nix::sys::stat::major(meta.dev()),
            minor: nix::sys::stat::minor(meta.dev()),
            ino: meta.ino(),
        }
    }

    /// `MAJ:MIN:INODE` of a `/proc/locks` line (the numbers of the device
    /// in hexadecimal).
    fn parse(text: &str) -> Option<FileId> {
        let mut parts = text.split(':');
        let major = u64::from_str_radix(parts.next()?, 16).ok()?;
        let minor = u64::from_str_radix(parts.next()?, 16).ok()?;
        let ino = parts.next()?.parse().ok()?;
        Some(FileId { major, minor, ino })
    }
}

/// The pid holding an exclusive `flock` on `file`, as `/proc/locks` lists
/// it (lines like `1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF`);
/// `None` when no such lock is held. A lock on the same inode of another
/// device is not the file's, unless its holder is `recorded` (the pid the
/// engine wrote: some filesystems, btrfs subvolumes, give `stat` a device
/// other than the one `/proc/locks` shows).
pub(crate) fn flock_holder(locks: &str, file: FileId, recorded: Option<i32>) -> Option<i32> {
    let held: Vec<(FileId, i32)> = locks
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(1) != Some(&"FLOCK") || f.get(3) != Some(&"WRITE") {
                return None;
            }
            let on = FileId::parse(f.get(5)?)?;
            let pid = f.get(4).and_then(|p| p.parse::<i32>().ok()).unwrap_or(-1);
            (on.ino == file.ino).then_some((on, pid))
        })
        .collect();
    held.iter()
        .find(|(on, _)| *on == file)
        .or_else(|| held.iter().find(|(_, pid)| Some(*pid) == recorded))
        .map(|(_, pid)| *pid)
}

/// The pid and workers of a lock file's text.
pub(crate) fn parse_lock(text: &str) -> Option<(i32, Option<usize>)> {
    let mut lines = text.lines();
    let pid = lines
        .next()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)?;
    let workers = lines
        .find_map(|l| l.strip_prefix("workers "))
        .and_then(|w| w.trim().parse().ok());
    Some((pid, workers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_files_parse() {
        assert_eq!(parse_lock("42\nworkers 3\n"), Some((42, Some(3))));
        assert_eq!(parse_lock("42\n"), Some((42, None)));
        assert_eq!(parse_lock(""), None);
        assert_eq!(parse_lock("0\n"), None);
        assert_eq!(parse_lock("x\n"), None);
    }

    #[test]
    fn proc_locks_lines_parse() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 7 08:01:99 0 EOF\n\
                     3: FLOCK  ADVISORY  READ 8 08:01:55 0 EOF\n\
                     4: FLOCK  ADVISORY  WRITE 77 00:1a:3129345 0 EOF\n";
        let on = |ino| FileId {
            major: 8,
            minor: 1,
            ino,
        };
        assert_eq!(flock_holder(locks, on(1234567), None), Some(4242));
        assert_eq!(
            flock_holder(locks, on(99), None),
            None,
            "a POSIX lock is not the engine's"
        );
        assert_eq!(
            flock_holder(locks, on(55), None),
            None,
            "a shared flock is not the engine's"
        );
        assert_eq!(flock_holder(locks, on(1), None), None);
        // The same inode number on another filesystem (device 0x00:0x1a):
        // a stranger's lock, unless its holder is the recorded engine.
        assert_eq!(flock_holder(locks, on(3129345), None), None);
        assert_eq!(flock_holder(locks, on(3129345), Some(5)), None);
        assert_eq!(flock_holder(locks, on(3129345), Some(77)), Some(77));
        let tmpfs = FileId {
            major: 0,
            minor: 0x1a,
            ino: 3129345,
        };
        assert_eq!(flock_holder(locks, tmpfs, None), Some(77));
    }

    /// `stat`'s device of a locked file is the one `/proc/locks` shows.
    #[test]
    fn a_lock_taken_here_is_found_by_its_device_and_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let file = std::fs::File::open(tmp.path()).unwrap();
        let _held =
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
        let id = FileId::of(&std::fs::metadata(tmp.path()).unwrap());
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        assert_eq!(
            flock_holder(&locks, id, None),
            Some(std::process::id() as i32),
            "{id:?} in\n{locks}"
        );
    }

    #[test]
    fn a_held_lock_is_an_engine_and_a_released_one_is_not() {
        use nix::fcntl::{Flock, FlockArg};
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        assert!(engine(&root).is_none());
        std::fs::write(root.lock(), format!("{}\nworkers 2\n", std::process::id())).unwrap();
        assert!(
            engine(&root).is_none(),
            "a live pid in a record, no lock held"
        );
        let dir = std::fs::File::open(root.dir()).unwrap();
        let held = Flock::lock(dir, FlockArg::LockExclusiveNonblock).unwrap();
        let info = engine(&root).unwrap();
        assert_eq!(
            (info.pid, info.workers),
            (std::process::id() as i32, Some(2))
        );
        // Without its record, the engine is still seen (its pid from the lock).
        std::fs::remove_dir_all(root.dir().join("var/run")).unwrap();
        let info = engine(&root).unwrap();
        assert_eq!((info.pid, info.workers), (std::process::id() as i32, None));
        drop(held);
        assert!(engine(&root).is_none());
    }
}
