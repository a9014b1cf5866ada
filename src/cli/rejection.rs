//! A task rejected at intake has no record, and its file may have gone to
//! `rejected/` under a name other than its id's: what `logs --follow` and
//! `wait` look at to tell it, with the reason.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use spoolflow::model::names::TaskId;
use spoolflow::read::Place;

pub(super) const NO_REASON: &str = "(no reason recorded)";

/// What tells that a task `logs --follow` or `wait` waits for was rejected
/// at intake (it then never has a record).
#[derive(Default)]
pub(super) struct Rejection {
    /// Its file in `in/` when the command started, by any name.
    pub waiting: Option<PathBuf>,
    /// It was rejected already then: the reason.
    pub already: Option<String>,
}

impl Rejection {
    /// The reason, once the task was rejected: its file left `in/` for
    /// `rejected/` (under its own name or `<id>.json`, or a `.N` variant
    /// of either when the name was taken there) since `since`, and it is
    /// neither queued, running nor ended. A few stats while the task lives.
    pub(super) fn look(
        &self,
        root: &spoolflow::Root,
        exid: &TaskId,
        since: SystemTime,
    ) -> Option<String> {
        if let Some(reason) = &self.already {
            return Some(reason.clone());
        }
        if root.run_file(exid).exists() || ended(root, exid) {
            return None;
        }
        let waiting = self.waiting.as_ref()?;
        if waiting.symlink_metadata().is_ok() {
            return None;
        }
        let own = format!("{exid}.json");
        let name = waiting.file_name().and_then(|n| n.to_str()).unwrap_or(&own);
        let rejected = root.rejected();
        let reason = [name, own.as_str()]
            .into_iter()
            .find_map(|name| newest_reason(&rejected, name, since));
        reason
    }
}

/// The reason of the rejection of `name` (or `name.N`) made since `since`.
fn newest_reason(rejected: &Path, name: &str, since: SystemTime) -> Option<String> {
    spoolflow::read::find::rejected_names(rejected, name)
        .into_iter()
        .filter(|candidate| rejected.join(candidate).symlink_metadata().is_ok())
        .find_map(|candidate| {
            let reason = rejected.join(format!("{candidate}.reason"));
            let fresh = reason
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            let reason = fresh.then(|| {
                spoolflow::read::find::read_reason(&reason)
                    .map(|r| r.trim_end().to_string())
                    .unwrap_or_else(|| NO_REASON.into())
            })?;
            // A cancel or priority request named like the task is no
            // rejection of the task.
            spoolflow::read::tasks::Request::of_reason(&reason)
                .is_none()
                .then_some(reason)
        })
}

pub(super) fn ended(root: &spoolflow::Root, exid: &TaskId) -> bool {
    let exists = |p: &Path| p.exists();
    exists(&root.done_file(exid)) || exists(&root.failed_file(exid))
}

impl Rejection {
    /// What the task's place when the command started tells.
    pub(super) fn of(place: Option<&Place>) -> Rejection {
        match place {
            Some(Place::In(path)) => Rejection {
                waiting: Some(path.clone()),
                already: None,
            },
            Some(Place::Rejected { reason, .. }) => Rejection {
                waiting: None,
                already: Some(reason.clone().unwrap_or_else(|| NO_REASON.into())),
            },
            _ => Rejection::default(),
        }
    }
}
