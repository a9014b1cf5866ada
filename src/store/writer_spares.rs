//! The writer's recycled files: ended tasks' `run/` files kept in
//! `var/spool/.spare/` and written over by the next records.

use std::path::PathBuf;

use super::RecordJob;
use crate::store::spool::{self, SpoolError};

/// The most spare files kept for reuse.
const MAX_SPARES: usize = 1024;

/// Recycled files. A task's `run/` file is not unlinked when its record is
/// durable: it is moved into `var/spool/.spare/`, and the next record is written
/// into it (truncated, rewritten, fsynced, renamed into `done/` or
/// `failed/`). On ext4 allocating an inode — worse, right after others were
/// freed — is the largest cost of a record; recycling allocates and frees
/// none. A file is recycled only when this engine's user owns it and it has
/// no other link (a user who dropped a task file and kept a hard link to it
/// must not be able to read or change a later record through it).
pub(super) struct Spares {
    dir: PathBuf,
    free: Vec<PathBuf>,
    next: u64,
    /// The engine's user (a spare is a file it owns) and pid (names of
    /// spares), asked once.
    uid: u32,
    pid: u32,
}

impl Spares {
    pub(super) fn new(dir: PathBuf) -> Spares {
        let _ = std::fs::create_dir_all(&dir);
        let uid = nix::unistd::geteuid().as_raw();
        let mut free = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if free.len() < MAX_SPARES && Self::reusable(&e.path(), uid) {
                    free.push(e.path());
                } else {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Spares {
            dir,
            free,
            next: 0,
            uid,
            pid: std::process::id(),
        }
    }

    fn reusable(path: &std::path::Path, uid: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.is_file() && m.nlink() == 1 && m.uid() == uid)
    }

    /// Takes the `run/` file of an ended task: kept as a spare, or removed.
    pub(super) fn give(&mut self, run_file: &std::path::Path) {
        if self.free.len() < MAX_SPARES && Self::reusable(run_file, self.uid) {
            loop {
                self.next += 1;
                let spare = self.dir.join(format!("{}-{}", self.pid, self.next));
                match spool::rename_no_replace(run_file, &spare) {
                    Ok(()) => return self.free.push(spare),
                    Err(SpoolError::Exists(_)) => continue,
                    Err(_) => break,
                }
            }
        }
        match std::fs::remove_file(run_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!("cannot remove {}: {e}", run_file.display()),
        }
    }

    /// Writes a record, into a spare when there is one.
    pub(super) fn write(&mut self, job: &RecordJob) -> Result<PathBuf, SpoolError> {
        if let Some(spare) = self.free.pop() {
            match spool::write_recycled(&spare, &job.dir, &job.name, &job.bytes) {
                Ok(p) => return Ok(p),
                Err(SpoolError::Exists(p)) => {
                    self.free.push(spare);
                    return Err(SpoolError::Exists(p));
                }
                Err(e) if e.is_fatal() => return Err(e),
                // The spare is unusable; write a new file instead.
                Err(_) => {
                    let _ = std::fs::remove_file(&spare);
                }
            }
        }
        spool::write_atomic(&job.dir, &job.name, &job.bytes, true, false)
    }
}
