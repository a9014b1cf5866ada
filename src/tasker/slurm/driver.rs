//! One tasker run as a Slurm job (SPEC 14): submitted (`submit`), then
//! followed through the poller: `Running` once it has a node, the run
//! timeout counted from then, a stop or a timeout as `scancel
//! --signal=TERM --full` then `scancel` after the kill grace, and at its
//! end the reply, stderr and exit status read from its files. An engine
//! that stops leaves its jobs running: the next start re-attaches them
//! ([`Slurm::adopt`]).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::command;
use super::job::{self, parse_status};
use super::poller::{Poller, Target, View};
use super::squeue::{self, Phase};
use super::submit::{submit, write_job_id, LimitGate};
use crate::tasker::executor::{Executor, JobSpec, Placement, Report, RunEvent};
use crate::tasker::process::{Exit, Launch, StopReason};
use crate::tasker::REPLY_LIMIT;

/// Taskers as Slurm jobs: the poller all runs share, and its interval.
pub struct Slurm {
    poller: Poller,
    /// The cluster's submit limit, shared by every submission.
    gate: Arc<LimitGate>,
}

/// What a driver needs to follow a job and read its result.
#[derive(Clone)]
struct Follow {
    dir: PathBuf,
    /// The job's name (its directory's, see [`job::job_name`]).
    name: String,
    timeout: Option<Duration>,
    kill_grace: Duration,
    stderr_path: PathBuf,
    stderr_prefix: String,
}

/// A job of a dead engine, found at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopt {
    /// Its id is known (recorded, or found by name).
    Job(u64),
    /// The cluster no longer knows it, but it left its exit status.
    Ended,
    /// Not known yet (the controller did not answer at start-up): looked
    /// up by name once it does.
    Name,
}

/// How a followed job ended: with an exit, or gone from the cluster
/// without any result (to run again).
enum End {
    Exit(Exit),
    Vanished,
}

impl End {
    fn report(self, report: &Report) {
        report(match self {
            End::Exit(exit) => RunEvent::Exited(exit),
            End::Vanished => RunEvent::Vanished,
        });
    }
}

impl Slurm {
    /// Starts the poller (on the runtime).
    pub fn new(interval: Duration) -> Slurm {
        Slurm {
            poller: Poller::start(interval),
            gate: Arc::new(LimitGate::default()),
        }
    }

    /// Re-attaches the run whose files are in `dir` (SPEC 14 recovery):
    /// reported as for a new run, from `Placed` on.
    pub fn adopt(&self, adopt: Adopt, launch: Launch, dir: PathBuf, report: Report) {
        let f = follow_of(&launch, dir);
        let poller = self.poller.clone();
        tokio::spawn(async move {
            let end = match adopt {
                Adopt::Job(id) => placed_then_follow(&poller, id, &f, &report).await,
                Adopt::Ended => End::Exit(read_result(&f, None, None, false).await),
                Adopt::Name => match find_by_name(&poller, &f, &report).await {
                    Some(id) => {
                        record_id(&f.dir, id).await;
                        placed_then_follow(&poller, id, &f, &report).await
                    }
                    None if f.dir.join(job::STATUS).exists() => {
                        End::Exit(read_result(&f, None, None, false).await)
                    }
                    None => End::Vanished,
                },
            };
            end.report(&report);
        });
    }
}

fn follow_of(launch: &Launch, dir: PathBuf) -> Follow {
    let name = job::name_of(&dir);
    Follow {
        dir,
        name,
        timeout: launch.timeout,
        kill_grace: launch.kill_grace,
        stderr_path: launch.stderr_path.clone(),
        stderr_prefix: launch.stderr_prefix.clone(),
    }
}

impl Executor for Slurm {
    fn start(&self, launch: Launch, job: Option<JobSpec>, report: Report) {
        let Some(job) = job else {
            return report(RunEvent::Exited(Exit::SpawnFailed {
                message: "a Slurm run needs its job files".into(),
                transient: false,
            }));
        };
        let f = follow_of(&launch, job.dir.clone());
        let (poller, gate) = (self.poller.clone(), self.gate.clone());
        tokio::spawn(async move {
            let end = match submit(&launch, &job, (&poller, &gate), &report).await {
                Ok(id) => placed_then_follow(&poller, id, &f, &report).await,
                Err(exit) => End::Exit(exit),
            };
            end.report(&report);
        });
    }
}

/// The id of the job of this run's name, once the controller answers
/// (`None`: it knows none).
async fn find_by_name(poller: &Poller, f: &Follow, report: &Report) -> Option<u64> {
    let mut view = poller.watch(Target::Name {
        name: f.name.clone(),
        dir: job::work_dir(&f.dir),
    });
    let mut waiting = false;
    while view.changed().await.is_ok() {
        let v = view.borrow_and_update().clone();
        match v {
            View::Seen(row) => return Some(row.id),
            View::Gone => return None,
            View::Unreachable(why) if !waiting => {
                waiting = true;
                report(RunEvent::Waiting(Some(format!(
                    "the Slurm controller cannot be reached: {why}"
                ))));
            }
            View::Unknown | View::Unreachable(_) | View::Unaccounted(_) => {}
        }
    }
    None
}

/// Records a job id found by name, as a submission would have.
async fn record_id(dir: &Path, id: u64) {
    if let Err(e) = write_job_id(dir, id).await {
        tracing::warn!("cannot record Slurm job {id}: {e}");
    }
}

async fn placed_then_follow(poller: &Poller, id: u64, f: &Follow, report: &Report) -> End {
    let (stop_tx, stop_rx) = oneshot::channel();
    report(RunEvent::Placed {
        at: Placement::Job(id),
        stop: stop_tx,
    });
    let target = Target::Job {
        id,
        name: f.name.clone(),
        dir: job::work_dir(&f.dir),
    };
    follow(id, poller.watch(target), stop_rx, f, report).await
}

/// How soon a `scancel` that failed (the controller unreachable, say) is
/// tried again.
const CANCEL_AGAIN: Duration = Duration::from_secs(5);

/// `scancel` (`--signal=TERM --full` with a signal); whether Slurm took
/// it. What Slurm then says of the job is what counts.
pub(super) async fn cancel(id: u64, signal: Option<&'static str>) -> bool {
    let mut args = Vec::new();
    if let Some(sig) = signal {
        args.push(format!("--signal={sig}"));
        args.push("--full".into());
    }
    args.push(id.to_string());
    match command::run("scancel", &args).await {
        Ok(_) => true,
        // Over already: nothing is left to end.
        Err(e) if e.contains("Invalid job id") => true,
        Err(e) => {
            tracing::warn!(
                "scancel of job {id} failed: {e}; tried again every {}s until Slurm takes it",
                CANCEL_AGAIN.as_secs()
            );
            false
        }
    }
}

/// A `scancel` not yet taken by Slurm, tried again until it is (a cancel
/// or a timeout during a controller outage must still end the job).
#[derive(Default)]
struct Undelivered {
    /// The signal of the `scancel` to send again (`None` inside: a kill).
    signal: Option<Option<&'static str>>,
    again_at: Option<Instant>,
}

impl Undelivered {
    /// Sends `signal` now; remembers it when Slurm did not take it. A
    /// later `scancel` replaces one still to send (a kill after a TERM).
    async fn send(&mut self, id: u64, signal: Option<&'static str>) {
        if cancel(id, signal).await {
            *self = Undelivered::default();
        } else {
            self.signal = Some(signal);
            self.again_at = Some(Instant::now() + CANCEL_AGAIN);
        }
    }

    /// Sends again what Slurm did not take.
    async fn again(&mut self, id: u64) {
        self.again_at = None;
        if let Some(signal) = self.signal.take() {
            self.send(id, signal).await;
        }
    }
}

/// The state of one followed job.
#[derive(Default)]
struct Seen {
    /// The node, once the job was seen on one (`Running` reported).
    node: Option<String>,
    last_state: Option<String>,
    waiting: bool,
    stopped: Option<StopReason>,
    timed_out: bool,
    /// The cluster no longer knows the job.
    gone: bool,
}

impl Seen {
    /// Tells the engine the job is waited for (a `suspended` point), once
    /// until Slurm shows the job again.
    fn wait(&mut self, report: &Report, why: impl FnOnce() -> String) {
        if !self.waiting {
            self.waiting = true;
            report(RunEvent::Waiting(Some(why())));
        }
    }
}

/// Follows a placed job to its end.
async fn follow(
    id: u64,
    mut view: watch::Receiver<View>,
    mut stop_rx: oneshot::Receiver<StopReason>,
    f: &Follow,
    report: &Report,
) -> End {
    let mut s = Seen::default();
    let mut stop_open = true;
    let mut deadline: Option<Instant> = None;
    let mut kill_at: Option<Instant> = None;
    let mut undelivered = Undelivered::default();
    let far = || Instant::now() + Duration::from_secs(365 * 24 * 3600);
    loop {
        tokio::select! {
            changed = view.changed() => {
                if changed.is_err() {
                    return End::Exit(Exit::Lost { kind: crate::model::task::ErrorKind::Work, message: "the engine's Slurm poller stopped".into() });
                }
                let v = view.borrow_and_update().clone();
                if let Some(ended) = on_view(id, v, &mut s, f, &mut deadline, report) {
                    if ended {
                        break;
                    }
                }
            }
            why = &mut stop_rx, if stop_open => {
                stop_open = false;
                match why {
                    Ok(StopReason::Shutdown) => return End::Exit(detached()),
                    Ok(StopReason::Cancel) => {
                        s.stopped = Some(StopReason::Cancel);
                        let running = s.node.is_some();
                        undelivered.send(id, running.then_some("TERM")).await;
                        kill_at = running.then(|| Instant::now() + f.kill_grace);
                    }
                    Err(_) => {}
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(far)), if deadline.is_some() => {
                deadline = None;
                if s.stopped.is_none() {
                    s.timed_out = true;
                    undelivered.send(id, Some("TERM")).await;
                    kill_at = Some(Instant::now() + f.kill_grace);
                }
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or_else(far)), if kill_at.is_some() => {
                kill_at = None;
                undelivered.send(id, None).await;
            }
            _ = tokio::time::sleep_until(undelivered.again_at.unwrap_or_else(far)), if undelivered.again_at.is_some() => {
                undelivered.again(id).await;
            }
        }
        // Stopped or timed out while its end could not be told: it is over.
        if (s.stopped.is_some() || s.timed_out) && matches!(*view.borrow(), View::Unaccounted(_)) {
            s.gone = true;
            break;
        }
    }
    if s.stopped.is_none() && !s.timed_out {
        status_settles(&f.dir).await;
        // Forgotten by the cluster, and no result: it runs again.
        if s.gone && !f.dir.join(job::STATUS).exists() {
            return End::Vanished;
        }
    }
    End::Exit(read_result(f, s.last_state, s.stopped, s.timed_out).await)
}

/// How long an ended job's exit status may take to show on a shared
/// filesystem (NFS caches attributes for a few seconds).
const STATUS_SETTLE: Duration = Duration::from_secs(5);

/// Waits, boundedly, for the exit status of a job that ended: a file the
/// node wrote may not show at once on the engine's machine.
async fn status_settles(dir: &Path) {
    let until = Instant::now() + STATUS_SETTLE;
    while !dir.join(job::STATUS).exists() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Acts on one view of the job; `Some(true)` once it has ended.
fn on_view(
    id: u64,
    v: View,
    s: &mut Seen,
    f: &Follow,
    deadline: &mut Option<Instant>,
    report: &Report,
) -> Option<bool> {
    let row = match v {
        View::Unknown => return None,
        View::Unreachable(why) => {
            s.wait(report, || {
                format!("the Slurm controller cannot be reached: {why}")
            });
            return None;
        }
        View::Gone => {
            s.gone = true;
            return Some(true);
        }
        // Its end is known without Slurm's word: its exit status is
        // there, or the engine ended it.
        View::Unaccounted(_)
            if s.stopped.is_some() || s.timed_out || f.dir.join(job::STATUS).exists() =>
        {
            s.gone = true;
            return Some(true);
        }
        View::Unaccounted(why) => {
            s.wait(report, || {
                format!("Slurm cannot tell yet how job {id} ended: {why}")
            });
            return None;
        }
        View::Seen(row) => row,
    };
    if s.waiting {
        s.waiting = false;
        report(RunEvent::Waiting(None));
    }
    s.last_state = Some(row.state.clone());
    let phase = squeue::phase(&row.state);
    if phase != Phase::Pending && s.node.is_none() && !row.node.is_empty() && s.stopped.is_none() {
        s.node = Some(row.node.clone());
        report(RunEvent::Running {
            job: id,
            node: row.node.clone(),
        });
        *deadline = f.timeout.map(|t| Instant::now() + t);
    }
    match phase {
        Phase::Ended => Some(true),
        Phase::Completing => Some(f.dir.join(job::STATUS).exists()),
        _ => Some(false),
    }
}

/// The exit of an engine that stops: the job goes on; the next start
/// re-attaches it.
fn detached() -> Exit {
    Exit::Exited {
        status: ExitStatus::from_raw(0),
        stdout: Vec::new(),
        oversized: false,
        stderr_tail: Vec::new(),
        timed_out: false,
        stopped: Some(StopReason::Shutdown),
    }
}

/// [`result`], its files read off the loop.
async fn read_result(
    f: &Follow,
    last_state: Option<String>,
    stopped: Option<StopReason>,
    timed_out: bool,
) -> Exit {
    let f = f.clone();
    tokio::task::spawn_blocking(move || result(&f, last_state.as_deref(), stopped, timed_out))
        .await
        .unwrap_or_else(|e| Exit::Lost {
            kind: crate::model::task::ErrorKind::Work,
            message: format!("cannot read the job's result: {e}"),
        })
}

/// What an ended job came to, from its last state and its files.
fn result(
    f: &Follow,
    last_state: Option<&str>,
    stopped: Option<StopReason>,
    timed_out: bool,
) -> Exit {
    let code = std::fs::read(f.dir.join(job::STATUS))
        .ok()
        .and_then(|b| parse_status(&b));
    if stopped.is_none() && !timed_out {
        if let Some((kind, message)) = last_state.and_then(squeue::overriding_end) {
            return Exit::Lost { kind, message };
        }
    }
    let Some(code) = code else {
        if stopped.is_some() || timed_out {
            return Exit::Exited {
                status: ExitStatus::from_raw(15),
                stdout: Vec::new(),
                oversized: false,
                stderr_tail: Vec::new(),
                timed_out,
                stopped,
            };
        }
        let (kind, message) = squeue::lost(last_state);
        return Exit::Lost {
            kind,
            message: with_slurm_out(message, &f.dir),
        };
    };
    let stdout = match read_reply(&f.dir.join(job::OUT)) {
        Ok(stdout) => stdout,
        // Stopped: the reply does not count.
        Err(_) if stopped.is_some() || timed_out => Vec::new(),
        // The tasker ran, but what it replied is lost: not an empty reply
        // (which would complete the task), a `work` error, retried.
        Err(e) => {
            return Exit::Lost {
                kind: crate::model::task::ErrorKind::Work,
                message: format!("the job's reply {} cannot be read: {e}", job::OUT),
            }
        }
    };
    let oversized = stdout.len() > REPLY_LIMIT;
    let stderr_tail = crate::tasker::stderr::copy_stderr_file(
        &f.dir.join(job::ERR),
        f.stderr_path.clone(),
        f.stderr_prefix.clone(),
    );
    Exit::Exited {
        status: status_of(code),
        stdout: if oversized { Vec::new() } else { stdout },
        oversized,
        stderr_tail,
        timed_out,
        stopped,
    }
}

/// The reply file, read up to one byte over the limit (a larger one reads
/// as one byte too many); why it cannot be read.
fn read_reply(path: &Path) -> Result<Vec<u8>, crate::userfile::UserFileError> {
    match crate::userfile::read(path, REPLY_LIMIT as u64 + 1) {
        Err(crate::userfile::UserFileError::TooLarge { .. }) => Ok(vec![0; REPLY_LIMIT + 1]),
        read => read,
    }
}

/// A shell's exit code as a wait status: 128 + n is signal n.
fn status_of(code: i32) -> ExitStatus {
    match code {
        129..=159 => ExitStatus::from_raw(code - 128),
        c => ExitStatus::from_raw((c & 0xff) << 8),
    }
}

/// A lost job's reason, with the last line Slurm itself wrote for it.
fn with_slurm_out(message: String, dir: &Path) -> String {
    let text =
        crate::userfile::read_string(&dir.join(job::SLURM_OUT), 64 * 1024).unwrap_or_default();
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line) => format!("{message}: {}", line.trim()),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn follow_in(dir: &Path) -> Follow {
        Follow {
            dir: dir.to_path_buf(),
            name: "spoolflow.t.0.1.1".into(),
            timeout: None,
            kill_grace: Duration::from_secs(1),
            stderr_path: dir.join("err"),
            stderr_prefix: "t".into(),
        }
    }

    #[test]
    fn a_job_accounting_cannot_tell_of_is_waited_for_unless_its_end_is_known() {
        let tmp = tempfile::tempdir().unwrap();
        let f = follow_in(tmp.path());
        let told = Arc::new(Mutex::new(Vec::new()));
        let sink = told.clone();
        let report: Report = Box::new(move |e| {
            if let RunEvent::Waiting(w) = e {
                sink.lock().unwrap().push(w);
            }
        });
        let unaccounted = || View::Unaccounted("sacct: slurmdbd down".into());
        let mut deadline = None;
        // Not known: waited for (told once), never taken as gone.
        let mut s = Seen::default();
        for _ in 0..2 {
            assert_eq!(
                on_view(7, unaccounted(), &mut s, &f, &mut deadline, &report),
                None
            );
        }
        assert!(!s.gone);
        assert_eq!(told.lock().unwrap().len(), 1, "{:?}", told.lock().unwrap());
        // Stopped by the engine: over.
        let mut s = Seen {
            stopped: Some(StopReason::Cancel),
            ..Seen::default()
        };
        assert_eq!(
            on_view(7, unaccounted(), &mut s, &f, &mut deadline, &report),
            Some(true)
        );
        // Its exit status is there: over, and read from it.
        std::fs::write(tmp.path().join(job::STATUS), "0\n").unwrap();
        let mut s = Seen::default();
        assert_eq!(
            on_view(7, unaccounted(), &mut s, &f, &mut deadline, &report),
            Some(true)
        );
        assert!(s.gone);
    }
}
