//! The committer: a dedicated thread that makes final records durable off
//! the event loop, with group commit. For each batch of records that ended
//! together it writes every record (temporary, fsync, no-replace rename),
//! fsyncs each record directory once, appends each task's final point,
//! then moves the tasks' `run/` files out of the way (recycled, see
//! [`Spares`]) and fsyncs `run/` once, and reports back to the engine.
//!
//! A record is durable before its final point is logged and its `run/` file
//! goes, so a crash between them leaves a duplicate that start-up resolves
//! (SPEC 4: it adds the final point if it is missing and removes the `run/`
//! file), never a loss.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::mpsc::UnboundedSender;

use crate::scheduler::NodeKey;
use crate::store::spool::{self, SpoolError};

/// The most records committed in one batch.
const MAX_BATCH: usize = 1024;
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
struct Spares {
    dir: PathBuf,
    free: Vec<PathBuf>,
    next: u64,
}

impl Spares {
    fn new(dir: PathBuf) -> Spares {
        let _ = std::fs::create_dir_all(&dir);
        let mut free = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if free.len() < MAX_SPARES && Self::reusable(&e.path()) {
                    free.push(e.path());
                } else {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Spares { dir, free, next: 0 }
    }

    fn reusable(path: &std::path::Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path).is_ok_and(|m| {
            m.is_file() && m.nlink() == 1 && m.uid() == nix::unistd::geteuid().as_raw()
        })
    }

    /// Takes the `run/` file of an ended task: kept as a spare, or removed.
    fn give(&mut self, run_file: &std::path::Path) {
        if self.free.len() < MAX_SPARES && Self::reusable(run_file) {
            loop {
                self.next += 1;
                let spare = self
                    .dir
                    .join(format!("{}-{}", std::process::id(), self.next));
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
    fn write(&mut self, job: &CommitJob) -> Result<PathBuf, SpoolError> {
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

/// One final record to commit.
#[derive(Debug)]
pub struct CommitJob {
    pub key: NodeKey,
    /// `done/` or `failed/`.
    pub dir: PathBuf,
    /// `<id>.json`.
    pub name: String,
    pub bytes: Vec<u8>,
    /// The execution's points log, and the final point to append to it
    /// once the record is durable (before the `run/` file goes, so that a
    /// start-up that finds the `run/` file can add a point that is missing).
    pub points_log: PathBuf,
    pub final_point: Vec<u8>,
    /// The `run/` file to remove once the record is durable.
    pub run_file: PathBuf,
}

/// What became of a job.
#[derive(Debug)]
pub enum Committed {
    /// The record is durable and the `run/` file gone.
    Done(NodeKey),
    /// A record was already there (it is never overwritten); the `run/`
    /// file was removed all the same.
    AlreadyFinal(NodeKey),
    /// The disk failed: the engine must stop.
    Fatal(SpoolError),
}

/// The handle of the committer thread; dropping it lets the thread finish
/// the jobs already sent, then end.
pub struct Committer {
    tx: Option<mpsc::Sender<CommitJob>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the thread; results go to `results`. `spare_dir` (on the
    /// spool's filesystem) keeps files for reuse.
    pub fn start(results: UnboundedSender<Vec<Committed>>, spare_dir: PathBuf) -> Committer {
        let (tx, rx) = mpsc::channel::<CommitJob>();
        let thread = std::thread::Builder::new()
            .name("spoolflow-commit".into())
            .spawn(move || run(rx, results, Spares::new(spare_dir)))
            .expect("the committer thread can be spawned at start-up");
        Committer {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Queues a record.
    pub fn send(&self, job: CommitJob) {
        if let Some(tx) = &self.tx {
            // The thread only ends when this sender is dropped.
            let _ = tx.send(job);
        }
    }

    /// Waits for the jobs sent so far to be committed.
    pub fn finish(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    rx: mpsc::Receiver<CommitJob>,
    results: UnboundedSender<Vec<Committed>>,
    mut spares: Spares,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let out = commit_batch(batch, &mut spares);
        let fatal = out.iter().any(|c| matches!(c, Committed::Fatal(_)));
        let _ = results.send(out);
        if fatal {
            return;
        }
    }
}

fn commit_batch(batch: Vec<CommitJob>, spares: &mut Spares) -> Vec<Committed> {
    let mut out = Vec::with_capacity(batch.len());
    let mut record_dirs = BTreeSet::new();
    let mut written = Vec::with_capacity(batch.len());
    for job in batch {
        match spares.write(&job) {
            Ok(_) => {
                record_dirs.insert(job.dir.clone());
                written.push((job, false));
            }
            Err(SpoolError::Exists(path)) => {
                tracing::warn!(
                    "{} exists already; a final record is never overwritten",
                    path.display()
                );
                written.push((job, true));
            }
            Err(e) if e.is_fatal() => return vec![Committed::Fatal(e)],
            Err(e) => {
                // Not an fsync: the disk is full or the directory unwritable.
                // The task stays in run/ and is recovered at the next start.
                tracing::error!("{e}");
                return vec![Committed::Fatal(e)];
            }
        }
    }
    for dir in &record_dirs {
        if let Err(e) = spool::fsync_dir(dir) {
            return vec![Committed::Fatal(e)];
        }
    }
    for (job, already) in &written {
        if !already {
            if let Err(e) = crate::store::points::append_line(&job.points_log, &job.final_point) {
                tracing::error!("cannot append to {}: {e}", job.points_log.display());
            }
        }
    }
    let mut run_dirs = BTreeSet::new();
    for (job, already) in written {
        spares.give(&job.run_file);
        if let Some(parent) = job.run_file.parent() {
            run_dirs.insert(parent.to_path_buf());
        }
        out.push(if already {
            Committed::AlreadyFinal(job.key)
        } else {
            Committed::Done(job.key)
        });
    }
    for dir in &run_dirs {
        if let Err(e) = spool::fsync_dir(dir) {
            return vec![Committed::Fatal(e)];
        }
    }
    out
}
