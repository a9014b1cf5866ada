//! `spoolflow submit`: writes a task file into `var/spool/in/` atomically
//! (a dotfile temporary, fsync, rename, fsync of the directory), whether or
//! not an engine runs.

use serde_json::Value;

use crate::layout::Root;
use crate::model::names::{Domain, TaskId, Taskee};
use crate::model::task::Object;
use crate::store::spool::{self, SpoolError};

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the payload is not valid JSON: {0}")]
    PayloadJson(serde_json::Error),
    #[error("the payload must be a JSON object")]
    PayloadNotObject,
    #[error("duplicate id {0}: a task with this id is already in the spool")]
    Duplicate(TaskId),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Root(#[from] crate::layout::RootError),
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
    match serde_json::from_str(text).map_err(SubmitError::PayloadJson)? {
        Value::Object(o) => Ok(o),
        _ => Err(SubmitError::PayloadNotObject),
    }
}

/// Writes the task file and returns its id.
pub fn submit(root: &Root, s: Submission) -> Result<TaskId, SubmitError> {
    root.ensure_exists()?;
    let id = s.id.unwrap_or_else(TaskId::generate);
    let name = format!("{id}.json");
    if root.spool_in().join(&name).exists()
        || root.run_file(&id).exists()
        || root.done_file(&id).exists()
        || root.failed_file(&id).exists()
    {
        return Err(SubmitError::Duplicate(id));
    }
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
    match spool::write_atomic(&root.spool_in(), &name, &bytes, true, true) {
        Ok(_) => Ok(id),
        Err(SpoolError::Exists(_)) => Err(SubmitError::Duplicate(id)),
        Err(e) => Err(e.into()),
    }
}
