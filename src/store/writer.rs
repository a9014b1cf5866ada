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
//! `run/` is fsynced once for many ended tasks (see [`Spares`]), or when the
//! writer has been idle for [`SETTLE_IDLE`].
//!
//! A record is durable before its final point is logged and its `run/` file
//! goes, so a crash between them leaves a duplicate that start-up resolves
//! (SPEC 4: it adds the final point if it is missing and removes the `run/`
//! file), never a loss. A claimed copy is durable in `run/` before its
//! original leaves `in/`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::mpsc::UnboundedSender;

use crate::model::names::Exid;
use crate::scheduler::NodeKey;
use crate::store::spool::{self, SpoolError};

#[path = "writer_spares.rs"]
mod spares;
use spares::Spares;

/// How long a batch that begins with a final record waits for more to
/// commit with it (their directories' fsyncs are then shared). The writer
/// sleeps through it: records sent meanwhile do not wake it, one by one.
/// Anything else (a claim, a flow's progress, a rewrite, a rejection:
/// something waits on it) ends the wait at once, and a batch that begins
/// with one does not wait.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);
/// The most records committed in one batch.
const MAX_BATCH: usize = 1024;
/// How long the writer waits for a job before it makes the removals from
/// `run/` done so far durable (see [`Spares`]).
const SETTLE_IDLE: std::time::Duration = std::time::Duration::from_millis(100);
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
    /// overwritten) and the `run/` file gone.
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
    thread: Option<JoinHandle<()>>,
    /// Set with a job that ends a record's wait (see [`LINGER`]).
    urgent: Arc<AtomicBool>,
}

impl Writer {
    /// Starts the thread; results go to `results`. `spare_dir` (on the
    /// spool's filesystem) keeps files for reuse, which come from
    /// `run_dir`.
    pub fn start(
        results: UnboundedSender<Vec<Done>>,
        (spare_dir, run_dir): (PathBuf, PathBuf),
        probe: Option<Probe>,
    ) -> std::io::Result<Writer> {
        Self::start_with(results, (spare_dir, run_dir), probe, (LINGER, SETTLE_IDLE))
    }

    /// [`Writer::start`] with its waits: a record's [`LINGER`] and the
    /// [`SETTLE_IDLE`] before an idle writer fsyncs `run/`.
    fn start_with(
        results: UnboundedSender<Vec<Done>>,
        (spare_dir, run_dir): (PathBuf, PathBuf),
        probe: Option<Probe>,
        waits: (std::time::Duration, std::time::Duration),
    ) -> std::io::Result<Writer> {
        spool::fault::check()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let urgent = Arc::new(AtomicBool::new(false));
        let woken = Arc::clone(&urgent);
        let thread = std::thread::Builder::new()
            .name("spoolflow-writer".into())
            .spawn(move || {
                let spares = Spares::new(spare_dir, run_dir);
                run(rx, results, spares, probe, waits, &woken)
            })?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
            urgent,
        })
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

    /// Waits for the jobs sent so far to be done.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx.take();
        // A record's wait ends: nothing more comes.
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    rx: mpsc::Receiver<Job>,
    results: UnboundedSender<Vec<Done>>,
    mut spares: Spares,
    probe: Option<Probe>,
    (linger, settle_idle): (std::time::Duration, std::time::Duration),
    urgent: &AtomicBool,
) {
    loop {
        let first = match next_job(&rx, &mut spares, settle_idle) {
            Ok(Some(job)) => job,
            Ok(None) => break,
            Err(e) => {
                let _ = results.send(vec![Done::Fatal(e)]);
                return;
            }
        };
        let batch = gather(&rx, first, linger, urgent);
        let out = Batch::default().commit(batch, &mut spares, probe.as_ref());
        let fatal = out.iter().any(|c| matches!(c, Done::Fatal(_)));
        let _ = results.send(out);
        if fatal {
            return;
        }
    }
    // The engine stops: what left run/ is made durable before it exits (a
    // crash first would leave run/ files beside their records, which the
    // next start removes).
    if let Err(e) = spares.settle() {
        tracing::error!("{e}");
    }
}

/// The next job, or `None` once the engine dropped its sender. While
/// removals from `run/` wait for their fsync, a writer idle for
/// `settle_idle` makes them durable first.
fn next_job(
    rx: &mpsc::Receiver<Job>,
    spares: &mut Spares,
    settle_idle: std::time::Duration,
) -> Result<Option<Job>, SpoolError> {
    loop {
        if spares.is_settled() {
            return Ok(rx.recv().ok());
        }
        match rx.recv_timeout(settle_idle) {
            Ok(job) => return Ok(Some(job)),
            Err(mpsc::RecvTimeoutError::Timeout) => spares.settle()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
        }
    }
}

/// A batch: `first` and what is there after it, up to [`MAX_BATCH`].
/// When `first` is a final record, what is there is looked at once
/// `linger` has passed or `urgent` is set (see [`Writer::send`]).
fn gather(
    rx: &mpsc::Receiver<Job>,
    first: Job,
    linger: std::time::Duration,
    urgent: &AtomicBool,
) -> Vec<Job> {
    if matches!(first, Job::Record(_)) {
        nap(linger, urgent);
    }
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        let Ok(job) = rx.try_recv() else {
            break;
        };
        batch.push(job);
    }
    batch
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

/// A job whose first write is done, waiting for its directory's fsync.
enum Written {
    Record {
        job: RecordJob,
        already: bool,
    },
    Claim {
        exid: Exid,
        from: PathBuf,
        ident: Option<Ident>,
        to: PathBuf,
    },
    ClaimTaken {
        exid: Exid,
        from: PathBuf,
    },
    Rewrite {
        key: NodeKey,
        seq: u64,
        to: Option<PathBuf>,
    },
    Progress {
        exid: Exid,
        to: Option<PathBuf>,
        /// The journal to remove (after a snapshot).
        journal: Option<PathBuf>,
    },
    Reject {
        from: PathBuf,
        to: Option<PathBuf>,
        /// Whatever is at `from` now deserves a look (this job's file is
        /// gone from there); false when the rejection failed.
        retake: bool,
    },
}

/// One batch: the directories to fsync before anything may follow.
#[derive(Default)]
struct Batch {
    dirs: BTreeSet<PathBuf>,
}

impl Batch {
    fn commit(mut self, jobs: Vec<Job>, spares: &mut Spares, probe: Option<&Probe>) -> Vec<Done> {
        let mut written = Vec::with_capacity(jobs.len());
        for job in jobs {
            match self.write(job, spares) {
                Ok(w) => written.push(w),
                // An fsync failed, or the disk is full or a directory
                // unwritable: what was not done stays where it is (in in/
                // or run/) for the next start. The engine logs it.
                Err(e) => return vec![Done::Fatal(e)],
            }
        }
        for dir in &self.dirs {
            if let Err(e) = spool::fsync_dir(dir) {
                return vec![Done::Fatal(e)];
            }
        }
        if let Some(probe) = probe {
            for w in &written {
                if let Some(d) = w.durable() {
                    let _ = probe.send(d);
                }
            }
        }
        self.follow_up(written, spares)
    }

    /// The first, durable part of a job (its directory is fsynced later).
    fn write(&mut self, job: Job, spares: &mut Spares) -> Result<Written, SpoolError> {
        Ok(match job {
            Job::Record(job) => self.write_record(job, spares)?,
            Job::Claim {
                exid,
                from,
                ident,
                dir,
                name,
                bytes,
            } => match spool::write_atomic(&dir, &name, &bytes, true, false) {
                Ok(to) => {
                    self.dirs.insert(dir);
                    Written::Claim {
                        exid,
                        from,
                        ident,
                        to,
                    }
                }
                Err(SpoolError::Exists(_)) => Written::ClaimTaken { exid, from },
                // run/ is the engine's: failing to write there is the disk
                // failing. The original stays in in/ for the next start.
                Err(e) => return Err(e),
            },
            Job::Rewrite {
                key,
                seq,
                dir,
                name,
                bytes,
            } => {
                // Going on from the payload in memory would let a restart
                // resume from the one before: stop; the run/ file holds the
                // last durable payload, and the next start goes on from it.
                let to = self.replace(dir, &name, &bytes)?;
                Written::Rewrite {
                    key,
                    seq,
                    to: Some(to),
                }
            }
            Job::Progress {
                exid,
                dir,
                name,
                bytes,
                journal,
            } => {
                // Like a rewrite: the flow's progress on disk stays the last
                // durable one (snapshot and journal), and the next start
                // goes on from it.
                let to = self.replace(dir, &name, &bytes)?;
                Written::Progress {
                    exid,
                    to: Some(to),
                    journal: Some(journal),
                }
            }
            Job::Journal { exid, path, bytes } => {
                // A failed append may leave a torn last line, which the next
                // start skips (see `flow::journal`).
                let created = spool::append_durable(&path, &bytes)?;
                if let (true, Some(dir)) = (created, path.parent()) {
                    self.dirs.insert(dir.to_path_buf());
                }
                Written::Progress {
                    exid,
                    to: Some(path),
                    journal: None,
                }
            }
            Job::Reject {
                path,
                ident,
                rejected,
                reason,
            } => self.write_reject(path, ident, rejected, reason)?,
        })
    }

    /// Replaces `dir/name` with `bytes` atomically (its directory synced
    /// with the batch).
    fn replace(&mut self, dir: PathBuf, name: &str, bytes: &[u8]) -> Result<PathBuf, SpoolError> {
        let to = spool::write_atomic(&dir, name, bytes, false, false)?;
        self.dirs.insert(dir);
        Ok(to)
    }

    /// A final record, into a spare when there is one; a record already
    /// there is never overwritten.
    fn write_record(&mut self, job: RecordJob, spares: &mut Spares) -> Result<Written, SpoolError> {
        match spares.write(&job) {
            Ok(_) => {
                self.dirs.insert(job.dir.clone());
                Ok(Written::Record {
                    job,
                    already: false,
                })
            }
            Err(SpoolError::Exists(path)) => {
                tracing::warn!(
                    "{} exists already; a final record is never overwritten",
                    path.display()
                );
                // That record may not be durable yet (written by an engine
                // that died): its directory is fsynced with the batch,
                // before the run/ file goes.
                self.dirs.insert(job.dir.clone());
                Ok(Written::Record { job, already: true })
            }
            Err(e) => Err(e),
        }
    }

    /// Moves a bad input into `rejected/` with its reason, unless it
    /// changed since it was read.
    fn write_reject(
        &mut self,
        path: PathBuf,
        ident: Option<Ident>,
        rejected: PathBuf,
        reason: String,
    ) -> Result<Written, SpoolError> {
        if !still(&path, ident) {
            return Ok(Written::Reject {
                from: path,
                to: None,
                retake: true,
            });
        }
        Ok(match spool::reject(&path, &rejected, &reason, false) {
            Ok(to) => {
                tracing::info!("rejected {}: {reason}", path.display());
                self.dirs.insert(rejected);
                Written::Reject {
                    from: path,
                    to: Some(to),
                    retake: true,
                }
            }
            // Gone meanwhile (taken by its writer, or rejected by an
            // earlier job): nothing to do.
            Err(e) if e.is_not_found() => Written::Reject {
                from: path,
                to: None,
                retake: true,
            },
            // The disk failed, or the reason could not be written into
            // rejected/ (the engine's own directory): stop, logged once
            // then. The input is still in in/ (the reason is written
            // before the input is moved).
            Err(e) if e.is_fatal() || matches!(e, SpoolError::Write { .. }) => return Err(e),
            // Moving this one entry was refused (an input someone else
            // owns in a sticky in/, say): it stays (its reason was taken
            // back), and the engine goes on. Said once, here.
            Err(e) => {
                tracing::error!("cannot reject {}: {e}", path.display());
                Written::Reject {
                    from: path,
                    to: None,
                    retake: false,
                }
            }
        })
    }

    /// What follows once the writes are durable.
    fn follow_up(self, written: Vec<Written>, spares: &mut Spares) -> Vec<Done> {
        let mut out = Vec::with_capacity(written.len());
        // A flow's journal leaves run/ durably with its run/ file, as it
        // always did: fsynced in this batch.
        let mut settle_now = false;
        for w in written {
            out.push(match w {
                Written::Record { job, already } => {
                    if !already {
                        if let Err(e) = append_final_point(&job) {
                            if e.is_fatal() {
                                // The run/ file stays: the next start adds
                                // the final point the record has.
                                return vec![Done::Fatal(e)];
                            }
                            tracing::error!("{e}");
                        }
                    }
                    spares.give(&job.run_file);
                    if let Some(journal) = &job.journal {
                        remove_if_there(journal);
                        settle_now = true;
                    }
                    Done::Record {
                        key: job.key,
                        already,
                    }
                }
                Written::Claim {
                    exid, from, ident, ..
                } => {
                    // A new file put at that path since is not this task's.
                    if let Err(e) = spool::remove_if_same(&from, ident, || {}) {
                        tracing::error!("cannot remove {}: {e}", from.display());
                    }
                    Done::Claimed { exid, from }
                }
                Written::ClaimTaken { exid, from } => Done::ClaimTaken { exid, from },
                Written::Rewrite { key, seq, .. } => Done::Rewritten(key, seq),
                Written::Progress { exid, journal, .. } => {
                    // The snapshot holds the journal's deltas; should the
                    // removal not be durable at a crash, the next start
                    // skips them by their sequence numbers.
                    if let Some(journal) = journal {
                        remove_if_there(&journal);
                    }
                    Done::Progress { exid }
                }
                Written::Reject { from, retake, .. } => Done::Rejected { path: from, retake },
            });
        }
        if settle_now || spares.must_settle() {
            if let Err(e) = spares.settle() {
                return vec![Done::Fatal(e)];
            }
        }
        out
    }
}

/// Appends a record's final point to its points log. A disk failure
/// (`SpoolError::is_fatal`) stops the engine; anything else (a log an
/// operator or a tasker replaced) is logged, the record standing.
fn append_final_point(job: &RecordJob) -> Result<(), SpoolError> {
    spool::fault::inject(spool::Op::Write, &job.points_log, None)
        .and_then(|()| crate::store::points::append_line(&job.points_log, &job.final_point))
        .map_err(|source| SpoolError::Write {
            path: job.points_log.clone(),
            source,
        })
}

/// Removes a file; one already gone is fine.
fn remove_if_there(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::error!("cannot remove {}: {e}", path.display());
        }
    }
}

impl Written {
    fn durable(&self) -> Option<Durable> {
        let (kind, path) = match self {
            Written::Record {
                job,
                already: false,
            } => (JobKind::Record, job.dir.join(&job.name)),
            Written::Claim { to, .. } => (JobKind::Claim, to.clone()),
            Written::Rewrite { to: Some(to), .. } | Written::Progress { to: Some(to), .. } => {
                (JobKind::Rewrite, to.clone())
            }
            Written::Reject { to: Some(to), .. } => (JobKind::Reject, to.clone()),
            _ => return None,
        };
        Some(Durable { kind, path })
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod writer_tests;
