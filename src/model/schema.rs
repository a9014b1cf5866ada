//! The JSON Schemas of spoolflow's formats (`spoolflow schema …`),
//! generated from the Rust types with `schemars`, so that they follow the
//! code: the task file (through [`TaskFileSchema`], a serde mirror of what
//! [`TaskFile::parse`](crate::model::task::TaskFile::parse) accepts, since
//! that one is checked by hand), a tasker directory's `tasker.json`, a
//! final record and a point.

use crate::model::names::{Domain, TaskId, Taskee};
use crate::model::point::Point;
use crate::model::task::{Dur, Object, Record};
use crate::tasker::TaskerConfig;
use schemars::{JsonSchema, Schema};
use serde::Deserialize;

/// The formats that have a schema, by the name `spoolflow schema` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A task file dropped into `var/spool/in/`.
    Task,
    /// A tasker directory's `tasker.json`.
    Tasker,
    /// A final record in `var/spool/done/` or `var/spool/failed/`.
    Record,
    /// One line of `var/log/tsk/<exid>.log`.
    Point,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Task, Format::Tasker, Format::Record, Format::Point];

    /// The format's name (`task`, `tasker`, `record`, `point`), also the
    /// stem of its file under `docs/schemas/`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Task => "task",
            Format::Tasker => "tasker",
            Format::Record => "record",
            Format::Point => "point",
        }
    }

    /// The schema, as a JSON value.
    pub fn schema(self) -> Schema {
        let mut schema = match self {
            Format::Task => schemars::schema_for!(TaskFileSchema),
            Format::Tasker => schemars::schema_for!(TaskerConfig),
            Format::Record => schemars::schema_for!(Record),
            Format::Point => schemars::schema_for!(Point),
        };
        schema.insert("title".into(), self.title().into());
        schema
    }

    /// The schema as pretty JSON with a final newline: what
    /// `spoolflow schema` prints and `docs/schemas/<name>.schema.json` holds.
    pub fn pretty(self) -> String {
        let mut text = serde_json::to_string_pretty(&self.schema()).expect("a schema serializes");
        text.push('\n');
        text
    }

    fn title(self) -> &'static str {
        match self {
            Format::Task => "spoolflow task file",
            Format::Tasker => "spoolflow tasker.json",
            Format::Record => "spoolflow record",
            Format::Point => "spoolflow point",
        }
    }
}

/// A task file as dropped into `var/spool/in/` (or `var/spool/in/<domain>/`).
/// Only `domain` is needed, and not even that inside `in/<domain>/`; a
/// `null` value counts as absent. A file holds `tasker` or `flow`, not both.
//
// Used only for the schema and its tests: the engine parses task files
// with `TaskFile::parse`, key by key, for precise reasons.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("not" = {
    "required": ["tasker", "flow"],
    "properties": { "tasker": { "type": "string" }, "flow": { "not": { "type": "null" } } }
}))]
pub struct TaskFileSchema {
    /// The task's domain, e.g. `org.example.sales`.
    pub domain: Option<Domain>,
    /// The requested taskee (the taskmaster may choose another).
    pub tasker: Option<Taskee>,
    /// The payload the tasker reads (default `{}`).
    pub payload: Option<Object>,
    /// The task id (default: the file's stem when it is a valid id, else a
    /// generated one).
    pub id: Option<TaskId>,
    /// Higher starts first (default 0).
    #[schemars(range(min = i32::MIN, max = i32::MAX))]
    pub priority: Option<i32>,
    /// Free-form headers, seen by the taskmaster (and by taskers with
    /// `"in": "task"`).
    pub headers: Option<Object>,
    /// One run's bound, over the tasker's.
    pub timeout: Option<Dur>,
    /// The bound from `created` to `started`, over the tasker's.
    pub start_timeout: Option<Dur>,
    /// Retries of `work` errors, over the tasker's (default 3).
    #[schemars(range(max = u32::MAX))]
    pub retries: Option<u32>,
    /// Whether a timed-out run is retried, over the tasker's.
    pub retry_on_timeout: Option<bool>,
    /// A flow instead of a tasker: a tree of nodes, or the name of a stored
    /// flow (`tsk/<domain>/flows/NAME.json`). Its tree is checked when the
    /// task is taken.
    pub flow: Option<FlowSchema>,
}

/// A flow: a tree of nodes (an object), or the name of a stored flow.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FlowSchema {
    /// The name of a stored flow.
    Name(String),
    /// A tree of nodes (`task`, `sequence`, `concurrence`, `if`, `set`,
    /// `each`, `sleep`, `flow`); checked when the task is taken.
    Tree(Object),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::TaskFile;
    use serde_json::Value;

    /// Whether a task file's JSON deserializes as [`TaskFileSchema`] (the
    /// serde side of the mirror) and holds not both `tasker` and `flow`.
    fn mirror_accepts(bytes: &[u8]) -> bool {
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(bytes) else {
            return false;
        };
        let set = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
        !(set("tasker") && set("flow"))
            && serde_json::from_value::<TaskFileSchema>(Value::Object(obj)).is_ok()
    }

    fn validator(format: Format) -> jsonschema::Validator {
        jsonschema::validator_for(&serde_json::to_value(format.schema()).unwrap())
            .expect("the schema compiles")
    }

    /// Task files: every example of the repository, and hand-made cases at
    /// the edges of what `TaskFile::parse` takes.
    fn task_files() -> Vec<(String, Vec<u8>)> {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(repo.join("examples/tasks"))
            .expect("examples/tasks")
            .flatten()
            .map(|e| {
                let p = e.path();
                (p.display().to_string(), std::fs::read(&p).unwrap())
            })
            .collect();
        files.sort();
        let cases = [
            r#"{"domain":"org"}"#,
            r#"{}"#,
            r#"{"domain":null,"payload":null,"flow":null}"#,
            r#"{"domain":"org.example.sales","tasker":"stamp","payload":{"a":1},"id":"order-1234",
                "priority":-3,"headers":{"by":"x"},"timeout":"30s","start_timeout":2.5,
                "retries":0,"retry_on_timeout":true}"#,
            r#"{"domain":"org","flow":"checksums"}"#,
            r#"{"domain":"org","flow":{"task":"a"}}"#,
            r#"{"domain":"org","tasker":"a","flow":{"task":"a"}}"#,
            r#"{"domain":"org","tasker":"a","flow":null}"#,
            r#"{"domain":"org","prioity":1}"#,
            r#"{"domain":"any"}"#,
            r#"{"domain":"any.x"}"#,
            r#"{"domain":"Org"}"#,
            r#"{"domain":"org..x"}"#,
            r#"{"tasker":"a.b"}"#,
            r#"{"id":"a/b"}"#,
            r#"{"payload":"x"}"#,
            r#"{"headers":[]}"#,
            r#"{"priority":1.5}"#,
            r#"{"priority":3000000000}"#,
            r#"{"retries":-1}"#,
            r#"{"retry_on_timeout":"yes"}"#,
            r#"{"timeout":"5x"}"#,
            r#"{"timeout":"250ms","start_timeout":" 1.5h "}"#,
            r#"{"timeout":-1}"#,
            r#"[1]"#,
        ];
        for (i, c) in cases.iter().enumerate() {
            files.push((format!("case {i}: {c}"), c.as_bytes().to_vec()));
        }
        files
    }

    #[test]
    fn the_task_mirror_accepts_what_task_file_parse_accepts() {
        let schema = validator(Format::Task);
        for (name, bytes) in task_files() {
            let parsed = TaskFile::parse(&bytes);
            assert_eq!(
                mirror_accepts(&bytes),
                parsed.is_ok(),
                "serde mirror and TaskFile::parse disagree on {name}: {parsed:?}"
            );
            let value: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                schema.is_valid(&value),
                parsed.is_ok(),
                "schema and TaskFile::parse disagree on {name}: {parsed:?}"
            );
        }
    }

    #[test]
    fn the_repository_taskers_validate() {
        let schema = validator(Format::Tasker);
        let tsk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tsk");
        let mut seen = 0;
        for entry in walkdir::WalkDir::new(tsk).into_iter().flatten() {
            if entry.file_name() == "tasker.json" {
                let bytes = std::fs::read(entry.path()).unwrap();
                assert!(TaskerConfig::parse(&bytes).is_ok());
                let value: Value = serde_json::from_slice(&bytes).unwrap();
                assert!(schema.is_valid(&value), "{}", entry.path().display());
                seen += 1;
            }
        }
        assert!(seen > 0, "the repository has a tasker.json");
        for bad in [
            r#"{}"#,
            r#"{"cmd":[]}"#,
            r#"{"cmd":""}"#,
            r#"{"cmd":"x","colour":1}"#,
            r#"{"cmd":"x","in":"stdin"}"#,
            r#"{"cmd":"x","max_concurrent":0}"#,
            r#"{"cmd":"x","concurrency":[{"key":"book","limit":1}]}"#,
            r#"{"cmd":"x","concurrency":[{"key":"payload.","limit":1}]}"#,
            r#"{"cmd":"x","concurrency":[{"key":"payload.a","limit":0}]}"#,
            r#"{"cmd":"x","timeout":"soon"}"#,
        ] {
            assert!(TaskerConfig::parse(bad.as_bytes()).is_err(), "{bad}");
            let value: Value = serde_json::from_str(bad).unwrap();
            assert!(!schema.is_valid(&value), "the schema refuses {bad}");
        }
    }

    #[test]
    fn every_schema_names_its_format() {
        for f in Format::ALL {
            let text = f.pretty();
            assert!(text.ends_with("}\n"));
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["title"], f.title());
            assert_eq!(v["type"], "object", "{}", f.name());
        }
    }
}
