//! Taskers (SPEC section 6): `config` (`tasker.json`), `resolve` (a taskee
//! to an executable under `tsk/`), `process` (spawning and driving one
//! tasker process; `vfork` starts it, `pipes` reads its output),
//! `contain` and `sweep` (nothing a tasker starts outlives its task),
//! `stderr` (its stderr lines), `reply` (the reply table), and the
//! executor seam (`executor`: `Local` process groups, and `slurm` batch
//! jobs).

pub mod config;
pub mod contain;
pub mod cpu;
pub mod executor;
mod pipes;
pub mod process;
pub mod reply;
pub mod resolve;
pub mod slurm;
pub mod stderr;
mod sweep;
mod vfork;

pub use config::{Cmd, ConcurrencyKey, ExecutorKind, Input, SlurmConfig, TaskerConfig};
pub use contain::{Contain, Tracked};
pub use executor::{Executor, JobSpec, Local, Placement, Report, RunEvent};
pub use process::{close_inherited_descriptors, spawn, Exit, Handle, Launch, StopReason};
pub use reply::{parse_reply, Reply, REPLY_LIMIT};
pub use resolve::{Resolved, TaskerError, Taskers};
