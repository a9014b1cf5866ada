//! spoolflow: a filesystem-driven workflow engine.
//!
//! Users drop JSON task files into `var/spool/in/`; the engine asks the
//! domain's taskmaster (a sandboxed Rhai script) which taskee should do the
//! work, runs that tasker with the payload on stdin, and records every point
//! of the task's life under `var/`. See SPEC.md for the contract and
//! DESIGN.md for the shape of this code.

pub mod check;
pub mod cli;
pub mod commit;
pub mod engine;
pub mod intake;
pub mod names;
pub mod points;
pub mod recovery;
pub mod root;
pub mod scheduler;
pub mod spool;
pub mod submit;
pub mod task;
pub mod tasker;
pub mod taskmaster;
pub mod watch;

pub use engine::{Options, StopRequest};
pub use root::Root;
