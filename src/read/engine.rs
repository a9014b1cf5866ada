//! Whether an engine runs on the root, read from its lock file
//! (`var/run/engine.lock`: the pid on the first line, `workers N` on the
//! second, written when the lock is taken, so the file's modification time
//! is the engine's start). The file is only read: a reader never takes the
//! lock, which would make an engine starting at that moment fail.

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
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
        != Err(nix::errno::Errno::ESRCH);
    if !alive {
        return None;
    }
    let started_at = std::fs::metadata(&path).ok()?.modified().ok()?.into();
    Some(EngineInfo {
        pid,
        started_at,
        workers,
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
    fn a_lock_naming_a_live_process_is_an_engine_and_a_dead_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        assert!(engine(&root).is_none());
        std::fs::write(root.lock(), format!("{}\nworkers 2\n", std::process::id())).unwrap();
        let info = engine(&root).unwrap();
        assert_eq!(info.workers, Some(2));
        // A reaped child's pid names no process.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(root.lock(), format!("{dead}\n")).unwrap();
        assert!(engine(&root).is_none());
    }
}
