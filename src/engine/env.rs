//! The environment a tasker runs with (SPEC 6): `PATH`, `HOME`, `LANG`,
//! `TZ` from the engine, the config's `env`, then the `SPOOLFLOW_*`
//! variables — nothing else of the engine's environment.

use std::ffi::OsString;
use std::path::Path;

use super::state::Node;
use crate::model::names::Taskee;
use crate::scheduler::NodeKey;
use crate::tasker::TaskerConfig;

/// The variables passed on from the engine's own environment.
const PASSED_ON: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// The environment of a node's tasker.
pub(super) fn tasker_env(
    root: &Path,
    node: &Node,
    key: &NodeKey,
    taskee: &Taskee,
    config: &TaskerConfig,
    points_file: &Path,
) -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> = PASSED_ON
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (k.to_string(), v)))
        .collect();
    for (k, v) in &config.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.into()));
    }
    let sf = |k: &str, v: &str| (k.to_string(), OsString::from(v));
    env.push(("SPOOLFLOW_ROOT".into(), root.as_os_str().to_owned()));
    env.push(sf("SPOOLFLOW_ID", node.task.id.as_str()));
    env.push(sf("SPOOLFLOW_EXID", key.exid.as_str()));
    env.push(sf("SPOOLFLOW_NID", key.nid.as_str()));
    env.push(sf("SPOOLFLOW_DOMAIN", node.task.domain.as_str()));
    env.push(sf("SPOOLFLOW_TASKEE", taskee.as_str()));
    env.push(sf("SPOOLFLOW_ATTEMPT", &node.attempt.to_string()));
    env.push((
        "SPOOLFLOW_POINTS".into(),
        points_file.as_os_str().to_owned(),
    ));
    env
}
