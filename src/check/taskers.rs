//! `check` of a tasker beyond its config: a `#!` line that ends in CRLF
//! (the system then looks for an interpreter named `sh\r`), names no
//! interpreter or one that is not there, a `cmd[0]`
//! that is not on the tasker's `PATH` (its `env`'s, else the one
//! `spoolflow check` runs with, which the engine passes on), and a script
//! argument of `cmd` (`x.py`, `./run.sh`) that does not exist.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Problem;
use crate::layout::Root;
use crate::tasker::{Cmd, TaskerConfig};
use crate::text::{closest, quoted};

/// Extensions that mark an argument of `cmd` as a script file to check.
const SCRIPT_EXTENSIONS: &[&str] = &[
    "py", "sh", "bash", "zsh", "pl", "rb", "js", "mjs", "cjs", "ts", "php", "lua", "r", "tcl",
    "awk", "jar", "jl", "exs", "rhai", "ps1",
];

/// The deeper problems of the tasker at `entry` (an executable file or a
/// directory with a valid `tasker.json`).
pub(super) fn check_deeper(root: &Root, entry: &Path) -> Vec<Problem> {
    let Ok(meta) = std::fs::metadata(entry) else {
        return Vec::new();
    };
    if meta.is_file() {
        return shebang(root, entry).into_iter().collect();
    }
    let cfg = entry.join("tasker.json");
    let text = crate::userfile::read_string(&cfg, crate::userfile::CONFIG_LIMIT);
    let (Ok(dir), Ok(text)) = (entry.canonicalize(), text) else {
        return Vec::new();
    };
    let Ok(config) = TaskerConfig::parse(text.as_bytes()) else {
        return Vec::new();
    };
    let mut problems = slurm_problems(root, &cfg, &text, &config);
    let Some(Cmd::Argv(argv)) = &config.cmd else {
        return problems;
    };
    let cmd = CmdSite {
        root,
        cfg: root.relative(&cfg).to_path_buf(),
        line: line_of(&text, "\"cmd\""),
        here: root.relative(entry).display().to_string(),
        dir,
    };
    problems.extend(cmd.program(&argv[0], &config));
    problems.extend(cmd.scripts(argv));
    problems
}

/// A tasker run on Slurm (SPEC 14): `sbatch`, `squeue` and `scancel` must
/// be on the engine's `PATH`, and the root on a filesystem that the
/// cluster's nodes see (said when it looks local).
fn slurm_problems(root: &Root, cfg: &Path, text: &str, config: &TaskerConfig) -> Vec<Problem> {
    if config.executor != crate::tasker::ExecutorKind::Slurm {
        return Vec::new();
    }
    let path_var = std::env::var("PATH").unwrap_or_default();
    let line = line_of(text, "\"executor\"");
    let rel = root.relative(cfg).to_path_buf();
    ["sbatch", "squeue", "scancel"]
        .into_iter()
        .filter(|p| find_on_path(p, &path_var, root.dir()).is_none())
        .map(|p| {
            Problem::new(&rel, format!("\"executor\": \"slurm\" needs {p}, which is not on the engine's PATH ({path_var})"))
                .at(line)
                .fix("install Slurm's client commands (Debian: slurm-client) where the engine runs")
        })
        .collect()
}

/// Where a `cmd` array is: its `tasker.json` (relative to the root) and
/// line, the tasker's directory as shown and as it is.
struct CmdSite<'a> {
    root: &'a Root,
    cfg: PathBuf,
    line: Option<usize>,
    here: String,
    dir: PathBuf,
}

impl CmdSite<'_> {
    fn problem(&self, what: String) -> Problem {
        Problem::new(&self.cfg, what).at(self.line)
    }

    /// `cmd[0]`: a path from the tasker's directory that exists and is
    /// executable (and has no CRLF `#!` line), or a name on its `PATH`.
    fn program(&self, prog: &str, config: &TaskerConfig) -> Vec<Problem> {
        let here = &self.here;
        if prog.contains('/') {
            let path = self.dir.join(prog);
            return match std::fs::metadata(&path) {
                Err(_) => vec![self
                    .problem(format!("cmd[0] {} does not exist", quoted(prog)))
                    .fix(format!(
                        "create it or fix the path (a relative path is from the tasker's directory, {here}/)"
                    ))],
                Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => vec![self
                    .problem(format!("cmd[0] {} is not an executable file", quoted(prog)))
                    .fix(format!("chmod +x {here}/{prog}"))],
                Ok(_) => shebang(self.root, &path).into_iter().collect(),
            };
        }
        let path_var = config
            .env
            .get("PATH")
            .cloned()
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        if find_on_path(prog, &path_var, &self.dir).is_some() {
            return Vec::new();
        }
        vec![self
            .problem(format!(
                "cmd[0] {} is not found on the tasker's PATH ({path_var})",
                quoted(prog)
            ))
            .fix("install it, give its absolute path, or set PATH in the tasker.json's env")]
    }

    /// The script arguments of `cmd` that do not exist.
    fn scripts(&self, argv: &[String]) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (i, arg) in argv.iter().enumerate().skip(1) {
            if !looks_like_script(arg) || self.dir.join(arg).exists() {
                continue;
            }
            let hint = match closest(arg, files_in(&self.dir)) {
                Some(c) => format!("did you mean {}? Otherwise ", quoted(&c)),
                None => String::new(),
            };
            problems.push(
                self.problem(format!(
                    "cmd[{i}] {} does not exist in {}/",
                    quoted(arg),
                    self.here
                ))
                .fix(format!(
                    "{hint}create it or fix the name (a relative path is from the tasker's directory)"
                )),
            );
        }
        problems
    }
}

/// Whether an argument names a script file: `./x`, `../x`, or a name
/// with a script's extension, and not an option.
fn looks_like_script(arg: &str) -> bool {
    if arg.starts_with('-') {
        return false;
    }
    if arg.starts_with("./") || arg.starts_with("../") {
        return true;
    }
    Path::new(arg)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| SCRIPT_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The names of the files of a directory.
fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect()
}

/// Where `prog` is found on `path_var` (as `execvp` searches it, empty or
/// relative entries from the tasker's directory `dir`).
pub fn find_on_path(prog: &str, path_var: &str, dir: &Path) -> Option<PathBuf> {
    path_var.split(':').find_map(|entry| {
        let base = if entry.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(entry)
        };
        let candidate = base.join(prog);
        std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .then_some(candidate)
    })
}

/// A problem with the `#!` line `path` starts with, if any: it ends in
/// CRLF, names no interpreter, or names one that is not an executable
/// file; or there is none and the file is no program the kernel runs
/// either (an ELF binary): a script without `#!` fails with "Exec format
/// error" when the engine runs it, as it is run directly, not by a shell.
fn shebang(root: &Root, path: &Path) -> Option<Problem> {
    let head = crate::userfile::head(path, 4096).ok()?;
    let line = head.split(|b| *b == b'\n').next()?;
    let rel = root.relative(path);
    let problem = |what: String| Problem::new(rel, what).at(Some(1));
    let Some(rest) = line.strip_prefix(b"#!") else {
        if head.starts_with(b"\x7fELF") {
            return None;
        }
        return Some(
            problem(
                "it has no #! line and is no binary: the system cannot run it (Exec format error)"
                    .into(),
            )
            .fix("start it with the interpreter to run it, e.g. #!/bin/sh"),
        );
    };
    if line.ends_with(b"\r") && line.len() < head.len() {
        let interpreter = String::from_utf8_lossy(rest).trim().to_string();
        return Some(problem(format!(
                "the #! line ends in CRLF: the system looks for an interpreter named {} (with a carriage return), which does not exist",
                quoted(&format!("{interpreter}\r"))
            ))
        .fix(format!(
            "convert the file to LF line endings (sed -i 's/\\r$//' {})",
            rel.display()
        )));
    }
    let text = String::from_utf8_lossy(rest);
    let Some(interpreter) = text.split_ascii_whitespace().next() else {
        return Some(
            problem("the #! line names no interpreter: the system cannot run the file".into())
                .fix("name one after #! (e.g. #!/bin/sh), or remove the line and set cmd in a tasker.json"),
        );
    };
    if !interpreter.starts_with('/') {
        return None;
    }
    match std::fs::metadata(interpreter) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => None,
        _ => Some(
            problem(format!(
                "the #! line names the interpreter {}, which is not an executable file",
                quoted(interpreter)
            ))
            .fix("install it or correct the path (e.g. #!/usr/bin/env python3)"),
        ),
    }
}

/// The line (1-based) of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.find(needle)
        .map(|i| text[..i].matches('\n').count() + 1)
}

/// Whether any tasker of `tsk/` runs on Slurm.
fn uses_slurm(root: &Root) -> bool {
    walkdir::WalkDir::new(root.tsk())
        .min_depth(3)
        .max_depth(3)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name() == "tasker.json")
        .any(|e| {
            crate::userfile::read(e.path(), crate::userfile::CONFIG_LIMIT)
                .ok()
                .and_then(|b| TaskerConfig::parse(&b).ok())
                .is_some_and(|c| c.executor == crate::tasker::ExecutorKind::Slurm)
        })
}

/// SPEC 14: the root must be on a filesystem the cluster's nodes mount at
/// the same path. Said when a tasker runs on Slurm and the root looks
/// local (right only for a cluster of this one machine).
pub(super) fn shared_root_note(root: &Root) -> Option<String> {
    use nix::sys::statfs::{self, statfs};
    if !uses_slurm(root) {
        return None;
    }
    let kind = statfs(root.dir()).ok()?.filesystem_type();
    let local = [
        (statfs::EXT4_SUPER_MAGIC, "ext4"),
        (statfs::XFS_SUPER_MAGIC, "xfs"),
        (statfs::BTRFS_SUPER_MAGIC, "btrfs"),
        (statfs::TMPFS_MAGIC, "tmpfs"),
        (statfs::OVERLAYFS_SUPER_MAGIC, "overlayfs"),
    ];
    let name = local.iter().find(|(m, _)| *m == kind).map(|(_, n)| *n)?;
    Some(format!(
        "note: taskers run on Slurm and the root {} is on a local filesystem ({name}): the cluster's nodes must see it at the same path (NFS, CephFS, Lustre, GPFS); right as it is only for a cluster of this machine",
        root.dir().display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_arguments_are_told_from_other_arguments() {
        for yes in ["count.py", "./run", "../lib/x", "main.JS", "run.sh"] {
            assert!(looks_like_script(yes), "{yes}");
        }
        for no in ["-c", "--file=x.py", "print(1)", "s/a/b/", "payload", "1.5"] {
            assert!(!looks_like_script(no), "{no}");
        }
    }

    #[test]
    fn programs_are_searched_on_the_path_as_execvp_does() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let prog = bin.join("tool");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent:{}", bin.display());
        assert_eq!(find_on_path("tool", &path, tmp.path()), Some(prog));
        assert_eq!(find_on_path("tool", "/nonexistent", tmp.path()), None);
        // A relative entry is from the tasker's directory.
        assert!(find_on_path("tool", "bin", tmp.path()).is_some());
        assert_eq!(line_of("{\n  \"cmd\": []\n}", "\"cmd\""), Some(2));
    }
}
