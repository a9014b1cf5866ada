//! The writer's recycled files: ended tasks' `run/` files kept in
//! `var/spool/.spare/` and written over by the next records, once their
//! removal from `run/` is durable.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::RecordJob;
use crate::store::spool::{self, SpoolError};

/// The most spare files kept for reuse.
const MAX_SPARES: usize = 1024;

/// How many files may leave `run/` (kept or removed) before the writer
/// fsyncs it. Until then they are not written over; a record that finds
/// no settled spare is written into a new file, so the pool grows to about
/// twice this.
pub(super) const SETTLE_AT: usize = 32;
/// How long the first of them may wait for that fsync, however busy the
/// writer (see also the writer's idle wait).
pub(super) const SETTLE_WITHIN: Duration = Duration::from_secs(1);

/// Recycled files. A task's `run/` file is not unlinked when its record is
/// durable: it is moved into `var/spool/.spare/`, and a later record is
/// written into it (rewritten, fsynced, renamed into `done/` or `failed/`).
/// On ext4 allocating an inode — worse, right after others were freed — is
/// the largest cost of a record; recycling allocates and frees none. A
/// file is recycled only when this engine's user owns it and it has no
/// other link (a user who dropped a task file and kept a hard link to it
/// must not be able to read or change a later record through it).
///
/// A spare is written over only once its move out of `run/` is durable
/// (*settled*): were the machine to die first, `run/` could name a file
/// that holds another task's record. The moves are made durable together,
/// one fsync of `run/` for [`SETTLE_AT`] of them, within [`SETTLE_WITHIN`]
/// of the first (sooner when the writer has nothing else to do, or when a
/// batch fsynced `run/` for its own writes), instead of one per batch:
/// SPEC 4 lets a `run/` file outlive its durable record, and start-up
/// removes it. (`retry` and `gc`, which take a task missing from `run/`
/// for ended, fsync `run/` themselves first.)
pub(super) struct Spares {
    dir: PathBuf,
    /// Settled: free to be written over.
    free: Vec<PathBuf>,
    /// Moved here since `run/` was last fsynced.
    unsettled: Vec<PathBuf>,
    /// The directories whose removals are not durable yet.
    dirty: BTreeSet<PathBuf>,
    /// Files that left `run/` since its last fsync (kept or removed), and
    /// when the first of them must be durable: `within` after it left.
    given: usize,
    due: Option<Instant>,
    within: Duration,
    next: u64,
    /// The engine's user (a spare is a file it owns) and pid (names of
    /// spares), asked once.
    uid: u32,
    pid: u32,
}

impl Spares {
    /// The spares in `dir`, found from an earlier run, are settled only
    /// after `origin` (the directory they came from) is fsynced: that run
    /// may have been killed before it did. A file that leaves `run/` is
    /// to be durably gone `within` (see [`SETTLE_WITHIN`]).
    pub(super) fn new(dir: PathBuf, origin: PathBuf, within: Duration) -> Spares {
        let _ = std::fs::create_dir_all(&dir);
        let uid = nix::unistd::geteuid().as_raw();
        let mut unsettled = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if unsettled.len() < MAX_SPARES && Self::reusable(&e.path(), uid) {
                    unsettled.push(e.path());
                } else {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let (dirty, due) = if unsettled.is_empty() {
            (BTreeSet::new(), None)
        } else {
            (BTreeSet::from([origin]), Some(Instant::now()))
        };
        Spares {
            dir,
            free: Vec::new(),
            given: unsettled.len(),
            unsettled,
            dirty,
            due,
            within,
            next: 0,
            uid,
            pid: std::process::id(),
        }
    }

    fn reusable(path: &Path, uid: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.is_file() && m.nlink() == 1 && m.uid() == uid)
    }

    /// Takes the `run/` file of an ended task: kept as a spare, or removed.
    /// Either way its directory is fsynced by a later [`Spares::settle`].
    pub(super) fn give(&mut self, run_file: &Path) {
        if let Some(parent) = run_file.parent() {
            self.dirty.insert(parent.to_path_buf());
        }
        self.given += 1;
        let within = self.within;
        self.due.get_or_insert_with(|| Instant::now() + within);
        let kept = self.free.len() + self.unsettled.len();
        if kept < MAX_SPARES && Self::reusable(run_file, self.uid) {
            loop {
                self.next += 1;
                let spare = self.dir.join(format!("{}-{}", self.pid, self.next));
                match spool::rename_no_replace(run_file, &spare) {
                    Ok(()) => return self.unsettled.push(spare),
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

    /// Whether `run/` is to be fsynced now: enough files left it since its
    /// last fsync, or the first of them has waited long enough.
    pub(super) fn must_settle(&self, now: Instant) -> bool {
        self.given >= SETTLE_AT || self.due.is_some_and(|due| due <= now)
    }

    /// When `run/` is to be fsynced at the latest, if anything waits for it.
    pub(super) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Makes the removals given so far durable (one fsync per directory);
    /// their files may then be written over.
    pub(super) fn settle(&mut self) -> Result<(), SpoolError> {
        while let Some(dir) = self.dirty.first() {
            spool::fsync_dir(dir)?;
            self.dirty.pop_first();
        }
        self.mark_settled();
        Ok(())
    }

    fn mark_settled(&mut self) {
        self.free.append(&mut self.unsettled);
        self.given = 0;
        self.due = None;
    }

    /// `dirs` were fsynced (for other writes): when they hold every
    /// directory a removal waits for, the files given so far are settled
    /// without an fsync of their own.
    pub(super) fn fsynced(&mut self, dirs: &BTreeSet<PathBuf>) {
        if self.due.is_some() && self.dirty.is_subset(dirs) {
            self.dirty.clear();
            self.mark_settled();
        }
    }

    /// Writes a record, into a settled spare when there is one.
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
