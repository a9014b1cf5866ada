//! The graceful stop (SPEC 10): on SIGINT/SIGTERM no new claims or starts,
//! waiting nodes are let go (they stay in `run/`), running taskers may
//! finish within the grace; then they are stopped and their tasks stay in
//! `run/` too. A second signal ends the grace at once.

use super::state::{Mode, NodeState, Stop};
use super::Engine;
use crate::scheduler::NodeKey;

impl Engine {
    pub(super) fn begin_stop(&mut self) {
        if self.mode.is_stopping() {
            // A second signal: do not wait for the grace.
            return self.end_grace();
        }
        tracing::info!(
            "stopping: no new tasks; running taskers have {} to finish",
            crate::model::task::Dur(self.options.grace)
        );
        self.mode = Mode::Stopping {
            grace_end: tokio::time::Instant::now() + self.options.grace,
        };
        self.scan.clear();
        // Waiting nodes stay in run/ for the next start.
        let waiting: Vec<NodeKey> = self
            .nodes
            .iter()
            .filter(|(_, n)| !matches!(n.state, NodeState::Running(_) | NodeState::Committing))
            .map(|(k, _)| k.clone())
            .collect();
        for k in waiting {
            self.let_go(&k);
        }
    }

    pub(super) fn end_grace(&mut self) {
        self.mode = Mode::Ending;
        for node in self.nodes.values_mut() {
            if let NodeState::Running(run) = &mut node.state {
                run.process.ask_stop(Stop::Shutdown);
            }
        }
    }
}
