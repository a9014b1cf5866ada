//! How the engine is run: on a current-thread runtime of its own
//! ([`run_blocking`]) or as a task of the caller's runtime ([`run`]).

use tokio::sync::mpsc::UnboundedReceiver;

use super::{run_here, EngineError, Options, StopRequest};
use crate::layout::Root;

/// Runs the engine on a current-thread runtime until it drains (with
/// `drain`) or a stop request arrives on `stop`.
pub fn run_blocking(
    root: Root,
    options: Options,
    stop: Option<UnboundedReceiver<StopRequest>>,
) -> Result<(), EngineError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(EngineError::Runtime)?;
    rt.block_on(run(root, options, stop))
}

/// Runs the engine (inside a tokio runtime) as a task of that runtime.
///
/// A task, not the future the caller's `block_on` polls: a tasker's driver
/// (another task) then wakes the loop through the runtime's own run queue,
/// where waking `block_on`'s future writes the runtime's eventfd, a system
/// call per report. A panic of the engine goes on unwinding here, and
/// dropping this future stops the engine (its task is aborted), as
/// dropping the engine's own future would.
pub async fn run(
    root: Root,
    options: Options,
    stop: Option<UnboundedReceiver<StopRequest>>,
) -> Result<(), EngineError> {
    let mut task = AbortOnDrop(tokio::spawn(run_here(root, options, stop)));
    match (&mut task.0).await {
        Ok(result) => result,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(EngineError::Cancelled),
        },
    }
}

/// The engine's task, aborted if its owner is dropped before it ends.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), EngineError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
