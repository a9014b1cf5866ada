//! Flows (SPEC 12), pure: the flow tree and its validation ([`tree`]),
//! stored flows inlined ([`resolve`]), the merge rules, and the progress
//! of one flow as a state machine that says what runs next ([`run`]).
//!
//! Nothing here touches the filesystem, the clock (time is passed in as
//! milliseconds since the epoch), processes or Rhai (`if` expressions are
//! evaluated through [`Conditions`]): the engine does the I/O the
//! [`Step`]s call for.

mod cursor;
pub mod journal;
pub mod merge;
pub mod run;
mod stored;
pub mod tree;

pub use run::{
    Action, Conditions, Cursor, End, Ended, Flow, NodeError, NodeProgress, Progress, Step, TaskRun,
};
pub use tree::{
    at, conditions, count, depth, parse, resolve, to_json, valid_flow_name, FlowError, FlowNode,
    Kind, Merge, OnError, MAX_DEPTH, MAX_NODES,
};
