//! Stored flows (SPEC 12): `tsk/<domain>/flows/NAME.json`, looked up the
//! domain's branch, then in `tsk/any/flows/`. A name follows the rule of a
//! taskee (`[A-Za-z0-9][A-Za-z0-9_-]{0,63}`: no dot, no slash), so it can
//! never address a path outside `tsk/`.

use std::path::PathBuf;

use serde_json::Value;

use crate::flow::run::Progress;
use crate::layout::Root;
use crate::model::names::{Domain, TaskId, Taskee};
use crate::store::spool;

/// The largest stored flow read.
const STORED_FLOW_LIMIT: u64 = 4 * 1024 * 1024;

/// Where the stored flow `name` is in the first of `dirs` (directories of
/// `tsk/`) that has it, if any.
pub fn find_in<'a>(
    root: &Root,
    dirs: impl Iterator<Item = &'a str>,
    name: &str,
) -> Result<Option<PathBuf>, String> {
    let name: Taskee = name.parse().map_err(|_| {
        format!(
            "invalid stored flow name {} (a name is [A-Za-z0-9][A-Za-z0-9_-]{{0,63}})",
            crate::text::quoted(name)
        )
    })?;
    let tsk = root.tsk();
    Ok(dirs
        .map(|d| tsk.join(d).join("flows").join(format!("{name}.json")))
        .find(|p| p.is_file()))
}

/// Where the stored flow `name` of `domain` is: up the domain's branch,
/// then in `tsk/any/`.
pub fn find(root: &Root, domain: &Domain, name: &str) -> Result<Option<PathBuf>, String> {
    find_in(root, domain.branch().chain(std::iter::once("any")), name)
}

/// The JSON of the stored flow `name` of `domain` (`None`: no such flow).
pub fn lookup(root: &Root, domain: &Domain, name: &str) -> Result<Option<Value>, String> {
    read(root, find(root, domain, name)?)
}

/// The JSON of a stored flow file (`None` passes through).
pub fn read(root: &Root, path: Option<PathBuf>) -> Result<Option<Value>, String> {
    let Some(path) = path else {
        return Ok(None);
    };
    let rel = root.relative(&path).display().to_string();
    let bytes = spool::read_capped(&path, STORED_FLOW_LIMIT).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("{rel}: invalid JSON: {e}"))
}

/// A flow's progress as a restart finds it: the snapshot (`progress` of
/// its `run/` file), then its journal `run/<id>.journal` replayed over it.
/// `None`: neither holds anything (the flow never got past its start).
/// A journal that stops early (a gap, a line that does not read) is
/// logged and what came before it is used.
pub fn load_progress(
    root: &Root,
    id: &TaskId,
    snapshot: Option<Value>,
) -> Result<Option<Progress>, String> {
    let progress = snapshot
        .map(serde_json::from_value::<Progress>)
        .transpose()
        .map_err(|e| format!("progress unreadable: {e}"))?;
    let path = root.journal_file(id);
    // Never through a link, never waiting on a FIFO; no larger than the
    // run/ file it follows may be.
    let most = crate::engine::recovery::FLOW_RUN_FILE_LIMIT;
    let bytes = match crate::store::spool::read_capped(&path, most) {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Ok(progress),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let had_snapshot = progress.is_some();
    let mut p = progress.unwrap_or_default();
    let replayed = p.replay(&bytes);
    if let Some(problem) = &replayed.problem {
        tracing::error!(
            "{}: {problem}; the flow goes on from the {} before",
            root.relative(&path).display(),
            crate::text::count(replayed.applied, "entry")
        );
    }
    Ok((had_snapshot || replayed.applied > 0).then_some(p))
}

/// Every stored flow file under `tsk/` (for `spoolflow check`).
pub fn all(root: &Root) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in std::fs::read_dir(root.tsk())
        .into_iter()
        .flatten()
        .flatten()
    {
        let flows = dir.path().join("flows");
        for f in std::fs::read_dir(&flows).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "json") {
                found.push(f.path());
            }
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_flows_are_found_up_the_branch_then_in_any() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        let write = |dir: &str, name: &str, body: &str| {
            let d = root.tsk().join(dir).join("flows");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("{name}.json")), body).unwrap();
        };
        write("org", "thumbs", r#"{"task":"a"}"#);
        write("any", "thumbs", r#"{"task":"b"}"#);
        write("any", "common", r#"{"task":"c"}"#);
        write("org.example", "broken", "{");
        let d: Domain = "org.example.sales".parse().unwrap();
        assert_eq!(lookup(&root, &d, "thumbs").unwrap().unwrap()["task"], "a");
        assert_eq!(lookup(&root, &d, "common").unwrap().unwrap()["task"], "c");
        assert_eq!(lookup(&root, &d, "none").unwrap(), None);
        assert!(lookup(&root, &d, "broken")
            .unwrap_err()
            .contains("invalid JSON"));
        assert!(lookup(&root, &d, "../x").is_err());
        let other: Domain = "net".parse().unwrap();
        assert_eq!(
            lookup(&root, &other, "thumbs").unwrap().unwrap()["task"],
            "b"
        );
        assert_eq!(all(&root).len(), 4);
    }
}
