//! The read layer: what the spool holds, read from the files alone — no
//! engine needed, none disturbed, nothing written but the records index
//! (a cache). The operator's commands share it, and so will the dashboard.
//!
//! - [`find`]: one task by id wherever it is, records, points, history;
//! - [`summary`]: a task's one-line summary and its derived state;
//! - [`tasks`]: every task of the root, summarized;
//! - [`index`]: the records index that keeps `status` and `list` fast;
//! - [`query`]: `list`'s filters, sort and paging (pure);
//! - [`status`]: the counts of `status`;
//! - [`engine`]: whether an engine runs, from its lock file.

pub mod engine;
pub mod find;
pub mod index;
pub mod query;
pub mod status;
pub mod summary;
pub mod tasks;

pub use find::{find, find_in, history, points, read_record, record, records, Place, ReadError};
