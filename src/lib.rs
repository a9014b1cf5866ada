//! spoolflow: a filesystem-driven workflow engine.
//!
//! Users drop JSON task files into `var/spool/in/`; the engine asks the
//! domain's taskmaster (a sandboxed Rhai script) which taskee should do the
//! work, runs that tasker with the payload on stdin, and records every point
//! of the task's life under `var/`.
//!
//! The library holds the engine, the model and the store; the command line
//! lives in the binary (`src/main.rs`, `src/cli/`). The README's design
//! section walks a task through these modules.

pub mod check;
pub mod engine;
pub mod flow;
pub mod heap;
pub mod layout;
pub mod lookup;
pub mod model;
pub mod read;
pub mod sandbox;
pub mod scheduler;
pub mod store;
pub mod submit;
pub mod tasker;
pub mod taskmaster;
pub mod text;
pub mod userfile;
pub mod watch;

pub use engine::{Options, StopRequest};
pub use layout::Root;
