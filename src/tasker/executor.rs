//! The executor seam (SPEC 14): starting, observing, signalling and
//! recovering a tasker goes through [`Executor`], with two
//! implementations: [`Local`] (a process group on the engine's machine)
//! and [`super::slurm::Slurm`] (a batch job of a Slurm cluster). What a
//! run comes to is reported as [`RunEvent`]s ending with one `Exited`;
//! the decisions taken on it (the outcome of a reply, retries, timeouts,
//! refusals) are the engine's, the same for both.

use std::path::PathBuf;

use tokio::sync::oneshot;

use super::process::{spawn, Exit, Launch, StopReason};
use super::SlurmConfig;

/// Where a run was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A local process group.
    Group(i32),
    /// A Slurm job, by id.
    Job(u64),
}

/// What happens to a run, in order: `Placed` once, then (Slurm) `Running`
/// and `Waiting` as the cluster tells, then `Exited` (or, a Slurm job the
/// cluster forgot, `Vanished`) once.
#[derive(Debug)]
pub enum RunEvent {
    /// The process exists (local: it runs) or the cluster accepted the
    /// job (Slurm: it is pending); `stop` asks the run to end.
    Placed {
        at: Placement,
        stop: oneshot::Sender<StopReason>,
    },
    /// A Slurm submission waits for the cluster to take more jobs
    /// (nothing is submitted yet); `stop` ends it.
    Held { stop: oneshot::Sender<StopReason> },
    /// A Slurm job runs on `node`.
    Running { job: u64, node: String },
    /// The cluster cannot be reached (`Some(why)`), or can be again.
    Waiting(Option<String>),
    /// The run ended.
    Exited(Exit),
    /// The cluster no longer knows the job and it left no result: it
    /// never ran, or ran where nothing of it is left (it runs again).
    Vanished,
}

/// Where a run's events go (called from any thread).
pub type Report = Box<dyn Fn(RunEvent) + Send + Sync>;

/// What a Slurm run needs beyond a local one.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// `var/slurm/<exid>.<nid>.<offer>/`: the run's files.
    pub dir: PathBuf,
    /// The job's name (found by it after a crash).
    pub name: String,
    pub slurm: Option<SlurmConfig>,
}

/// Starts taskers. `start` is called on the event loop (local) or a
/// blocking thread (Slurm, which waits for `sbatch`); it returns
/// once the run is placed or has failed to be, and the rest of the run is
/// driven on the runtime.
pub trait Executor: Send + Sync {
    fn start(&self, launch: Launch, job: Option<JobSpec>, report: Report);
}

/// Taskers as process groups of the engine's machine.
pub struct Local;

impl Executor for Local {
    fn start(&self, launch: Launch, _job: Option<JobSpec>, report: Report) {
        match spawn(launch) {
            Ok((handle, driver)) => {
                report(RunEvent::Placed {
                    at: Placement::Group(handle.pgid),
                    stop: handle.stop,
                });
                tokio::spawn(async move {
                    let exit = driver.await;
                    report(RunEvent::Exited(exit));
                });
            }
            Err(exit) => report(RunEvent::Exited(exit)),
        }
    }
}
