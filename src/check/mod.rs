//! `spoolflow check`: validates `tsk/` before the engine meets it — every
//! taskmaster compiles, every `tasker.json` parses, every tasker file is
//! executable, every directory is a domain (or `any`), every stored flow
//! (`tsk/<domain>/flows/*.json`) has a valid tree whose names resolve and
//! whose `if` expressions compile. Deeper ([`scripts`], [`taskers`]):
//! taskees a taskmaster names literally resolve to a tasker, taskmasters
//! use no undefined variable, a tasker's `cmd[0]` is on its `PATH` and
//! its script arguments exist, and no `#!` line ends in CRLF. Each
//! problem names its file, its line where it has one, and the fix.

mod scripts;
mod taskers;

use std::path::{Path, PathBuf};

use crate::layout::Root;
use crate::model::names::{Domain, Taskee};
use crate::tasker::TaskerConfig;
use crate::text::quoted;

/// One problem found, with the path relative to the root, the line where
/// there is one, and the fix where one can be named. Shown on one line:
/// `tsk/org/taskmaster.rhai: line 3: what; fix: how`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub what: String,
    pub fix: Option<String>,
}

impl Problem {
    pub fn new(path: impl Into<PathBuf>, what: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            line: None,
            what: what.into(),
            fix: None,
        }
    }

    /// At line `line` (1-based) of the file, if known.
    pub fn at(mut self, line: Option<usize>) -> Problem {
        self.line = line;
        self
    }

    /// With how to fix it.
    pub fn fix(mut self, fix: impl Into<String>) -> Problem {
        self.fix = Some(fix.into());
        self
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        f.write_str(&self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// What `check` found.
#[derive(Debug, Default)]
pub struct Checked {
    /// None: all good.
    pub problems: Vec<Problem>,
    /// What is worth knowing but wrong only on some machines (said, not
    /// counted as problems).
    pub notes: Vec<String>,
    pub taskmasters: usize,
    pub taskers: usize,
    pub flows: usize,
}

/// Checks `tsk/`.
pub fn check(root: &Root) -> Checked {
    let (problems, taskmasters, taskers, flows) = check_tsk(root);
    Checked {
        problems,
        notes: taskers::shared_root_note(root).into_iter().collect(),
        taskmasters,
        taskers,
        flows,
    }
}

fn check_tsk(root: &Root) -> (Vec<Problem>, usize, usize, usize) {
    let mut problems = Vec::new();
    let (mut scripts, mut taskers, mut flows) = (0, 0, 0);
    let tsk = root.tsk();
    let rel = |p: &Path| root.relative(p).to_path_buf();
    let Ok(domains) = std::fs::read_dir(&tsk) else {
        problems.push(Problem::new(rel(&tsk), "missing").fix("run `spoolflow init`"));
        return (problems, 0, 0, 0);
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
                problems.push(
                    Problem::new(rel(&dir), format!("not a domain directory: {e}"))
                        .fix("rename it to a domain (e.g. org.example) or to any"),
                );
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
            if ename == "flows" && entry.is_dir() {
                flows += check_stored_flows(root, &name, &entry, &mut problems);
                continue;
            }
            if ename == "taskmaster.rhai" {
                scripts += 1;
                problems.extend(scripts::check_taskmaster(root, &name, &entry));
                continue;
            }
            if ename.starts_with('.') || ename.parse::<Taskee>().is_err() {
                continue;
            }
            taskers += 1;
            match check_tasker(root, &entry) {
                Some(p) => problems.push(p),
                None => problems.extend(taskers::check_deeper(root, &entry)),
            }
        }
    }
    (problems, scripts, taskers, flows)
}

/// Checks every `*.json` of a `flows/` directory of `tsk/<dir>/`: its
/// tree, the stored flows it names (looked up as a task of that domain
/// would), and its `if` expressions. Returns how many were looked at.
fn check_stored_flows(root: &Root, dir: &str, flows: &Path, problems: &mut Vec<Problem>) -> usize {
    let sandbox = crate::sandbox::sandbox_engine();
    let mut files: Vec<PathBuf> = std::fs::read_dir(flows)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for file in &files {
        let rel = root.relative(file).to_path_buf();
        if let Err(what) = check_stored_flow(root, dir, file, &sandbox) {
            problems.push(Problem::new(rel, what));
        }
    }
    files.len()
}

fn check_stored_flow(
    root: &Root,
    dir: &str,
    file: &Path,
    sandbox: &rhai::Engine,
) -> Result<(), String> {
    use crate::flow::tree;
    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
    stem.parse::<Taskee>()
        .map_err(|_| format!("{} is not a valid stored flow name", quoted(&stem)))?;
    let value = crate::store::flows::read(root, Some(file.to_path_buf()))?
        .ok_or_else(|| "cannot read".to_string())?;
    let node = tree::parse(&value).map_err(|e| e.to_string())?;
    let dirs: Vec<String> = match dir.parse::<Domain>() {
        Ok(d) => d
            .branch()
            .map(str::to_string)
            .chain(["any".to_string()])
            .collect(),
        Err(_) => vec!["any".to_string()],
    };
    let mut lookup = |name: &str| {
        let path = crate::store::flows::find_in(root, dirs.iter().map(String::as_str), name)?;
        crate::store::flows::read(root, path)
    };
    let resolved = tree::resolve(node, &mut lookup).map_err(|e| e.to_string())?;
    for expr in tree::conditions(&resolved) {
        sandbox
            .compile_expression(expr)
            .map_err(|e| format!("`if` expression {} does not compile: {e}", quoted(expr)))?;
    }
    Ok(())
}

fn check_tasker(root: &Root, entry: &Path) -> Option<Problem> {
    use std::os::unix::fs::PermissionsExt;
    let rel = root.relative(entry).to_path_buf();
    let problem = |what: String| Some(Problem::new(rel.clone(), what));
    let tsk = root.tsk().canonicalize().ok()?;
    match entry.canonicalize() {
        Ok(real) if !real.starts_with(&tsk) => {
            return problem("resolves outside tsk/ and is never run".into()).map(|p| {
                p.fix("move the tasker into tsk/ (or point the link at a file inside tsk/)")
            })
        }
        Err(e) => return problem(format!("cannot resolve: {e}")),
        _ => {}
    }
    let meta = std::fs::metadata(entry).ok()?;
    if !meta.is_dir() && !meta.is_file() {
        return problem(format!(
            "is {}: a tasker is an executable file or a directory with a tasker.json",
            crate::userfile::kind_of(&meta)
        ))
        .map(|p| p.fix("remove it, or move it out of tsk/"));
    }
    if meta.is_dir() {
        let cfg = entry.join("tasker.json");
        let cfg_rel = root.relative(&cfg).to_path_buf();
        match crate::userfile::read(&cfg, crate::userfile::CONFIG_LIMIT) {
            Err(e) => Some(Problem::new(cfg_rel, format!("cannot read: {e}"))),
            Ok(bytes) => TaskerConfig::parse(&bytes)
                .err()
                .map(|what| Problem::new(cfg_rel, what)),
        }
    } else if meta.permissions().mode() & 0o111 == 0 {
        Some(Problem::new(rel.clone(), "not executable").fix(format!("chmod +x {}", rel.display())))
    } else {
        None
    }
}
