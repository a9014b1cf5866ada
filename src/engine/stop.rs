//! The graceful stop (SPEC 10): on SIGINT/SIGTERM no new claims or starts,
//! waiting nodes are let go (they stay in `run/`), running taskers may
//! finish within the grace; then they are stopped and their tasks stay in
//! `run/` too. A second signal ends the grace at once.

use super::state::{Mode, NodeState, Stop};
use super::{Engine, EngineError};
use crate::scheduler::NodeKey;
use crate::store::spool::SpoolError;

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

    /// The disk failed (README: "When the disk fails"), or a directory of
    /// the spool was removed under the engine: logs it once, with what
    /// happens next, kills the running taskers' groups at once (nothing
    /// they reply could be made durable; their tasks stay in `run/` and
    /// run again at the next start, as after a crash), and returns the
    /// error the engine exits with.
    pub(super) fn stop_on_disk_failure(&mut self, e: SpoolError) -> EngineError {
        tracing::error!("{}", disk_failure_words(&e));
        for node in self.nodes.values() {
            if let NodeState::Running(run) = &node.state {
                // A Slurm job goes on; the next start re-attaches it.
                if let Some(pgid) = run.process.group() {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        EngineError::Stopped { at: e.paths() }
    }
}

/// A write failed as the engine was ending (the writer's fsync of `run/`):
/// logged as any failed write is; nothing runs any more.
pub(super) fn disk_failure(e: &SpoolError) -> EngineError {
    tracing::error!("{}", disk_failure_words(e));
    EngineError::Stopped { at: e.paths() }
}

/// The one log line of a stop on a failed write: what failed, and what
/// happens next.
pub(super) fn disk_failure_words(e: &SpoolError) -> String {
    match e {
        SpoolError::Missing { dir } if dir.ends_with("spool/run") => format!(
            "{e}; stopping: the tasks whose files it held cannot be run again (their points logs stay in var/log/tsk/); nothing else is lost, and the next start makes the directory again"
        ),
        SpoolError::Missing { .. } => format!(
            "{e}; stopping: what it held is gone; nothing else is lost (what was not written stays in in/ or run/), and the next start makes the directory again"
        ),
        e => format!(
            "the disk failed: {e}; stopping (nothing is lost: what was not written stays in in/ or run/, and the next start completes it)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_not_called_a_failed_fsync() {
        let missing = SpoolError::Missing {
            dir: "/r/var/spool/run".into(),
        };
        let words = disk_failure_words(&missing);
        assert!(words.contains("/r/var/spool/run is missing"), "{words}");
        assert!(
            words.contains("next start makes the directory again"),
            "{words}"
        );
        assert!(!words.contains("page cache"), "{words}");
        let full = SpoolError::Write {
            path: "/r/x".into(),
            source: std::io::Error::from_raw_os_error(nix::libc::ENOSPC),
        };
        assert!(disk_failure_words(&full).starts_with("the disk failed: failed to write /r/x"));
    }
}
