//! The store: everything the engine reads from and writes to the spool.
//! Durable writes (`spool`), the durable writer thread with group commit
//! (`writer`), what counts in `in/` and how it is taken (`intake`), the
//! append-only points logs (`points`), and stored flows under `tsk/` (`flows`).
//! The read layer that finds tasks without an engine is `crate::read`.

pub mod flows;
pub mod history;
pub mod intake;
pub mod points;
pub mod spool;
pub mod writer;
