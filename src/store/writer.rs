//! The durable writer: the one thread that makes the engine's writes
//! durable, off the event loop, with group commit. Every fsync the engine
//! needs goes through it: final records, claims of task files that do not
//! name their domain, rewrites of `run/` files (after `uncompleted`), and
//! rejections.
//!
//! For each batch of jobs that arrived together (one that begins with a
//! final record waits [`LINGER`] for others) it writes every file
//! (temporary, fsync, rename), fsyncs each directory touched once, then
//! does what may follow only once the writes are durable (append the final
//! points, move the ended tasks' `run/` files out of the way — recycled, see
//! [`Spares`] —, remove claimed originals), and reports back to the engine.
//! `run/` is fsynced once for many ended tasks (see [`Spares`]), sooner when
//! the writer has been idle for [`SETTLE_IDLE`], and when it ends.
//!
//! A record is durable before its final point is logged and its `run/` file
//! goes, so a crash between them leaves a duplicate that start-up resolves
//! (SPEC 4: it adds the final point if it is missing and removes the `run/`
//! file), never a loss. A claimed copy is durable in `run/` before its
//! original leaves `in/`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::mpsc::UnboundedSender;

use crate::model::names::Exid;
use crate::scheduler::NodeKey;
use crate::store::spool::{self, SpoolError};

#[path = "writer_batch.rs"]
mod batch;
#[path = "writer_spares.rs"]
mod spares;
use batch::Batch;
use spares::Spares;

/// How long a batch that begins with a final record waits for more to
/// commit with it (their directories' fsyncs and the writer's wake-ups are
/// then shared). The writer sleeps through it: records sent meanwhile do
/// not wake it, one by one. A record sent with nothing else that may end
/// soon ([`Writer::send_record`]) ends the wait at once, and so does
/// anything else (a claim, a flow's progress, a rewrite, a rejection:
/// something waits on it); a batch that begins with one of those does not
/// wait. On ext4, 10 ms rather than 1 took about 100 µs of the writer's
/// CPU off each task (README, Speed, eighth session).
const LINGER: std::time::Duration = std::time::Duration::from_millis(10);
/// The most records committed in one batch.
const MAX_BATCH: usize = 1024;
/// How long the writer waits for a job before it makes the removals from
/// `run/` done so far durable (see [`Spares`]).
const SETTLE_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// The writer's recycled files: where they are kept (`.spare/`) and the
/// directory they come from (`run/`).
pub struct SpareDirs {
    pub spares: PathBuf,
    pub run: PathBuf,
}

/// How long the writer waits: a record for company ([`LINGER`]), an idle
/// writer before it fsyncs `run/` ([`SETTLE_IDLE`]), and the first file to
/// leave `run/` for that fsync at most ([`spares::SETTLE_WITHIN`]).
#[derive(Debug, Clone, Copy)]
struct Waits {
    linger: std::time::Duration,
    settle_idle: std::time::Duration,
    settle_within: std::time::Duration,
}

/// Why the writer's end was not clean.
#[derive(Debug, thiserror::Error)]
pub enum WriterEnd {
    /// Its last fsync of `run/` failed.
    #[error(transparent)]
    Disk(#[from] SpoolError),
    /// Its thread panicked (the panic was printed).
    #[error("the durable writer's thread panicked")]
    Panicked,
}

/// One final record to commit.
#[derive(Debug)]
pub struct RecordJob {
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
    /// A flow's journal, removed with its `run/` file.
    pub journal: Option<PathBuf>,
}

/// A job for the durable writer.
#[derive(Debug)]
pub enum Job {
    /// A final record (see [`RecordJob`]).
    Record(RecordJob),
    /// A task file that does not name its domain: `bytes` (the completed
    /// task) become `run/<name>` (never replacing a file), then the
    /// original `from` is removed.
    Claim {
        exid: Exid,
        from: PathBuf,
        /// What `from` was when it was read: it is removed only if it is
        /// still that file (a writer may have put a new one there since).
        ident: Option<Ident>,
        dir: PathBuf,
        name: String,
        bytes: Vec<u8>,
    },
    /// A `run/` file rewritten in place (atomically) with `bytes`; `seq`
    /// numbers the engine's rewrites (see [`Done::Rewritten`]).
    Rewrite {
        key: NodeKey,
        seq: u64,
        dir: PathBuf,
        name: String,
        bytes: Vec<u8>,
    },
    /// A flow's `run/` file rewritten in place (atomically) with its
    /// whole progress; its journal, which that progress holds, is removed
    /// once it is durable.
    Progress {
        exid: Exid,
        dir: PathBuf,
        name: String,
        bytes: Vec<u8>,
        journal: PathBuf,
    },
    /// A line appended to a flow's journal (see `flow::journal`).
    Journal {
        exid: Exid,
        path: PathBuf,
        bytes: Vec<u8>,
    },
    /// Input moved to `rejected/` beside a `.reason` file, if it is still
    /// the file `ident` names.
    Reject {
        path: PathBuf,
        ident: Option<Ident>,
        rejected: PathBuf,
        reason: String,
    },
}

/// Which file a path named when it was examined: device and inode.
pub type Ident = (u64, u64);

/// The [`Ident`] of the entry at `path` (a symlink itself, not its target).
pub fn ident_of(path: &std::path::Path) -> Option<Ident> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Whether `path` still names the file `ident` (always, without one).
fn still(path: &std::path::Path, ident: Option<Ident>) -> bool {
    ident.is_none_or(|i| ident_of(path) == Some(i))
}

/// What the writer did, as the test seam [`Probe`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Record,
    Claim,
    Rewrite,
    Reject,
}

/// A job made durable: its kind and the path it made durable (the record,
/// the claimed or rewritten `run/` file, the rejected file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durable {
    pub kind: JobKind,
    pub path: PathBuf,
}

/// Receives a [`Durable`] for each job once its directory is fsynced: a
/// seam for tests (and metrics), unset in production.
pub type Probe = mpsc::Sender<Durable>;

/// What became of a job.
#[derive(Debug)]
pub enum Done {
    /// The record is durable (`already`: one was there before and is never
    /// overwritten) and the `run/` file gone (durably so a moment later, see
    /// [`Spares`]).
    Record { key: NodeKey, already: bool },
    /// The claimed task is durable in `run/`, its original `from` removed.
    Claimed { exid: Exid, from: PathBuf },
    /// `run/<name>` existed already: nothing was written and the original
    /// is still in `in/` (the engine rejects it as a duplicate).
    ClaimTaken { exid: Exid, from: PathBuf },
    /// The rewrite numbered `seq` of a node's `run/` file is durable, and
    /// so is every rewrite sent before it (jobs are done in order).
    Rewritten(NodeKey, u64),
    /// A flow's progress is durable in its `run/` file or journal.
    Progress { exid: Exid },
    /// The input is in `rejected/`, or was gone or replaced already
    /// (`retake`: what is at `path` now is new), or could not be moved.
    Rejected { path: PathBuf, retake: bool },
    /// The disk failed: the engine must stop. What the failed job and
    /// the rest of its batch did not finish stays where it was (in `in/` or
    /// `run/`) for the next start; the writer takes no more jobs.
    Fatal(SpoolError),
}

/// The handle of the writer thread; dropping it lets the thread finish
/// the jobs already sent, then end.
pub struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    /// Ends with the last fsync of `run/` (see [`Writer::finish`]).
    thread: Option<JoinHandle<Result<(), SpoolError>>>,
    /// Set with a job that ends a record's wait (see [`LINGER`]).
    urgent: Arc<AtomicBool>,
}

impl Writer {
    /// Starts the thread; results go to `results`. `dirs.spares` (on the
    /// spool's filesystem) keeps files for reuse.
    pub fn start(
        results: UnboundedSender<Vec<Done>>,
        dirs: SpareDirs,
        probe: Option<Probe>,
    ) -> std::io::Result<Writer> {
        let waits = Waits {
            linger: LINGER,
            settle_idle: SETTLE_IDLE,
            settle_within: spares::SETTLE_WITHIN,
        };
        Self::start_with(results, dirs, probe, waits)
    }

    fn start_with(
        results: UnboundedSender<Vec<Done>>,
        dirs: SpareDirs,
        probe: Option<Probe>,
        waits: Waits,
    ) -> std::io::Result<Writer> {
        spool::fault::check()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let urgent = Arc::new(AtomicBool::new(false));
        let woken = Arc::clone(&urgent);
        let thread = std::thread::Builder::new()
            .name("spoolflow-writer".into())
            .spawn(move || {
                let spares = Spares::new(dirs.spares, dirs.run, waits.settle_within);
                run(rx, results, spares, probe, waits, &woken)
            })?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
            urgent,
        })
    }

    /// Queues a final record. With `company_may_come` (other tasks run or
    /// wait, and may end within [`LINGER`]) it may wait for them; without,
    /// it ends the wait at once: a record alone is not held back for
    /// nothing.
    pub fn send_record(&self, job: RecordJob, company_may_come: bool) {
        self.send(Job::Record(job));
        if !company_may_come {
            self.wake();
        }
    }

    /// Queues a job. Anything but a final record wakes the thread from a
    /// record's wait.
    pub fn send(&self, job: Job) {
        let record = matches!(job, Job::Record(_));
        if let Some(tx) = &self.tx {
            // The thread only ends when this sender is dropped.
            let _ = tx.send(job);
        }
        if !record {
            self.wake();
        }
    }

    fn wake(&self) {
        self.urgent.store(true, Ordering::Release);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// Waits for the jobs sent so far to be done; an error is that of the
    /// last fsync of `run/`, made as the writer ends, or a panic.
    pub fn finish(mut self) -> Result<(), WriterEnd> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), WriterEnd> {
        self.tx.take();
        // A record's wait ends: nothing more comes.
        self.wake();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(ended)) => ended.map_err(WriterEnd::Disk),
            Some(Err(_)) => Err(WriterEnd::Panicked),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn run(
    rx: mpsc::Receiver<Job>,
    results: UnboundedSender<Vec<Done>>,
    mut spares: Spares,
    probe: Option<Probe>,
    waits: Waits,
    urgent: &AtomicBool,
) -> Result<(), SpoolError> {
    loop {
        let first = match next_job(&rx, &mut spares, waits.settle_idle) {
            Ok(Some(job)) => job,
            Ok(None) => break,
            Err(e) => {
                let _ = results.send(vec![Done::Fatal(e)]);
                return Ok(());
            }
        };
        let batch = gather(&rx, first, waits.linger, urgent);
        let out = Batch::default().commit(batch, &mut spares, probe.as_ref());
        let fatal = out.iter().any(|c| matches!(c, Done::Fatal(_)));
        let _ = results.send(out);
        if fatal {
            return Ok(());
        }
    }
    // The engine stops: what left run/ is made durable before it exits,
    // and a failure is its exit's (a crash first would leave run/ files
    // beside their records, which the next start removes).
    spares.settle()
}

/// The next job, or `None` once the engine dropped its sender. While
/// removals from `run/` wait for their fsync, a writer idle for
/// `settle_idle` (or until they are due) makes them durable first.
fn next_job(
    rx: &mpsc::Receiver<Job>,
    spares: &mut Spares,
    settle_idle: std::time::Duration,
) -> Result<Option<Job>, SpoolError> {
    loop {
        let Some(due) = spares.due() else {
            return Ok(rx.recv().ok());
        };
        let wait = settle_idle.min(due.saturating_duration_since(std::time::Instant::now()));
        match rx.recv_timeout(wait) {
            Ok(job) => return Ok(Some(job)),
            Err(mpsc::RecvTimeoutError::Timeout) => spares.settle()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
        }
    }
}

/// A batch: `first` and what is there after it, up to [`MAX_BATCH`].
/// When `first` is a final record and the batch is not full with what is
/// there already (a backlog is written without waiting), what comes is
/// looked at again once `linger` has passed or `urgent` is set (see
/// [`Writer::send`]).
fn gather(
    rx: &mpsc::Receiver<Job>,
    first: Job,
    linger: std::time::Duration,
    urgent: &AtomicBool,
) -> Vec<Job> {
    let waits = matches!(first, Job::Record(_));
    let mut batch = vec![first];
    take_waiting(rx, &mut batch);
    if waits && batch.len() < MAX_BATCH {
        nap(linger, urgent);
        take_waiting(rx, &mut batch);
    }
    batch
}

/// Adds the jobs already sent to `batch`, up to [`MAX_BATCH`].
fn take_waiting(rx: &mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        let Ok(job) = rx.try_recv() else {
            break;
        };
        batch.push(job);
    }
}

/// Sleeps `linger`, or less once `urgent` is set (which it clears). A
/// flag left from a job already taken ends one wait early: that batch
/// only shares less.
fn nap(linger: std::time::Duration, urgent: &AtomicBool) {
    let until = std::time::Instant::now() + linger;
    while !urgent.swap(false, Ordering::AcqRel) {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::park_timeout(left);
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod writer_tests;
