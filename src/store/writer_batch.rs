//! One batch of the writer's jobs: each file written (temporary, fsync,
//! rename), each directory touched fsynced once, then what may follow only
//! durable writes (final points, `run/` files recycled, originals removed).

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::spares::Spares;
use super::{still, Done, Durable, Ident, Job, JobKind, Probe, RecordJob};
use crate::model::names::Exid;
use crate::scheduler::NodeKey;
use crate::store::spool::{self, SpoolError};

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
pub(super) struct Batch {
    dirs: BTreeSet<PathBuf>,
}

impl Batch {
    pub(super) fn commit(
        mut self,
        jobs: Vec<Job>,
        spares: &mut Spares,
        probe: Option<&Probe>,
    ) -> Vec<Done> {
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
        // A claim, rewrite or flow's progress fsynced run/: the files that
        // left it before this batch are durably gone with it.
        spares.fsynced(&self.dirs);
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
        // A flow's journal leaves run/ durably with its run/ file, in this
        // batch: a flow ends far less often than its task nodes, and its
        // files need not stay behind its record at all.
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
        if settle_now || spares.must_settle(std::time::Instant::now()) {
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
