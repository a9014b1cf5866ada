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
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(root.dir()).ok()?.ino();
    let record = std::fs::read_to_string(root.lock())
        .ok()
        .and_then(|text| parse_lock(&text));
    let pid = match std::fs::read_to_string("/proc/locks") {
        // On the root, or on the record itself where the root cannot be
        // locked (see `engine::lock`).
        Ok(locks) => flock_holder(&locks, ino).or_else(|| {
            let record_ino = std::fs::metadata(root.lock()).ok()?.ino();
            flock_holder(&locks, record_ino)
        })?,
        // No /proc: the recorded pid's process existing is the best sign
        // left.
        Err(_) => {
            let (pid, _) = record?;
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                != Err(nix::errno::Errno::ESRCH);
            alive.then_some(pid)?
        }
    };
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

/// The pid holding an exclusive `flock` on inode `ino`, as `/proc/locks`
/// lists it (lines like `1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0
/// EOF`); `None` when no such lock is held.
pub(crate) fn flock_holder(locks: &str, ino: u64) -> Option<i32> {
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let on_ino = f
            .get(5)
            .and_then(|dev_ino| dev_ino.rsplit(':').next())
            .and_then(|i| i.parse::<u64>().ok())
            == Some(ino);
        (f.get(1) == Some(&"FLOCK") && f.get(3) == Some(&"WRITE") && on_ino)
            .then(|| f.get(4).and_then(|p| p.parse::<i32>().ok()).unwrap_or(-1))
    })
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
                     3: FLOCK  ADVISORY  READ 8 08:01:55 0 EOF\n";
        assert_eq!(flock_holder(locks, 1234567), Some(4242));
        assert_eq!(
            flock_holder(locks, 99),
            None,
            "a POSIX lock is not the engine's"
        );
        assert_eq!(
            flock_holder(locks, 55),
            None,
            "a shared flock is not the engine's"
        );
        assert_eq!(flock_holder(locks, 1), None);
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
