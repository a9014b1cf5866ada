//! Submitting a run's job (SPEC 14): its files written under
//! `var/slurm/<exid>.<nid>.<attempt>.<offer>/`, `sbatch --parsable`, and
//! the job id made durable before the engine hears of it. A refusal fails
//! the task `config` with Slurm's words. Two refusals are waited for
//! instead, at the cost the contract allows (never a process per job and
//! poll): an unreachable controller (whether the job exists after all is
//! asked through the one poller's query), and a cluster at its submit
//! limit (one waiting submission tries again at a time, 5 s after the
//! last refusal; a stop ends the wait at once, nothing being submitted).

use std::future::Future;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::command;
use super::driver::cancel;
use super::job;
use super::poller::{Poller, Target, View};
use super::squeue;
use crate::tasker::executor::{JobSpec, Report, RunEvent};
use crate::tasker::process::{Exit, Launch, StopReason};

/// How often a submission waiting for the controller, or for the
/// cluster to take more jobs, tries again.
const RETRY: Duration = Duration::from_secs(5);

/// How long a submit-limit refusal holds the next submissions back when
/// no waiting submission tries again.
const STALE: Duration = Duration::from_secs(60);

/// Writes the job's files and submits it; returns its id, durable in
/// `job_id` already.
pub(super) async fn submit(
    launch: &Launch,
    job: &JobSpec,
    (poller, gate): (&Poller, &LimitGate),
    report: &Report,
) -> Result<u64, Exit> {
    let failed = |message: String, transient: bool| Exit::SpawnFailed { message, transient };
    write_files(launch, job).await.map_err(|e| {
        failed(
            format!("cannot write the job's files in {}: {e}", job.dir.display()),
            true,
        )
    })?;
    let mut args = job::sbatch_args(&job.name, &job.dir, job.slurm.as_ref(), backstop(launch));
    args.push(job.dir.join(job::SCRIPT).display().to_string());
    let mut wait = Wait::new(report);
    let id = loop {
        // A stop asked since the last pass (which left no job behind).
        if wait.stop_asked() {
            return Err(stopped_before_submission());
        }
        // While the cluster refuses for its limit, submissions take turns.
        let turn = match gate.refusal() {
            Some(words) => {
                wait.held(&format!("Slurm takes no more jobs for now: {words}"));
                Some(wait.until(gate.turn()).await?)
            }
            None => None,
        };
        match sbatch(&args).await {
            Ok(id) => {
                gate.took();
                break id;
            }
            Err(e) if squeue::unreachable(&e) => {
                drop(turn);
                wait.waiting(Cause::Controller, &format!("cannot submit to Slurm: {e}"));
                tokio::time::sleep(RETRY).await;
                if let Some(id) = submitted_meanwhile(poller, job).await {
                    break id;
                }
            }
            // The next turn waits, then tries again.
            Err(e) if squeue::submit_limited(&e) => gate.refused(&e),
            Err(e) if e.starts_with("cannot run") => return Err(failed(e, false)),
            Err(e) => return Err(failed(format!("sbatch refused the job: {e}"), false)),
        }
    };
    wait.over();
    crash_point();
    if let Err(e) = write_job_id(&job.dir, id).await {
        cancel(id, None).await;
        return Err(failed(
            format!("cannot record the job id {id}: {e} (the job was cancelled)"),
            true,
        ));
    }
    Ok(id)
}

/// Whether a failed `sbatch` reached the controller after all: waits
/// until the poller's `squeue` answers, and returns the id of the job of
/// this run it shows (none: submit again).
async fn submitted_meanwhile(poller: &Poller, job: &JobSpec) -> Option<u64> {
    let mut view = poller.watch(Target::Name {
        name: job.name.clone(),
        dir: job::work_dir(&job.dir),
    });
    while view.changed().await.is_ok() {
        match &*view.borrow_and_update() {
            View::Seen(row) => return Some(row.id),
            View::Gone => return None,
            View::Unknown | View::Unreachable(_) | View::Unaccounted(_) => {}
        }
    }
    // The poller stopped (it never does while the engine runs): asked
    // here, not taken as "not submitted".
    loop {
        if let Ok(rows) = super::poller::query().await {
            let dir = job::work_dir(&job.dir);
            return squeue::newest_run(&rows, &job.name, &dir).map(|r| r.id);
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The end of a submission stopped before Slurm took its job.
fn stopped_before_submission() -> Exit {
    Exit::Lost {
        kind: crate::model::task::ErrorKind::Aborted,
        message: "stopped before Slurm took the job".into(),
    }
}

/// The cluster's submit limit as this engine last met it, shared by all
/// submissions: while the last `sbatch` was refused for it, a submission
/// waits for its turn and tries 5 s after that refusal; once one is
/// taken, the others follow at once, one at a time.
#[derive(Default)]
pub(super) struct LimitGate {
    /// Held by the submission that tries next.
    turn: tokio::sync::Mutex<()>,
    /// When and with what words the last refusal came (`None`: the
    /// cluster took the last job).
    refused: Mutex<Option<(Instant, String)>>,
}

impl LimitGate {
    /// The words of the last refusal, while it is recent: a submission
    /// waiting for the limit refreshes it every 5 s; one older than
    /// [`STALE`] is nobody's (those waiting were cancelled), and the next
    /// submission tries at once.
    fn refusal(&self) -> Option<String> {
        let r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        r.as_ref()
            .filter(|(at, _)| at.elapsed() < STALE)
            .map(|(_, words)| words.clone())
    }

    fn refused(&self, words: &str) {
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        *r = Some((Instant::now(), words.to_string()));
    }

    fn took(&self) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// This submission's turn: once the others before it have tried, and
    /// 5 s after the last refusal.
    async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        let turn = self.turn.lock().await;
        let last = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(at, _)| *at);
        if let Some(at) = last {
            tokio::time::sleep_until(at + RETRY).await;
        }
        turn
    }
}

/// What a waiting submission has told the engine: that it waits (a
/// `suspended` point, once), and, waiting for the submit limit, the
/// handle a stop comes through ([`RunEvent::Held`]: nothing of the run
/// exists on the cluster then, so it ends at once). A submission waiting
/// for an unreachable controller has no such handle: its job may exist,
/// which only the controller can tell.
struct Wait<'a> {
    report: &'a Report,
    /// What the engine was last told the submission waits for.
    told: Option<Cause>,
    stop: Option<oneshot::Sender<StopReason>>,
    asked: Option<oneshot::Receiver<StopReason>>,
}

/// What a submission waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Controller,
    Limit,
}

impl<'a> Wait<'a> {
    fn new(report: &'a Report) -> Wait<'a> {
        let (tx, rx) = oneshot::channel();
        Wait {
            report,
            told: None,
            stop: Some(tx),
            asked: Some(rx),
        }
    }

    /// Tells the engine the submission waits: once per cause in a row
    /// (a `suspended` point each).
    fn waiting(&mut self, cause: Cause, why: &str) {
        if self.told != Some(cause) {
            self.told = Some(cause);
            (self.report)(RunEvent::Waiting(Some(why.to_string())));
        }
    }

    /// Waits for the submit limit: the engine gets the stop handle.
    fn held(&mut self, why: &str) {
        if let Some(stop) = self.stop.take() {
            (self.report)(RunEvent::Held { stop });
        }
        self.waiting(Cause::Limit, why);
    }

    /// Runs `work` unless a stop comes first (the run then ends).
    async fn until<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Exit> {
        tokio::pin!(work);
        if let (Some(asked), None) = (self.asked.as_mut(), &self.stop) {
            tokio::select! {
                biased;
                asked = asked => match asked {
                    Ok(_) => return Err(stopped_before_submission()),
                    // The engine let go of the handle: no stop can come.
                    Err(_) => self.asked = None,
                },
                out = &mut work => return Ok(out),
            }
        }
        Ok(work.await)
    }

    /// Whether the engine asked, through the handle it holds, for a stop.
    fn stop_asked(&mut self) -> bool {
        if self.stop.is_some() {
            return false;
        }
        match self.asked.as_mut().map(|rx| rx.try_recv()) {
            Some(Ok(_)) => true,
            Some(Err(oneshot::error::TryRecvError::Closed)) => {
                self.asked = None;
                false
            }
            _ => false,
        }
    }

    /// The wait is over (the job is submitted).
    fn over(&self) {
        if self.told.is_some() {
            (self.report)(RunEvent::Waiting(None));
        }
    }
}

/// The Slurm time limit of a job with a run timeout: the timeout plus the
/// kill grace plus a minute, so that the engine's own timeout comes first
/// (it sees the job's start up to a poll late, and its `scancel` may wait
/// on the controller).
fn backstop(launch: &Launch) -> Option<Duration> {
    launch
        .timeout
        .map(|t| t + launch.kill_grace + Duration::from_secs(60))
}

/// A test seam (debug builds only): `SPOOLFLOW_CRASH_AFTER_SBATCH=1` kills
/// the engine between `sbatch` and the durable write of the job id.
fn crash_point() {
    #[cfg(debug_assertions)]
    if std::env::var_os("SPOOLFLOW_CRASH_AFTER_SBATCH").is_some() {
        std::process::abort();
    }
}

/// Writes the job's directory (off the loop: on a shared filesystem a
/// write may wait on the network): its stdin and its script.
async fn write_files(launch: &Launch, job: &JobSpec) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let argv: Vec<&std::ffi::OsStr> = launch.argv.iter().map(|a| a.as_os_str()).collect();
    let env: Vec<(&str, &std::ffi::OsStr)> = launch
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_os_str()))
        .collect();
    let script = job::script(&job.dir, &launch.dir, &argv, &env);
    let (dir, stdin) = (job.dir.clone(), launch.stdin.clone());
    off_loop(move || {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(job::IN), stdin)?;
        let path = dir.join(job::SCRIPT);
        std::fs::write(&path, script)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
    })
    .await
}

/// Runs blocking file work on the runtime's blocking threads.
async fn off_loop<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}

/// Makes a job id durable in the job's directory (`job_id`).
pub(super) async fn write_job_id(dir: &Path, id: u64) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    off_loop(move || {
        crate::store::spool::write_atomic(
            &dir,
            job::JOB_ID,
            format!("{id}\n").as_bytes(),
            false,
            true,
        )
        .map(|_| ())
        .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .await
}

/// Runs `sbatch`; its id, or its message.
async fn sbatch(args: &[String]) -> Result<u64, String> {
    let out = command::run("sbatch", args).await?;
    squeue::parse_job_id(&out).ok_or_else(|| format!("sbatch printed no job id: {}", out.trim()))
}
