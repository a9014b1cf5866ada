//! The engine lock (SPEC 10, one engine per root) and the engine's pid
//! record.
//!
//! The lock is an exclusive `flock` on an open descriptor of the root
//! directory itself. Nothing an operator removes under the root (the
//! file `var/run/engine.lock`, the directory `var/run/`, even `var/`)
//! takes it away: a second engine opens the same directory and finds it
//! held, for as long as the root exists. (`var/` would do less: an
//! `rm -rf var` and a `spoolflow init` would give a second engine a new
//! `var/` to lock.) The kernel drops the lock when the engine dies, so
//! holding it proves that no engine of this root runs: only then does
//! start-up kill the taskers a dead engine left behind.
//!
//! `var/run/engine.lock` is only the readable record of the running
//! engine: its pid on the first line, `workers N` on the second, its
//! modification time the engine's start. The engine writes it once it
//! holds the lock, and writes it again whenever it finds it gone or
//! changed (see [`PidRecord::keep`]). Readers (`spoolflow status`,
//! `crate::read::engine`) tell whether an engine runs from `/proc/locks`,
//! never by taking the lock.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};

use crate::layout::Root;

use super::recovery::RecoveryError;

/// How often the running engine looks at what `var/run/` should hold
/// ([`super::Engine::keep_var_run`]): a few `lstat`s.
pub const UPKEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Held while the engine runs: the `flock` on the root directory. The
/// descriptor is close-on-exec, so taskers never inherit it.
pub struct EngineLock {
    lock: Flock<File>,
    /// The lock is on the pid record itself: a filesystem that cannot
    /// lock a directory (NFS emulates `flock` with byte-range locks, which
    /// need a descriptor open for writing). The record is then written in
    /// place, never replaced, and removing it would let a second engine
    /// start, as before issue 15.
    on_record: bool,
}

/// Takes the engine lock, or says which engine holds it.
///
/// When the engine holding the lock is dead but the lock is still held, a
/// child it was spawning when it died still has the descriptor (it is
/// closed when that child execs, a moment later): wait for it, up to a
/// few seconds.
pub async fn lock(root: &Root) -> Result<EngineLock, RecoveryError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match try_lock(root) {
            Err(RecoveryError::Locked { pid, .. })
                if !pid_alive(&pid) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// Whether the process named by a lock exists.
pub(super) fn pid_alive(pid: &str) -> bool {
    match pid.parse::<i32>() {
        Ok(p) if p > 0 => crate::read::engine::process_exists(p),
        _ => true,
    }
}

fn try_lock(root: &Root) -> Result<EngineLock, RecoveryError> {
    let dir = root.dir().to_path_buf();
    let lock_err = |source| RecoveryError::Lock {
        path: dir.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY)
        .open(&dir)
        .map_err(lock_err)?;
    let id = crate::read::engine::FileId::of(&file.metadata().map_err(lock_err)?);
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(EngineLock {
            lock,
            on_record: false,
        }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(RecoveryError::Locked {
            pid: holder(root, id).unwrap_or_else(|| "unknown".into()),
            path: root.lock(),
        }),
        Err((_, e)) => {
            tracing::warn!(
                "cannot lock the root directory {} ({}); locking {} instead (removing that file would let a second engine start)",
                dir.display(),
                io::Error::from(e),
                root.lock().display()
            );
            try_lock_record(root)
        }
    }
}

/// The lock on the pid record itself (see [`EngineLock::on_record`]).
fn try_lock_record(root: &Root) -> Result<EngineLock, RecoveryError> {
    let path = root.lock();
    let lock_err = |source| RecoveryError::Lock {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(lock_err)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(EngineLock {
            lock,
            on_record: true,
        }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(RecoveryError::Locked {
            pid: read_small(&path)
                .and_then(|text| crate::read::engine::parse_lock(&text))
                .map_or_else(|| "unknown".into(), |(pid, _)| pid.to_string()),
            path,
        }),
        Err((_, e)) => Err(lock_err(io::Error::from(e))),
    }
}

/// The pid of the engine holding the lock on the root (`dir`): as
/// `/proc/locks` names it, else as the pid record says.
fn holder(root: &Root, dir: crate::read::engine::FileId) -> Option<String> {
    let recorded = read_small(&root.lock())
        .and_then(|text| crate::read::engine::parse_lock(&text))
        .map(|(pid, _)| pid);
    std::fs::read_to_string("/proc/locks")
        .ok()
        .and_then(|locks| crate::read::engine::flock_holder(&locks, dir, recorded))
        .or(recorded)
        .map(|pid| pid.to_string())
}

/// The text of a small regular file, read without following a link and
/// without blocking (a FIFO put in its place must not hang the engine).
fn read_small(path: &Path) -> Option<String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(256).read_to_string(&mut text).ok()?;
    Some(text)
}

/// What the engine wrote to `var/run/engine.lock`, to write it again
/// when it goes.
pub struct PidRecord {
    path: PathBuf,
    text: String,
    started: SystemTime,
    /// The file written last (device, inode).
    written: Option<(u64, u64)>,
    /// Whether a failure to write it was logged (said once, until it
    /// works again).
    complained: bool,
    /// Written once, into the locked file (see [`EngineLock::on_record`]).
    in_place: bool,
}

impl PidRecord {
    /// Writes the record of this engine (which holds `lock`).
    pub fn write(root: &Root, workers: usize, lock: &mut EngineLock) -> PidRecord {
        let mut record = PidRecord {
            path: root.lock(),
            text: format!("{}\nworkers {workers}\n", std::process::id()),
            started: SystemTime::now(),
            written: None,
            complained: false,
            in_place: lock.on_record,
        };
        if record.in_place {
            use std::io::{Seek, Write};
            let file: &mut File = &mut lock.lock;
            let put = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(record.text.as_bytes()));
            if let Err(e) = put {
                tracing::warn!("cannot write {}: {e}", record.path.display());
            }
        } else {
            record.put();
        }
        record
    }

    /// Writes the record again if it is gone or is not what was written
    /// (removed with `var/run/`, replaced by another file). Cheap when
    /// nothing changed: one `lstat`.
    pub fn keep(&mut self) {
        if self.in_place || self.intact() {
            return;
        }
        if self.written.is_some() {
            tracing::warn!(
                "{} was removed or replaced while the engine ran; writing it again (the engine holds its lock on the root directory, which a removal cannot take away)",
                self.path.display()
            );
        }
        self.put();
    }

    fn intact(&self) -> bool {
        let Ok(meta) = std::fs::symlink_metadata(&self.path) else {
            return false;
        };
        self.written == Some((meta.dev(), meta.ino()))
            && meta.is_file()
            && meta.len() == self.text.len() as u64
            && read_small(&self.path).as_deref() == Some(self.text.as_str())
    }

    /// Writes the text into a temporary beside the record, then renames it
    /// into place: a reader never sees half of it.
    fn put(&mut self) {
        match self.try_put() {
            Ok(ident) => {
                self.written = Some(ident);
                self.complained = false;
            }
            Err(e) => {
                self.written = None;
                if !self.complained {
                    self.complained = true;
                    tracing::warn!(
                        "cannot write the engine's pid record {}: {e}; the engine runs on (its lock is on the root directory) and tries again",
                        self.path.display()
                    );
                }
            }
        }
    }

    fn try_put(&self) -> io::Result<(u64, u64)> {
        use std::io::Write;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".engine.lock.")
            .suffix(".tmp")
            .tempfile_in(dir)?;
        tmp.write_all(self.text.as_bytes())?;
        // The record's modification time is the engine's start.
        tmp.as_file().set_modified(self.started)?;
        let meta = tmp.as_file().metadata()?;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_dir()) {
            // A directory put in its place: removed when empty (var/run/
            // is the engine's), else the record cannot be written.
            std::fs::remove_dir(&self.path)?;
        }
        tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok((meta.dev(), meta.ino()))
    }
}

impl super::Engine {
    /// Makes again what the engine keeps in `var/run/` when an operator
    /// removed it: the directory, `points/` (where taskers append their
    /// points), the pid record, the taskers registry and the replies
    /// journal (which the next start reads after a crash).
    pub(super) fn keep_var_run(&mut self) {
        let points = self.root.points_dir();
        if !points.is_dir() {
            match std::fs::create_dir_all(&points) {
                Ok(()) => tracing::warn!(
                    "{} was removed while the engine ran; made it again (points the running taskers write before they exit may be lost)",
                    points.display()
                ),
                Err(e) => tracing::warn!("cannot make {} again: {e}", points.display()),
            }
        }
        self.pid_record.keep();
        self.registry.keep();
        self.replies.keep(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::layout::temp_root as root;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_second_lock_names_the_first_pid_even_without_the_record() {
        let (_tmp, root) = root();
        let rt = rt();
        let mut first = rt.block_on(lock(&root)).unwrap();
        let _record = PidRecord::write(&root, 1, &mut first);
        let me = std::process::id().to_string();
        for damage in [
            |p: &Path| std::fs::remove_file(p).unwrap(),
            |p: &Path| std::fs::write(p, "garbage").unwrap(),
            |p: &Path| std::fs::remove_dir_all(p.parent().unwrap()).unwrap(),
        ] {
            damage(&root.lock());
            match rt.block_on(lock(&root)) {
                Err(RecoveryError::Locked { pid, .. }) => assert_eq!(pid, me),
                other => panic!("{:?}", other.err()),
            }
        }
        drop(first);
        rt.block_on(lock(&root)).unwrap();
    }

    #[test]
    fn the_record_is_written_again_when_it_goes() {
        let (_tmp, root) = root();
        let mut held = rt().block_on(lock(&root)).unwrap();
        let mut record = PidRecord::write(&root, 3, &mut held);
        let want = format!("{}\nworkers 3\n", std::process::id());
        assert_eq!(std::fs::read_to_string(root.lock()).unwrap(), want);
        let started = std::fs::metadata(root.lock()).unwrap().modified().unwrap();
        record.keep();
        std::fs::write(root.lock(), "junk").unwrap();
        record.keep();
        assert_eq!(std::fs::read_to_string(root.lock()).unwrap(), want);
        std::fs::remove_dir_all(root.dir().join("var/run")).unwrap();
        record.keep();
        assert_eq!(std::fs::read_to_string(root.lock()).unwrap(), want);
        std::fs::remove_file(root.lock()).unwrap();
        std::fs::create_dir(root.lock()).unwrap();
        record.keep();
        assert_eq!(std::fs::read_to_string(root.lock()).unwrap(), want);
        assert_eq!(
            std::fs::metadata(root.lock()).unwrap().modified().unwrap(),
            started,
            "the record keeps the engine's start"
        );
    }

    #[test]
    fn the_pid_of_a_lock_is_checked_for_life() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id().to_string();
        child.wait().unwrap();
        assert!(!pid_alive(&dead));
        assert!(pid_alive(&std::process::id().to_string()));
        // An unreadable pid is taken as alive: never wait on a guess.
        assert!(pid_alive("unknown"));
    }
}
