//! `spoolflow check`: validates `tsk/` before the engine meets it — every
//! taskmaster compiles, every `tasker.json` parses, every tasker file is
//! executable, every directory is a domain (or `any`).

use std::path::{Path, PathBuf};

use crate::layout::Root;
use crate::model::names::{Domain, Taskee};
use crate::tasker::TaskerConfig;
use crate::taskmaster::Taskmasters;

/// One problem found, with the path relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what)
    }
}

/// Checks `tsk/`; returns the problems (none: all good) and how many
/// taskmasters and taskers were looked at.
pub fn check(root: &Root) -> (Vec<Problem>, usize, usize) {
    let mut problems = Vec::new();
    let (mut scripts, mut taskers) = (0, 0);
    let tsk = root.tsk();
    let taskmasters = Taskmasters::new(root.dir());
    let rel = |p: &Path| root.relative(p).to_path_buf();
    let Ok(domains) = std::fs::read_dir(&tsk) else {
        problems.push(Problem {
            path: rel(&tsk),
            what: "missing: run `spoolflow init`".into(),
        });
        return (problems, 0, 0);
    };
    let mut domains: Vec<_> = domains.flatten().map(|e| e.path()).collect();
    domains.sort();
    for dir in domains {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with('.') || !dir.is_dir() {
            continue;
        }
        if name != "any" {
            if let Err(e) = name.parse::<Domain>() {
                problems.push(Problem {
                    path: rel(&dir),
                    what: format!("not a domain directory: {e}"),
                });
                continue;
            }
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for entry in entries {
            let ename = entry
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if ename == "taskmaster.rhai" {
                scripts += 1;
                if let Err(e) = taskmasters.check(&entry) {
                    problems.push(Problem {
                        path: rel(&entry),
                        what: strip_path(&e.to_string(), &rel(&entry)),
                    });
                }
                continue;
            }
            if ename.starts_with('.') || ename.parse::<Taskee>().is_err() {
                continue;
            }
            taskers += 1;
            if let Some(p) = check_tasker(root, &entry) {
                problems.push(p);
            }
        }
    }
    (problems, scripts, taskers)
}

fn strip_path(msg: &str, path: &Path) -> String {
    let prefix = format!("{}: ", path.display());
    msg.strip_prefix(&prefix).unwrap_or(msg).to_string()
}

fn check_tasker(root: &Root, entry: &Path) -> Option<Problem> {
    use std::os::unix::fs::PermissionsExt;
    let rel = root.relative(entry).to_path_buf();
    let problem = |what: String| {
        Some(Problem {
            path: rel.clone(),
            what,
        })
    };
    let tsk = root.tsk().canonicalize().ok()?;
    match entry.canonicalize() {
        Ok(real) if !real.starts_with(&tsk) => {
            return problem("resolves outside tsk/ and is never run".into())
        }
        Err(e) => return problem(format!("cannot resolve: {e}")),
        _ => {}
    }
    let meta = std::fs::metadata(entry).ok()?;
    if meta.is_dir() {
        let cfg = entry.join("tasker.json");
        let cfg_rel = root.relative(&cfg).to_path_buf();
        match std::fs::read(&cfg) {
            Err(e) => Some(Problem {
                path: cfg_rel,
                what: format!("cannot read: {e}"),
            }),
            Ok(bytes) => TaskerConfig::parse(&bytes).err().map(|what| Problem {
                path: cfg_rel,
                what,
            }),
        }
    } else if meta.permissions().mode() & 0o111 == 0 {
        problem("not executable (chmod +x it)".into())
    } else {
        None
    }
}
