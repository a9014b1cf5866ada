//! A standalone task's payload and headers while it waits: they stay in
//! its `run/` file (the durable truth, written before the task was
//! queued), not in memory, and are read back — a bounded read — when the
//! task is offered, when its record is written before it ever ran
//! (cancelled or timed out while queued), and when its priority changes.
//! So a queued task costs the engine its ids and options, whatever its
//! payload (see `state::Node`).
//!
//! Only the two keys are taken (the rest of the file is not checked
//! again: intake or the engine wrote it), and a file that turned bad is an
//! error with the reason, which fails the task; never a panic.

use serde_json::Value;

use super::state::Loaded;
use crate::layout::Root;
use crate::model::names::TaskId;
use crate::model::task::Object;
use crate::store::spool::{self, SpoolError};
use crate::tasker::REPLY_LIMIT;

/// Why a task's payload and headers could not be read back from `run/`.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("cannot read its task file back: {0}")]
    Read(#[from] SpoolError),
    #[error("its task file {path} is invalid: {reason}")]
    Invalid { path: String, reason: String },
}

/// The largest `run/` file read back: the largest input, with a reply's
/// payload (an `uncompleted` reply rewrites the file) and room for the
/// keys the engine adds.
pub fn limit(input_limit: u64) -> u64 {
    input_limit
        .saturating_add(REPLY_LIMIT as u64)
        .saturating_add(64 * 1024)
}

/// Reads the payload and headers of task `id` from its `run/` file (at
/// most `limit` bytes).
pub fn read(root: &Root, id: &TaskId, limit: u64) -> Result<Loaded, BodyError> {
    let path = root.run_file(id);
    let bytes = spool::read_capped(&path, limit)?;
    parse(&bytes, id).map_err(|reason| BodyError::Invalid {
        path: root.relative(&path).display().to_string(),
        reason,
    })
}

/// The payload and headers of task `id`'s file (pure). Read as a map, as
/// intake read it (a key written twice counts once: its last value).
fn parse(bytes: &[u8], id: &TaskId) -> Result<Loaded, String> {
    let mut file: Object = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match file.get("id") {
        None | Some(Value::Null) => {}
        Some(Value::String(found)) if found == id.as_str() => {}
        Some(found) => return Err(format!("it holds task id {found}")),
    }
    Ok(Loaded {
        payload: object(&mut file, "payload")?,
        headers: object(&mut file, "headers")?,
    })
}

/// A key holding a JSON object; absent or `null`: empty.
fn object(file: &mut Object, key: &str) -> Result<Object, String> {
    match file.remove(key) {
        None | Some(Value::Null) => Ok(Object::new()),
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(format!("its \"{key}\" is not a JSON object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(s: &str) -> TaskId {
        s.parse().unwrap()
    }

    #[test]
    fn payload_and_headers_are_read_back_and_the_rest_skipped() {
        let file = json!({
            "id": "a1", "domain": "org", "tasker": "t", "priority": 3,
            "payload": {"n": 1, "deep": {"x": [1, 2]}}, "headers": {"by": "me"},
            "timeout": "30s", "flow": null
        });
        let got = parse(file.to_string().as_bytes(), &id("a1")).unwrap();
        assert_eq!(
            got.payload,
            json!({"n": 1, "deep": {"x": [1, 2]}})
                .as_object()
                .cloned()
                .unwrap()
        );
        assert_eq!(got.headers["by"], "me");
        // Absent or null: empty, as a task file's defaults.
        let got = parse(br#"{"id":"a1","payload":null}"#, &id("a1")).unwrap();
        assert_eq!(got, Loaded::default());
        // A key written twice (accepted at intake): its last value.
        let got = parse(br#"{"payload":{"a":1},"payload":{"b":2}}"#, &id("a1")).unwrap();
        assert_eq!(got.payload["b"], 2);
        assert!(!got.payload.contains_key("a"));
    }

    #[test]
    fn a_file_that_turned_bad_is_an_error_with_the_reason() {
        assert!(parse(b"", &id("a1")).unwrap_err().contains("EOF"));
        assert!(parse(b"{\"payload\":{", &id("a1")).is_err());
        assert!(parse(b"[1]", &id("a1")).is_err());
        assert_eq!(
            parse(br#"{"payload":"x"}"#, &id("a1")).unwrap_err(),
            "its \"payload\" is not a JSON object"
        );
        assert_eq!(
            parse(br#"{"headers":[]}"#, &id("a1")).unwrap_err(),
            "its \"headers\" is not a JSON object"
        );
        assert_eq!(
            parse(br#"{"id":"b2","payload":{}}"#, &id("a1")).unwrap_err(),
            "it holds task id \"b2\""
        );
    }

    #[test]
    fn a_missing_or_oversized_file_is_an_error_never_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        let err = read(&root, &id("a1"), 1024).unwrap_err();
        assert!(
            matches!(&err, BodyError::Read(e) if e.is_not_found()),
            "{err}"
        );
        std::fs::write(root.run_file(&id("a1")), vec![b' '; 2048]).unwrap();
        let err = read(&root, &id("a1"), 1024).unwrap_err();
        assert!(err.to_string().contains("larger than 1024 bytes"), "{err}");
        std::fs::write(
            root.run_file(&id("a1")),
            br#"{"id":"a1","payload":{"n":2}}"#,
        )
        .unwrap();
        assert_eq!(read(&root, &id("a1"), 1024).unwrap().payload["n"], 2);
    }
}
