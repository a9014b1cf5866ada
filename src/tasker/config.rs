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
    #[serde(deserialize_with = "crate::model::count::de")]
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
    #[serde(default, deserialize_with = "crate::model::count::de_opt")]
    pub retries: Option<u32>,
    /// Whether a timed-out run is retried too (default false).
    #[serde(default)]
    pub retry_on_timeout: Option<bool>,
    /// At most this many runs of this tasker at once.
    #[serde(default, deserialize_with = "crate::model::count::de_opt")]
    #[schemars(range(min = 1))]
    pub max_concurrent: Option<u32>,
    /// Limits per value of a path into the task.
    #[serde(default)]
    pub concurrency: Vec<ConcurrencyKey>,
    /// Environment variables added to the tasker's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where the tasker runs: on the engine's machine (default) or as a
    /// Slurm batch job (see docs/slurm.md).
    #[serde(default)]
    pub executor: ExecutorKind,
    /// The job's `sbatch` options, for `"executor": "slurm"`.
    #[serde(default)]
    pub slurm: Option<SlurmConfig>,
}

/// `executor` of a `tasker.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// A process group on the engine's machine.
    #[default]
    Local,
    /// A batch job of a Slurm cluster.
    Slurm,
}

/// `slurm` of a `tasker.json`: each key becomes an `sbatch` option.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    /// `--partition`.
    #[serde(default)]
    pub partition: Option<String>,
    /// `--cpus-per-task`.
    #[serde(default, deserialize_with = "crate::model::count::de_opt")]
    #[schemars(range(min = 1))]
    pub cpus: Option<u32>,
    /// `--mem` (as Slurm writes it: `512M`, `8G`).
    #[serde(default)]
    pub mem: Option<String>,
    /// `--gpus`.
    #[serde(default, deserialize_with = "crate::model::count::de_opt")]
    #[schemars(range(min = 1))]
    pub gpus: Option<u32>,
    /// `--time`: the job's time limit (default: `timeout` plus the kill
    /// grace, when there is a `timeout`).
    #[serde(default)]
    pub time: Option<Dur>,
    /// `--account`.
    #[serde(default)]
    pub account: Option<String>,
    /// `--qos`.
    #[serde(default)]
    pub qos: Option<String>,
    /// More `sbatch` arguments, passed as they are after the engine's own.
    #[serde(default)]
    pub args: Vec<String>,
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
    "executor",
    "slurm",
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
        check_slurm(&config)?;
        for k in config.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("invalid environment variable name {}", quoted(k)));
            }
        }
        Ok(config)
    }
}

/// The `slurm` keys: only with `"executor": "slurm"`, and no empty word
/// where Slurm expects a name.
fn check_slurm(config: &TaskerConfig) -> Result<(), String> {
    let Some(s) = &config.slurm else {
        return Ok(());
    };
    if config.executor != ExecutorKind::Slurm {
        return Err("\"slurm\" options need \"executor\": \"slurm\"".into());
    }
    let words = [
        ("partition", &s.partition),
        ("mem", &s.mem),
        ("account", &s.account),
        ("qos", &s.qos),
    ];
    for (key, value) in words {
        if let Some(v) = value {
            if v.trim().is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("slurm.{key} must be one word, not {}", quoted(v)));
            }
        }
    }
    if s.cpus == Some(0) || s.gpus == Some(0) {
        return Err("slurm.cpus and slurm.gpus must be at least 1".into());
    }
    if s.time.is_some_and(|t| t.0.is_zero()) {
        return Err("slurm.time must be more than 0".into());
    }
    if let Some(a) = s.args.iter().find(|a| a.contains('\0')) {
        return Err(format!("slurm.args holds a NUL byte: {}", quoted(a)));
    }
    if let Some(a) = s.args.iter().find(|a| engine_owned(a)) {
        return Err(format!(
            "slurm.args must not set {}: the engine names, places, requeues and follows the job itself",
            quoted(a)
        ));
    }
    Ok(())
}

/// `sbatch` options the engine sets itself and relies on (the job's name,
/// files, environment, no requeue, no waiting, no array). `--nodes` and
/// `--ntasks` may be given: a job of many tasks runs them with `srun`.
fn engine_owned(arg: &str) -> bool {
    const LONG: &[&str] = &[
        "--job-name",
        "--output",
        "--error",
        "--input",
        "--chdir",
        "--export",
        "--parsable",
        "--requeue",
        "--no-requeue",
        "--wait",
        "--array",
        "--wrap",
        "--open-mode",
    ];
    const SHORT: &[&str] = &["-J", "-o", "-e", "-i", "-D", "-W", "-a"];
    let flag = arg.split('=').next().unwrap_or(arg);
    // sbatch takes any unambiguous start of a long option (`--outp`).
    let long = flag.len() > 2 && flag.starts_with("--") && LONG.iter().any(|l| l.starts_with(flag));
    long || SHORT
        .iter()
        .any(|s| arg == *s || (arg.starts_with(s) && arg.len() > 2 && !arg.starts_with("--")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_args_may_not_set_what_the_engine_relies_on_even_abbreviated() {
        for owned in [
            "--output=x",
            "--outp=x",
            "--arr=0-2",
            "--exp=ALL",
            "--job-name=j",
            "-J",
            "-ox",
            "--wait",
        ] {
            assert!(engine_owned(owned), "{owned}");
        }
        for free in [
            "--ntasks=2",
            "--nodes=2",
            "-n2",
            "--exclusive",
            "--wait-all-nodes=1",
            "--constraint=avx2",
            "--mem-per-cpu=1G",
        ] {
            assert!(!engine_owned(free), "{free}");
        }
    }

    #[test]
    fn counts_are_json_schema_integers_as_in_task_files() {
        let c = TaskerConfig::parse(
            br#"{"cmd":"x","retries":5.0,"max_concurrent":2e0,"executor":"slurm",
                "concurrency":[{"key":"payload.a","limit":1.0}],"slurm":{"cpus":4.0,"gpus":null}}"#,
        )
        .unwrap();
        assert_eq!((c.retries, c.max_concurrent), (Some(5), Some(2)));
        assert_eq!(c.concurrency[0].limit, 1);
        let slurm = c.slurm.unwrap();
        assert_eq!((slurm.cpus, slurm.gpus), (Some(4), None));
        for (bad, words) in [
            (r#""retries":1.5"#, "invalid value: floating point `1.5`"),
            (r#""retries":-1"#, "invalid value: integer `-1`"),
            (
                r#""retries":4294967296"#,
                "invalid value: integer `4294967296`",
            ),
            (r#""max_concurrent":"4""#, "invalid type: string \"4\""),
            (r#""retries":true"#, "invalid type: boolean `true`"),
        ] {
            let e = TaskerConfig::parse(format!(r#"{{"cmd":"x",{bad}}}"#).as_bytes()).unwrap_err();
            assert!(
                e.contains(words) && e.contains(crate::model::COUNT_EXPECTED),
                "{bad}: {e}"
            );
        }
    }

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
        assert_eq!(c.executor, ExecutorKind::Local);
        let c = TaskerConfig::parse(
            br#"{"cmd":"x","executor":"slurm","slurm":{"partition":"batch","cpus":4,
                "mem":"8G","gpus":1,"time":"2h","account":"p42","qos":"normal",
                "args":["--constraint=avx2"]}}"#,
        )
        .unwrap();
        assert_eq!(c.executor, ExecutorKind::Slurm);
        let s = c.slurm.unwrap();
        assert_eq!(s.time, Some(Dur(std::time::Duration::from_secs(7200))));
        assert_eq!(s.args, ["--constraint=avx2"]);
        for bad in [
            &br#"{}"#[..],
            br#"{"cmd":[]}"#,
            br#"{"cmd":"x","colour":1}"#,
            br#"{"cmd":"x","in":"stdin"}"#,
            br#"{"cmd":"x","max_concurrent":0}"#,
            br#"{"cmd":"x","concurrency":[{"key":"book","limit":1}]}"#,
            br#"{"cmd":"x","timeout":"soon"}"#,
            br#"{"cmd":"x","env":{"A=B":"c"}}"#,
            br#"{"cmd":"x","executor":"k8s"}"#,
            br#"{"cmd":"x","slurm":{"partition":"batch"}}"#,
            br#"{"cmd":"x","executor":"slurm","slurm":{"partiton":"batch"}}"#,
            br#"{"cmd":"x","executor":"slurm","slurm":{"cpus":"four"}}"#,
            br#"{"cmd":"x","executor":"slurm","slurm":{"time":"soon"}}"#,
            br#"{"cmd":"x","executor":"slurm","slurm":{"partition":"a b"}}"#,
            br#"{"cmd":"x","executor":"slurm","slurm":{"args":"--x"}}"#,
            br#"{"cmd":"x","executor":"slurm","slurm":{"args":["--job-name=x"]}}"#,
            br#"{"cmd":"x","executor":"slurm","slurm":{"args":["--requeue"]}}"#,
            br#"{"cmd":"x","executor":"slurm","slurm":{"args":["-o","/tmp/x"]}}"#,
        ] {
            assert!(
                TaskerConfig::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
