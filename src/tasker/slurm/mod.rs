//! Taskers as Slurm batch jobs (SPEC 14): `job` (the script and the
//! `sbatch` arguments, pure), `squeue` (what Slurm says, pure), `command`
//! (running Slurm's commands with a time bound), `poller` (one `squeue`
//! per interval for all jobs), `submit` (writing a run's job and
//! submitting it, waiting for the cluster when it must) and `driver` (one
//! run: follow, signal, read its result).

pub mod command;
pub mod driver;
pub mod job;
pub mod poller;
pub mod squeue;
mod submit;

use std::time::Duration;

pub use driver::{Adopt, Slurm};
pub use poller::{Poller, Target, View};

/// The default poll interval.
pub const POLL: Duration = Duration::from_secs(1);
