//! Taskers (SPEC section 6): `config` (`tasker.json`), `resolve` (a taskee
//! to an executable under `tsk/`), `process` (spawning and driving one
//! tasker process), `stderr` (its stderr lines) and `reply` (the reply
//! table).

pub mod config;
pub mod contain;
pub mod process;
pub mod reply;
pub mod resolve;
pub mod stderr;

pub use config::{Cmd, ConcurrencyKey, Input, TaskerConfig};
pub use contain::{Contain, Tracked};
pub use process::{close_inherited_descriptors, spawn, Exit, Handle, Launch, StopReason};
pub use reply::{parse_reply, Reply, REPLY_LIMIT};
pub use resolve::{Resolved, TaskerError, Taskers};
