//! Whether an engine runs on the root, read from its lock file
//! (`var/run/engine.lock`: the pid on the first line, `workers N` on the
//! second, written when the lock is taken, so the file's modification time
//! is the engine's start). The file is only read: a reader never takes the
//! lock, which would make an engine starting at that moment fail. Whether
//! the lock is held is read from `/proc/locks` (a file naming a live pid
//! proves nothing: the engine may have stopped, its process lives on).

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

/// The engine running on `root`, if one does: its lock file names a live
/// process.
pub fn engine(root: &Root) -> Option<EngineInfo> {
    let path = root.lock();
    let text = std::fs::read_to_string(&path).ok()?;
    let (pid, workers) = parse_lock(&text)?;
    let meta = std::fs::metadata(&path).ok()?;
    let held = match std::fs::read_to_string("/proc/locks") {
        Ok(locks) => flock_held(&locks, std::os::unix::fs::MetadataExt::ino(&meta)),
        // No /proc: the pid's process existing is the best sign left.
        Err(_) => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                != Err(nix::errno::Errno::ESRCH)
        }
    };
    if !held {
        return None;
    }
    let started_at = meta.modified().ok()?.into();
    Some(EngineInfo {
        pid,
        started_at,
        workers,
    })
}

/// Whether `/proc/locks` lists an exclusive `flock` on inode `ino`
/// (lines like `1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF`).
fn flock_held(locks: &str, ino: u64) -> bool {
    locks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"FLOCK")
            && f.get(3) == Some(&"WRITE")
            && f.get(5)
                .and_then(|dev_ino| dev_ino.rsplit(':').next())
                .and_then(|i| i.parse::<u64>().ok())
                == Some(ino)
    })
}

/// The pid and workers of a lock file's text.
fn parse_lock(text: &str) -> Option<(i32, Option<usize>)> {
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
                     3: FLOCK  ADVISORY  READ 8 08:01:55 0 EOF\n";
        assert!(flock_held(locks, 1234567));
        assert!(!flock_held(locks, 99), "a POSIX lock is not the engine's");
        assert!(!flock_held(locks, 55), "a shared flock is not the engine's");
        assert!(!flock_held(locks, 1));
    }

    #[test]
    fn a_held_lock_is_an_engine_and_a_released_one_is_not() {
        use nix::fcntl::{Flock, FlockArg};
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        assert!(engine(&root).is_none());
        std::fs::write(root.lock(), format!("{}\nworkers 2\n", std::process::id())).unwrap();
        assert!(engine(&root).is_none(), "a live pid in a lock nobody holds");
        let file = std::fs::File::open(root.lock()).unwrap();
        let held = Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap();
        let info = engine(&root).unwrap();
        assert_eq!(
            (info.pid, info.workers),
            (std::process::id() as i32, Some(2))
        );
        drop(held);
        assert!(engine(&root).is_none());
    }
}
