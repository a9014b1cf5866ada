//! Wire types (SPEC sections 3, 4 and 9): the task file users drop
//! ([`TaskFile`]), the accepted task the engine runs ([`Task`]), the final
//! [`Record`], the lifecycle [`State`], error kinds, and durations.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::names::{Domain, Exid, Nid, TaskId, Taskee};
use crate::text::{did_you_mean, quoted};

/// A JSON object.
pub type Object = Map<String, Value>;

/// Why a task file was refused; the message is the `rejected/<name>.reason`
/// line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("invalid JSON at line {line} column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
        /// The bytes end before the JSON does: a file cut short, or one
        /// whose writer is still at work.
        eof: bool,
    },
    #[error("the file starts with a byte-order mark ({0}); save it as UTF-8 without BOM")]
    ByteOrderMark(&'static str),
    #[error(
        "duplicate key {} at line {line} column {column}: a key may appear only once in an object",
        quoted(key)
    )]
    DuplicateKey {
        key: String,
        line: usize,
        column: usize,
    },
    #[error("a task file must hold a JSON object, not {0}")]
    NotObject(&'static str),
    #[error("unknown key {}{}", quoted(.0), did_you_mean(.0, TASK_KEYS))]
    UnknownKey(String),
    #[error("{} must be {expected}", quoted(key))]
    BadValue {
        key: &'static str,
        expected: &'static str,
    },
    #[error("{0}")]
    Name(#[from] crate::model::names::NameError),
    #[error("invalid duration for {}: {message}", quoted(key))]
    Duration { key: &'static str, message: String },
    #[error("no domain: give \"domain\" or drop the file into in/<domain>/")]
    NoDomain,
    #[error("a task may hold \"tasker\" or \"flow\", not both")]
    TaskerAndFlow,
}

// ---------------------------------------------------------------- durations

/// A duration as written in task files and `tasker.json`: `"250ms"`,
/// `"30s"`, `"5m"`, `"2h"`, `"1d"`, or a number of seconds (fractions
/// allowed), as a JSON number or string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, "s"),
        };
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => {
                return Err(format!(
                    "unknown unit {} in {} (use ms, s, m, h or d)",
                    quoted(unit),
                    quoted(s)
                ))
            }
        };
        let n: f64 = num.trim().parse().map_err(|_| {
            format!(
                "{} is not a duration like \"250ms\", \"30s\", \"5m\", \"2h\", \"1d\"",
                quoted(s)
            )
        })?;
        Dur::from_secs_f64(n * scale)
            .ok_or_else(|| format!("{} is negative or too large", quoted(s)))
    }
}

impl Dur {
    fn from_secs_f64(secs: f64) -> Option<Dur> {
        // Bound at 100 years: beyond that a timeout is a typo.
        if secs.is_finite() && (0.0..=3_153_600_000.0).contains(&secs) {
            Some(Dur(Duration::from_secs_f64(secs)))
        } else {
            None
        }
    }

    /// Parses a JSON value (string or number).
    pub fn from_json(v: &Value) -> Result<Dur, String> {
        match v {
            Value::String(s) => s.parse(),
            Value::Number(n) => n
                .as_f64()
                .and_then(Dur::from_secs_f64)
                .ok_or_else(|| format!("{n} is negative or too large")),
            _ => Err("expected a string such as \"30s\" or a number of seconds".into()),
        }
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 != 0 || ms == 0 {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: \"250ms\", \"30s\", \"5m\", \"2h\", \"1d\", or a number of seconds (fractions allowed), as a string or a number.",
            "anyOf": [
                {
                    "type": "string",
                    "pattern": "^\\s*\\+?([0-9]+\\.?[0-9]*|\\.[0-9]+)\\s*(ms|s|m|h|d)?\\s*$"
                },
                { "type": "number", "minimum": 0, "maximum": 3_153_600_000u64 }
            ]
        })
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let v = Value::deserialize(d)?;
        Dur::from_json(&v).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------- task file

/// Per-task options that override a tasker's config (SPEC 3, 6, 7).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on_timeout: Option<bool>,
}

impl TaskOptions {
    /// The options a task set, as its record's `options` (`None` when it
    /// set none), so that `spoolflow retry` queues it with them again.
    pub fn to_record(&self) -> Option<Object> {
        match serde_json::to_value(self) {
            Ok(Value::Object(o)) if !o.is_empty() => Some(o),
            _ => None,
        }
    }
}

/// A task file as dropped into `var/spool/in/`, parsed and checked key by
/// key so that every refusal has a precise reason.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFile {
    pub domain: Option<Domain>,
    pub tasker: Option<Taskee>,
    pub payload: Object,
    pub id: Option<TaskId>,
    pub priority: i32,
    pub headers: Object,
    pub options: TaskOptions,
    /// A flow (SPEC 12): a tree, or the name of a stored flow; checked and
    /// resolved at intake.
    pub flow: Option<Value>,
}

const TASK_KEYS: &[&str] = &[
    "domain",
    "tasker",
    "payload",
    "id",
    "priority",
    "headers",
    "timeout",
    "start_timeout",
    "retries",
    "retry_on_timeout",
    "flow",
];

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl TaskFile {
    /// Parses the bytes of a task file.
    pub fn parse(bytes: &[u8]) -> Result<TaskFile, InputError> {
        TaskFile::from_object(parse_object(bytes)?)
    }

    /// Checks a parsed JSON object key by key. Fields are taken in a fixed
    /// order so that a file with several faults always gets the same reason.
    pub fn from_object(mut obj: Object) -> Result<TaskFile, InputError> {
        check_keys(&obj)?;
        let domain = string(&mut obj, "domain")?.map(|s| s.parse()).transpose()?;
        let tasker = string(&mut obj, "tasker")?.map(|s| s.parse()).transpose()?;
        let id = string(&mut obj, "id")?.map(|s| s.parse()).transpose()?;
        let payload = object(&mut obj, "payload")?;
        let headers = object(&mut obj, "headers")?;
        let priority = priority(&mut obj)?;
        let options = options(&mut obj)?;
        let flow = obj.remove("flow").filter(|f| !f.is_null());
        Ok(TaskFile {
            domain,
            tasker,
            payload,
            id,
            priority,
            headers,
            options,
            flow,
        })
    }
}

/// Parses bytes that must hold one JSON object (a task file, or one line
/// of a batch), before any key is looked at. A byte-order mark is named
/// as such, and a key that appears twice in any object of the file is
/// refused (see [`strict`]).
pub fn parse_object(bytes: &[u8]) -> Result<Object, InputError> {
    if let Some(bom) = byte_order_mark(bytes) {
        return Err(InputError::ByteOrderMark(bom));
    }
    match strict::from_slice(bytes)? {
        Value::Object(obj) => Ok(obj),
        other => Err(InputError::NotObject(type_name(&other))),
    }
}

/// The byte-order mark `bytes` start with, as its bytes, if any (UTF-8's,
/// or UTF-16's, which JSON files must not be in either).
fn byte_order_mark(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        Some("EF BB BF")
    } else if bytes.starts_with(&[0xFF, 0xFE]) {
        Some("FF FE, UTF-16")
    } else if bytes.starts_with(&[0xFE, 0xFF]) {
        Some("FE FF, UTF-16")
    } else {
        None
    }
}

/// Refuses unknown keys and flows before any value is looked at: a typo
/// in a key name is the likelier fault than a bad value.
fn check_keys(obj: &Object) -> Result<(), InputError> {
    if let Some(k) = obj.keys().find(|k| !TASK_KEYS.contains(&k.as_str())) {
        return Err(InputError::UnknownKey(k.clone()));
    }
    // `null` counts as a missing key.
    let set = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    if set("flow") && set("tasker") {
        return Err(InputError::TaskerAndFlow);
    }
    Ok(())
}

/// An optional string; `null` counts as absent.
fn string(obj: &mut Object, key: &'static str) -> Result<Option<String>, InputError> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(InputError::BadValue {
            key,
            expected: "a string",
        }),
    }
}

/// An optional JSON object, empty when absent or `null`.
fn object(obj: &mut Object, key: &'static str) -> Result<Object, InputError> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(Object::new()),
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(InputError::BadValue {
            key,
            expected: "a JSON object",
        }),
    }
}

/// An optional duration (see [`Dur`]); `null` counts as absent.
fn duration(obj: &mut Object, key: &'static str) -> Result<Option<Dur>, InputError> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Dur::from_json(&v)
            .map(Some)
            .map_err(|message| InputError::Duration { key, message }),
    }
}

/// `priority`: an i32, 0 when absent, so that out-of-range numbers are
/// refused rather than wrapped.
fn priority(obj: &mut Object) -> Result<i32, InputError> {
    match obj.remove("priority") {
        None | Some(Value::Null) => Ok(0),
        Some(v) => super::json_int(&v)
            .and_then(|n| i32::try_from(n).ok())
            .ok_or(InputError::BadValue {
                key: "priority",
                expected: "an integer (i32)",
            }),
    }
}

/// The per-task options, in the order their faults are reported:
/// `retries`, `retry_on_timeout`, `timeout`, `start_timeout`.
fn options(obj: &mut Object) -> Result<TaskOptions, InputError> {
    let retries = retries(obj)?;
    let retry_on_timeout = retry_on_timeout(obj)?;
    Ok(TaskOptions {
        timeout: duration(obj, "timeout")?,
        start_timeout: duration(obj, "start_timeout")?,
        retries,
        retry_on_timeout,
    })
}

/// `retries`: a u32, so that a negative count is refused, not clamped.
fn retries(obj: &mut Object) -> Result<Option<u32>, InputError> {
    match obj.remove("retries") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => super::json_count(&v).map(Some).ok_or(InputError::BadValue {
            key: "retries",
            expected: super::COUNT_EXPECTED,
        }),
    }
}

/// `retry_on_timeout`: a boolean only (no truthy strings or numbers).
fn retry_on_timeout(obj: &mut Object) -> Result<Option<bool>, InputError> {
    match obj.remove("retry_on_timeout") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(InputError::BadValue {
            key: "retry_on_timeout",
            expected: "true or false",
        }),
    }
}

/// serde_json's message without its trailing " at line L column C".
fn json_error_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

// ---------------------------------------------------------------- strict

/// JSON parsed with every object's keys checked for duplicates.
#[path = "task_strict.rs"]
mod strict;

// ---------------------------------------------------------------- states

/// Where a task is in its life; serialized the same way in records, points
/// and `--json` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Completed,
    Failed,
    Aborted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Aborted => "aborted",
        }
    }
}

/// The kind of a task's error, which decides retries (see docs/records.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    User,
    Work,
    Timeout,
    Config,
    Refused,
    Aborted,
}

/// `{ "kind": …, "message": … }` in records and `failed` points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskError {
    pub kind: ErrorKind,
    pub message: String,
}

impl TaskError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> TaskError {
        TaskError {
            kind,
            message: message.into(),
        }
    }
}

/// An earlier refusal of a task, as the taskmaster sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub taskee: Taskee,
    pub reason: String,
}

/// A timestamp as written in points and records: RFC 3339, UTC,
/// microseconds.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

// ---------------------------------------------------------------- task

/// An accepted task: what `run/<id>.json` holds and what the engine runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: TaskId,
    pub exid: Exid,
    pub nid: Nid,
    pub domain: Domain,
    pub tasker: Option<Taskee>,
    pub payload: Object,
    pub priority: i32,
    pub headers: Object,
    pub options: TaskOptions,
    /// The flow's tree (SPEC 12) when this task is a flow: resolved (no
    /// stored flow names left) once the task is claimed.
    pub flow: Option<Value>,
}

impl Task {
    /// The task of a task file: the id is the file's, else the dropped
    /// file's stem when it is valid, else a generated one; the domain is
    /// the file's, else the spool directory's.
    pub fn from_file(
        file: TaskFile,
        stem: Option<&str>,
        dir_domain: Option<&Domain>,
    ) -> Result<Task, InputError> {
        let domain = match (file.domain, dir_domain) {
            (Some(d), _) => d,
            (None, Some(d)) => d.clone(),
            (None, None) => return Err(InputError::NoDomain),
        };
        let id = file
            .id
            .or_else(|| stem.and_then(|s| s.parse().ok()))
            .unwrap_or_else(TaskId::generate);
        Ok(Task {
            exid: id.clone(),
            id,
            nid: Nid::root(),
            domain,
            tasker: file.tasker,
            payload: file.payload,
            priority: file.priority,
            headers: file.headers,
            options: file.options,
            flow: file.flow,
        })
    }

    /// The task as a task file (what `run/<id>.json` holds when the engine
    /// writes it): every key filled in.
    pub fn to_file_json(&self) -> Value {
        file_json(&FileParts {
            id: &self.id,
            domain: &self.domain,
            tasker: self.tasker.as_ref(),
            priority: self.priority,
            payload: &self.payload,
            headers: &self.headers,
            options: &self.options,
            flow: self.flow.as_ref(),
        })
    }
}

/// The parts of a task file the engine writes into `run/`, borrowed from
/// wherever they are kept.
pub struct FileParts<'a> {
    pub id: &'a TaskId,
    pub domain: &'a Domain,
    pub tasker: Option<&'a Taskee>,
    pub priority: i32,
    pub payload: &'a Object,
    pub headers: &'a Object,
    pub options: &'a TaskOptions,
    pub flow: Option<&'a Value>,
}

/// A task file as the engine writes it into `run/`: every key filled in.
pub fn file_json(t: &FileParts<'_>) -> Value {
    let mut obj = Object::new();
    obj.insert("id".into(), t.id.as_str().into());
    obj.insert("domain".into(), t.domain.as_str().into());
    if let Some(tasker) = t.tasker {
        obj.insert("tasker".into(), tasker.as_str().into());
    }
    obj.insert("priority".into(), t.priority.into());
    obj.insert("payload".into(), Value::Object(t.payload.clone()));
    obj.insert("headers".into(), Value::Object(t.headers.clone()));
    if let Value::Object(o) = serde_json::to_value(t.options).unwrap_or_default() {
        obj.extend(o);
    }
    if let Some(flow) = t.flow {
        obj.insert("flow".into(), flow.clone());
    }
    Value::Object(obj)
}

// ---------------------------------------------------------------- record

/// A task's final record (`done/<id>.json`, `failed/<id>.json`), and the
/// shape of `list --json` and of a tasker's stdin with `"in": "task"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Record {
    pub id: TaskId,
    pub exid: Exid,
    pub nid: Nid,
    pub domain: Domain,
    pub tasker: Option<Taskee>,
    pub taskee: Option<Taskee>,
    pub tasker_path: Option<String>,
    pub state: State,
    pub reason: Option<String>,
    pub error: Option<TaskError>,
    pub attempts: u32,
    pub offers: u32,
    pub priority: i32,
    pub headers: Object,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub payload: Object,
    /// A flow's tree (see docs/flows.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<Value>,
    /// A flow's `on_error: "continue"` errors: `{ nid, kind, message }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Value>,
    /// A flow's task nodes that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<Value>>,
    /// When the first attempt's tasker started (`started_at` is the
    /// latest's): with `attempts_log`, durations stay honest across retries.
    /// `null` when no tasker started (and in a flow's record, whose
    /// `nodes` say when each ran).
    #[serde(default)]
    pub first_started_at: Option<String>,
    /// Each attempt that started: its number, start, end and outcome.
    #[serde(default)]
    pub attempts_log: Vec<AttemptLog>,
    /// The task file's own `timeout`, `start_timeout`, `retries` and
    /// `retry_on_timeout`, when it set any (so that `spoolflow retry`
    /// queues the task with them again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Object>,
}

/// One attempt of a task, as its record's `attempts_log` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AttemptLog {
    /// The attempt's number (counting on across `spoolflow retry`).
    pub attempt: u32,
    pub started_at: String,
    /// `None` while it runs (a `"in": "task"` tasker's own view).
    #[serde(default)]
    pub ended_at: Option<String>,
    /// How it ended: `completed`, `failed`, `aborted`, `retried`,
    /// `refused`, `uncompleted`, or `interrupted` (the engine stopped or
    /// died while it ran); `None` while it runs.
    #[serde(default)]
    pub outcome: Option<String>,
    /// The error kind of a failed or retried attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    /// The Slurm job of an attempt run on a cluster (see docs/slurm.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<u64>,
    /// The cluster node it ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
