//! The store: everything the engine reads from and writes to the spool.
//! Durable writes (`spool`), the durable writer thread with group commit
//! (`writer`), what counts in `in/` and how it is taken (`intake`), and the
//! append-only points logs (`points`).

pub mod intake;
pub mod points;
pub mod spool;
pub mod writer;
