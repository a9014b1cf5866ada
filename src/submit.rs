//! `spoolflow submit`: writes a task file into `var/spool/in/` atomically
//! (a dotfile temporary, fsync, rename, fsync of the directory), whether or
//! not an engine runs; [`submit_batch`] and [`submit_lines`] write many at
//! once, all or nothing, with one sync for the batch (see [`batch`]).

pub mod batch;

pub use batch::{submit_batch, submit_lines, BatchOptions, BatchSync, Defaults, Fault, LineError};

use serde_json::Value;

use crate::layout::Root;
use crate::model::names::{Domain, TaskId, Taskee};
use crate::model::task::Object;
use crate::store::spool::{self, SpoolError};

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Not JSON, or JSON with a key twice in an object (refused as the
    /// engine refuses it in a task file).
    #[error("the payload is not valid: {0}")]
    PayloadJson(crate::model::task::InputError),
    #[error("the payload must be a JSON object")]
    PayloadNotObject,
    #[error("duplicate id {0}: a task with this id is already in the spool")]
    Duplicate(TaskId),
    /// The engine would reject it (as `submit --batch` refuses it).
    #[error("the task file would be {size} bytes, more than the engine takes ({limit})")]
    TooLarge { size: usize, limit: u64 },
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Root(#[from] crate::layout::RootError),
    /// A batch with bad lines: nothing was written.
    #[error("nothing submitted: {} of {total} tasks are bad (a batch is all or nothing)", .faults.len())]
    Refused { faults: Vec<Fault>, total: usize },
    /// A batch that stopped part way: `submitted` are in `in/`, the rest
    /// are not.
    #[error("{}", partial_message(.error, .submitted.len(), *.total))]
    Partial {
        submitted: Vec<TaskId>,
        total: usize,
        error: Box<SubmitError>,
    },
    #[error("{}", unserved_message(.domain, .suggestion.as_deref(), .served))]
    Unserved {
        domain: Domain,
        /// The closest served domain, if one is close enough.
        suggestion: Option<String>,
        /// The directories of `tsk/` that serve tasks (`any` aside).
        served: Vec<String>,
    },
}

/// The message of [`SubmitError::Unserved`].
fn unserved_message(domain: &Domain, suggestion: Option<&str>, served: &[String]) -> String {
    let then = match (suggestion, served) {
        (Some(s), _) => format!("did you mean {}?", crate::text::quoted(s)),
        (None, []) => "tsk/ serves no domain yet".to_string(),
        (None, some) if some.len() <= 10 => format!("served: {}", some.join(", ")),
        (None, some) => format!("served: {}, …", some[..10].join(", ")),
    };
    format!(
        "nothing serves domain {domain}: no taskmaster and no tasker in tsk/{domain}, up its branch or in tsk/any; {then} (--force submits it anyway)"
    )
}

/// The message of [`SubmitError::Partial`].
fn partial_message(error: &SubmitError, submitted: usize, total: usize) -> String {
    if submitted == total {
        format!("{error}; all {total} tasks are in var/spool/in/ (their ids are printed), but they may not survive a power loss")
    } else {
        format!("{error}; {submitted} of {total} tasks were submitted (their ids are printed), the rest were not")
    }
}

/// Whether the directory `tsk/<d>/` serves tasks: it holds a
/// `taskmaster.rhai` or an entry named like a taskee (not `flows/`).
fn dir_serves(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            (name == "taskmaster.rhai" && !is_dir)
                || (name.parse::<Taskee>().is_ok() && !(name == "flows" && is_dir))
        })
}

/// The directories of `tsk/` that serve tasks, sorted: domains and `any`.
pub fn serving_dirs(root: &Root) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(root.tsk())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n == "any" || n.parse::<Domain>().is_ok())
        .filter(|n| dir_serves(&root.tsk().join(n)))
        .collect();
    dirs.sort();
    dirs
}

/// Fails unless something serves `domain` (SPEC 5, 6): a taskmaster or a
/// tasker in `tsk/<domain>`, up its branch, or in `tsk/any` — the same
/// directories the engine looks in. A domain nothing serves is a typo far
/// more often than a plan; the error names the closest served domain.
pub fn check_served(root: &Root, domain: &Domain) -> Result<(), SubmitError> {
    let serving = serving_dirs(root);
    if domain
        .branch()
        .chain(std::iter::once("any"))
        .any(|d| serving.iter().any(|s| s == d))
    {
        return Ok(());
    }
    let served: Vec<String> = serving.into_iter().filter(|d| d != "any").collect();
    Err(SubmitError::Unserved {
        domain: domain.clone(),
        suggestion: suggest_domain(domain, &served),
        served,
    })
}

/// The served domain closest to `typed` (see [`crate::text::closest`]),
/// also trying each served domain with the rest of `typed`'s labels
/// (`org.exmaple.sales` → `org.example.sales`, served by `org.example`).
pub fn suggest_domain(typed: &Domain, served: &[String]) -> Option<String> {
    let labels: Vec<&str> = typed.as_str().split('.').collect();
    let mut candidates = Vec::new();
    for d in served {
        let n = d.split('.').count();
        if labels.len() > n {
            candidates.push(format!("{d}.{}", labels[n..].join(".")));
        }
        candidates.push(d.clone());
    }
    crate::text::closest(typed.as_str(), candidates)
}

/// What to submit.
#[derive(Debug, Clone)]
pub struct Submission {
    pub domain: Domain,
    pub tasker: Option<Taskee>,
    pub id: Option<TaskId>,
    pub priority: i32,
    pub payload: Object,
}

/// Parses a payload given on the command line or stdin (empty means `{}`).
pub fn parse_payload(text: &str) -> Result<Object, SubmitError> {
    if text.trim().is_empty() {
        return Ok(Object::new());
    }
    use crate::model::task::{parse_object, InputError};
    parse_object(text.as_bytes()).map_err(|e| match e {
        InputError::NotObject(_) => SubmitError::PayloadNotObject,
        e => SubmitError::PayloadJson(e),
    })
}

/// Where a task id may be taken already: `in/` and its domains'
/// directories (listed once, for a whole batch), `run/`, `done/` and
/// `failed/`.
pub(crate) struct TakenIds {
    in_dirs: Vec<std::path::PathBuf>,
}

impl TakenIds {
    /// Lists the domains' directories of `in/` — unless `in/` has no
    /// subdirectory, which its link count tells at once where the
    /// filesystem keeps one (2: itself and its entry in its parent), so a
    /// submit does not read a long backlog of files for nothing.
    pub(crate) fn new(root: &Root) -> TakenIds {
        use std::os::unix::fs::MetadataExt;
        let spool_in = root.spool_in();
        let mut in_dirs = vec![spool_in.clone()];
        if std::fs::metadata(&spool_in).is_ok_and(|m| m.nlink() == 2) {
            return TakenIds { in_dirs };
        }
        in_dirs.extend(
            std::fs::read_dir(&spool_in)
                .into_iter()
                .flatten()
                .flatten()
                .filter(crate::store::intake::is_domain_dir)
                .map(|e| e.path()),
        );
        TakenIds { in_dirs }
    }

    /// Whether a task with this id is waiting in `in/` or a domain's
    /// directory there (by file name: one naming it only inside is
    /// rejected as a duplicate by the engine), or is in `run/`, `done/` or
    /// `failed/`.
    pub(crate) fn contains(&self, root: &Root, id: &TaskId) -> bool {
        let name = format!("{id}.json");
        self.in_dirs.iter().any(|d| d.join(&name).exists())
            || root.run_file(id).exists()
            || root.done_file(id).exists()
            || root.failed_file(id).exists()
    }
}

/// Writes the task file and returns its id.
pub fn submit(root: &Root, s: Submission) -> Result<TaskId, SubmitError> {
    root.ensure_exists()?;
    // A generated id is new by construction: only one given is looked for.
    if let Some(id) = &s.id {
        if TakenIds::new(root).contains(root, id) {
            return Err(SubmitError::Duplicate(id.clone()));
        }
    }
    let id = s.id.unwrap_or_else(TaskId::generate);
    let name = format!("{id}.json");
    let mut obj = Object::new();
    obj.insert("id".into(), id.as_str().into());
    obj.insert("domain".into(), s.domain.as_str().into());
    if let Some(t) = &s.tasker {
        obj.insert("tasker".into(), t.as_str().into());
    }
    if s.priority != 0 {
        obj.insert("priority".into(), s.priority.into());
    }
    obj.insert("payload".into(), Value::Object(s.payload));
    let mut bytes = serde_json::to_vec_pretty(&Value::Object(obj)).expect("a JSON map serializes");
    bytes.push(b'\n');
    let limit = crate::engine::INPUT_LIMIT;
    if bytes.len() as u64 > limit {
        let size = bytes.len();
        return Err(SubmitError::TooLarge { size, limit });
    }
    match spool::write_atomic(&root.spool_in(), &name, &bytes, true, true) {
        Ok(_) => Ok(id),
        Err(SpoolError::Exists(_)) => Err(SubmitError::Duplicate(id)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_larger_than_the_engine_takes_is_refused_and_not_written() {
        let (_tmp, root) = crate::layout::temp_root();
        let mut payload = Object::new();
        let big = "x".repeat(crate::engine::INPUT_LIMIT as usize);
        payload.insert("blob".into(), big.into());
        let s = Submission {
            domain: "org".parse().unwrap(),
            tasker: None,
            id: None,
            priority: 0,
            payload,
        };
        let e = submit(&root, s).unwrap_err();
        assert!(matches!(e, SubmitError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("more than the engine takes"), "{e}");
        let left = std::fs::read_dir(root.spool_in()).unwrap().count();
        assert_eq!(left, 0);
    }

    #[test]
    fn the_closest_served_domain_is_suggested() {
        let served = ["org.example".to_string(), "org.other".to_string()];
        let d = |s: &str| s.parse::<Domain>().unwrap();
        assert_eq!(
            suggest_domain(&d("org.exmaple"), &served).as_deref(),
            Some("org.example")
        );
        assert_eq!(
            suggest_domain(&d("org.exmaple.sales"), &served).as_deref(),
            Some("org.example.sales")
        );
        assert_eq!(suggest_domain(&d("billing"), &served), None);
        assert_eq!(suggest_domain(&d("org.example"), &[]), None);
    }

    #[test]
    fn a_domain_is_served_up_its_branch_or_by_any() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        let d = |s: &str| s.parse::<Domain>().unwrap();
        assert!(check_served(&root, &d("org")).is_err());
        std::fs::create_dir_all(root.tsk().join("org.example/flows")).unwrap();
        // A flows/ directory alone serves nothing.
        assert!(check_served(&root, &d("org.example")).is_err());
        std::fs::write(root.tsk().join("org.example/taskmaster.rhai"), "").unwrap();
        assert!(check_served(&root, &d("org.example.sales")).is_ok());
        assert!(check_served(&root, &d("org.other")).is_err());
        std::fs::write(root.tsk().join("any/echo"), "").unwrap();
        assert!(check_served(&root, &d("org.other")).is_ok());
    }
}
