//! The store: everything the engine reads from and writes to the spool.
//! Durable writes (`spool`), the durable writer thread with group commit
//! (`writer`), what counts in `in/` and how it is taken (`intake`), the
//! append-only points logs (`points`), stored flows under `tsk/` (`flows`),
//! and the read layer (`read`) that finds tasks, records and points
//! without an engine.

pub mod flows;
pub mod history;
pub mod intake;
pub mod points;
pub mod read;
pub mod spool;
pub mod writer;
