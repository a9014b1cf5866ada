//! The model: validated names, the task file and record, points and
//! durations. Wire types only: nothing here touches the filesystem.

pub mod names;
pub mod point;
pub mod schema;
pub mod task;
