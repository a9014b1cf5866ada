//! spoolflow: a filesystem-driven workflow engine.
//!
//! Users drop JSON task files into `var/spool/in/`; the engine asks the
//! domain's taskmaster (a sandboxed Rhai script) which taskee should do the
//! work, runs that tasker with the payload on stdin, and records every point
//! of the task's life under `var/`. See SPEC.md for the contract and
//! DESIGN.md for the shape of this code.

pub mod names;
pub mod root;
pub mod task;
