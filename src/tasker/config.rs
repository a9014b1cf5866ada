//! A tasker directory's `tasker.json` (SPEC section 6): its keys, parsed
//! and validated (unknown keys, bad types and bad durations are errors).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::model::task::Dur;
use crate::text::quoted;

/// `cmd` of a `tasker.json`: an argv array or a `sh -c` string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Cmd {
    /// An argv array, run as it is (`PATH` looked up for the first word).
    Argv(#[schemars(length(min = 1))] Vec<String>),
    /// A command line run with `/bin/sh -c`.
    Shell(#[schemars(length(min = 1))] String),
}

/// What a tasker gets on stdin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Input {
    #[default]
    Payload,
    Task,
}

/// A `{ "key": "payload.book", "limit": 1 }` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyKey {
    /// A path into the task: `payload.…` or `headers.…`.
    #[schemars(regex(pattern = r"^(payload|headers)\..*[^.]$"))]
    pub key: String,
    /// At most this many running tasks of the tasker share one value.
    #[schemars(range(min = 1))]
    pub limit: u32,
}

/// A tasker directory's `tasker.json`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("required" = ["cmd"]))]
pub struct TaskerConfig {
    /// What to run: an argv array, or a string run with `/bin/sh -c`.
    #[serde(default)]
    #[schemars(required, with = "Cmd")]
    pub cmd: Option<Cmd>,
    /// What the tasker reads on stdin: the payload (default) or the whole task.
    #[serde(default, rename = "in")]
    pub input: Input,
    /// One run's bound (default: none).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// The bound from `created` to `started` (default: none).
    #[serde(default)]
    pub start_timeout: Option<Dur>,
    /// Retries of `work` errors (default 3).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Whether a timed-out run is retried too (default false).
    #[serde(default)]
    pub retry_on_timeout: Option<bool>,
    /// At most this many runs of this tasker at once.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_concurrent: Option<u32>,
    /// Limits per value of a path into the task.
    #[serde(default)]
    pub concurrency: Vec<ConcurrencyKey>,
    /// Environment variables added to the tasker's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The keys of a `tasker.json`.
const TASKER_KEYS: &[&str] = &[
    "cmd",
    "in",
    "timeout",
    "start_timeout",
    "retries",
    "retry_on_timeout",
    "max_concurrent",
    "concurrency",
    "env",
];

impl TaskerConfig {
    /// Parses and validates a `tasker.json`.
    pub fn parse(bytes: &[u8]) -> Result<TaskerConfig, String> {
        if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(bytes) {
            if let Some(k) = o.keys().find(|k| !TASKER_KEYS.contains(&k.as_str())) {
                return Err(format!(
                    "unknown key {}{}",
                    quoted(k),
                    crate::text::did_you_mean(k, TASKER_KEYS)
                ));
            }
        }
        let config: TaskerConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        match &config.cmd {
            None => return Err("missing key \"cmd\"".into()),
            Some(Cmd::Argv(v)) if v.is_empty() || v[0].is_empty() => {
                return Err("\"cmd\" must not be empty".into())
            }
            Some(Cmd::Shell(s)) if s.trim().is_empty() => {
                return Err("\"cmd\" must not be empty".into())
            }
            _ => {}
        }
        if config.max_concurrent == Some(0) {
            return Err("\"max_concurrent\" must be at least 1".into());
        }
        for c in &config.concurrency {
            if !(c.key.starts_with("payload.") || c.key.starts_with("headers."))
                || c.key.ends_with('.')
            {
                return Err(format!(
                    "concurrency key {} must start with \"payload.\" or \"headers.\"",
                    quoted(&c.key)
                ));
            }
            if c.limit == 0 {
                return Err(format!(
                    "concurrency limit of {} must be at least 1",
                    quoted(&c.key)
                ));
            }
        }
        for k in config.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("invalid environment variable name {}", quoted(k)));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasker_json_is_validated() {
        let c = TaskerConfig::parse(
            br#"{"cmd":["python3","stamp.py"],"in":"task","timeout":"30s","start_timeout":"10m",
                "retries":3,"retry_on_timeout":false,"max_concurrent":4,
                "concurrency":[{"key":"payload.book","limit":1}],"env":{"LANG":"C.UTF-8"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.cmd,
            Some(Cmd::Argv(vec!["python3".into(), "stamp.py".into()]))
        );
        assert_eq!(c.input, Input::Task);
        assert_eq!(c.max_concurrent, Some(4));
        assert_eq!(c.concurrency[0].limit, 1);
        assert_eq!(c.env["LANG"], "C.UTF-8");
        let c = TaskerConfig::parse(br#"{"cmd":"echo hi"}"#).unwrap();
        assert_eq!(c.cmd, Some(Cmd::Shell("echo hi".into())));
        assert_eq!(c.input, Input::Payload);
        for bad in [
            &br#"{}"#[..],
            br#"{"cmd":[]}"#,
            br#"{"cmd":"x","colour":1}"#,
            br#"{"cmd":"x","in":"stdin"}"#,
            br#"{"cmd":"x","max_concurrent":0}"#,
            br#"{"cmd":"x","concurrency":[{"key":"book","limit":1}]}"#,
            br#"{"cmd":"x","timeout":"soon"}"#,
            br#"{"cmd":"x","env":{"A=B":"c"}}"#,
        ] {
            assert!(
                TaskerConfig::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
