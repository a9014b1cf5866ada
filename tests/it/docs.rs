//! The user documentation against the repository and the binary: every
//! relative link of README.md and docs/ resolves to a file inside the
//! repository (none to ../shared or elsewhere outside), and every command
//! and flag that docs/commands.md names exists in the built binary's
//! `--help` for that command.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    fs::canonicalize(env!("CARGO_MANIFEST_DIR")).expect("the repository")
}

/// README.md and every Markdown file under docs/.
fn doc_files() -> Vec<PathBuf> {
    let repo = repo();
    let mut files = vec![repo.join("README.md")];
    for entry in walkdir::WalkDir::new(repo.join("docs")) {
        let entry = entry.expect("walk docs/");
        if entry.path().extension().is_some_and(|e| e == "md") {
            files.push(entry.path().to_path_buf());
        }
    }
    files.sort();
    files
}

/// The targets of the Markdown links `[text](target)` of `text`, outside
/// code (fenced blocks and inline spans), with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop inline code spans.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(k, _)| k % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((i + 1, target.to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// `#anchor`-only links, mail links and links with a scheme are not files.
fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

/// The anchor GitHub gives a heading: lowercase, punctuation dropped,
/// spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// For a link `file.md#anchor`: a problem when no heading of the file has
/// that anchor.
fn missing_anchor(file: &std::path::Path, target: &str) -> Option<String> {
    let (_, anchor) = target.split_once('#')?;
    if file.extension().is_none_or(|e| e != "md") {
        return None;
    }
    let text = fs::read_to_string(file).ok()?;
    let mut fenced = false;
    let mut slugs = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            slugs.insert(slug(line.trim_start_matches('#')));
        }
    }
    (!slugs.contains(anchor)).then(|| format!("{target}: no heading has the anchor #{anchor}"))
}

#[test]
fn every_relative_link_resolves_inside_the_repository() {
    let repo = repo();
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in doc_files() {
        let text = fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(&repo).unwrap().display().to_string();
        for (line, target) in links(&text) {
            if is_external(&target) {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            if path.contains("shared/") {
                problems.push(format!(
                    "{rel}:{line}: {target} points to the shared contract"
                ));
                continue;
            }
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            match fs::canonicalize(&resolved) {
                Ok(p) if p.starts_with(&repo) => {
                    checked += 1;
                    if let Some(problem) = missing_anchor(&p, &target) {
                        problems.push(format!("{rel}:{line}: {problem}"));
                    }
                }
                Ok(p) => problems.push(format!(
                    "{rel}:{line}: {target} leaves the repository ({})",
                    p.display()
                )),
                Err(e) => problems.push(format!("{rel}:{line}: {target} does not resolve ({e})")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
    assert!(checked >= 20, "only {checked} links checked");
}

/// README and docs link only into the repository: no web address either.
#[test]
fn no_link_leaves_the_repository() {
    for file in doc_files() {
        let text = fs::read_to_string(&file).unwrap();
        for (line, target) in links(&text) {
            assert!(
                !is_external(&target),
                "{}:{line}: a link outside the repository: {target}",
                file.display()
            );
        }
    }
}

/// The commands and flags named in README.md and docs/ (docs/commands.md
/// names them all) on lines that start with `spoolflow ` (in code blocks)
/// or in inline code spans starting with it: command -> flags. A global
/// `--root DIR` before the command is skipped.
fn documented_commands() -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in doc_files() {
        let text = fs::read_to_string(&file).unwrap();
        for (command, flags) in commands_in(&text) {
            found.entry(command).or_default().extend(flags);
        }
    }
    found
}

/// The commands and flags named in one Markdown text.
fn commands_in(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut candidates: Vec<String> = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if fenced {
            candidates.push(line.trim().trim_start_matches("$ ").to_string());
        } else {
            let spans = line.split('`').skip(1).step_by(2);
            candidates.extend(spans.map(|s| s.trim().to_string()));
        }
    }
    for cand in candidates {
        // A pipe, a redirection or a comment ends the spoolflow command.
        let cmd = cand
            .split(['|', '>', '#', ';', '&'])
            .next()
            .unwrap_or_default();
        let mut words = cmd.split_whitespace();
        if words.next() != Some("spoolflow") {
            continue;
        }
        let mut words = words.peekable();
        while words.peek() == Some(&"--root") {
            words.next();
            words.next();
        }
        let Some(name) = words.next() else { continue };
        if !name.chars().all(|c| c.is_ascii_lowercase()) || name.is_empty() {
            continue;
        }
        let flags = found.entry(name.to_string()).or_default();
        for w in words {
            let w = w.trim_start_matches('[');
            if let Some(flag) = w.strip_prefix("--") {
                let flag: String = flag
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if !flag.is_empty() {
                    flags.insert(format!("--{flag}"));
                }
            }
        }
    }
    found
}

/// What `spoolflow <command> --help` prints, or None if it fails.
fn help_of(command: &str) -> Option<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_spoolflow"))
        .args([command, "--help"])
        .env_remove("SPOOLFLOW_ROOT")
        .output()
        .expect("run spoolflow");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The problems of `documented` against the binary: commands that do not
/// exist and flags that a command's `--help` does not list.
fn missing_in_help(documented: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (command, flags) in documented {
        let Some(help) = help_of(command) else {
            problems.push(format!("spoolflow {command}: no such command"));
            continue;
        };
        let words: BTreeSet<&str> = help
            .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
            .collect();
        for flag in flags {
            if !words.contains(flag.as_str()) {
                problems.push(format!("spoolflow {command} {flag}: not in --help"));
            }
        }
    }
    problems
}

#[test]
fn every_documented_command_and_flag_exists() {
    let commands_md = fs::read_to_string(repo().join("docs/commands.md")).unwrap();
    let listed = commands_in(&commands_md);
    let documented = documented_commands();
    for (command, flags) in &documented {
        let in_list = listed.get(command);
        assert!(
            in_list.is_some_and(|l| flags.is_subset(l)),
            "docs/commands.md documents `spoolflow {command}` and {flags:?}: {in_list:?}"
        );
    }
    let documented = listed;
    for expected in ["run", "submit", "list", "schema", "completions"] {
        assert!(
            documented.contains_key(expected),
            "docs/commands.md names `spoolflow {expected}`: {documented:?}"
        );
    }
    assert!(documented["run"].contains("--drain"), "{documented:?}");
    let problems = missing_in_help(&documented);
    assert!(
        problems.is_empty(),
        "docs/commands.md names what the binary lacks:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_flag_check_catches_a_made_up_flag() {
    let mut documented = BTreeMap::new();
    documented.insert(
        "run".to_string(),
        BTreeSet::from(["--drain".to_string(), "--frobnicate".to_string()]),
    );
    documented.insert("no-such-command".to_string(), BTreeSet::new());
    assert_eq!(
        missing_in_help(&documented),
        [
            "spoolflow no-such-command: no such command",
            "spoolflow run --frobnicate: not in --help"
        ]
    );
}

#[test]
fn the_completion_scripts_name_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_spoolflow"))
            .args(["completions", shell])
            .output()
            .expect("run spoolflow completions");
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for command in ["run", "submit", "cancel", "schema", "completions"] {
            assert!(script.contains(command), "{shell} script lacks {command}");
        }
        // fish names long options without their dashes (`-l drain`).
        assert!(script.contains("drain"), "{shell} script lacks run's flags");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_spoolflow"))
        .args(["completions", "powershell"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_service_unit_outlasts_the_engines_grace() {
    let unit = fs::read_to_string(repo().join("examples/spoolflow.service")).unwrap();
    let value = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit sets {key}"))
            .to_string()
    };
    assert_eq!(value("Restart"), "on-failure");
    assert_eq!(value("KillMode"), "mixed");
    let secs = |s: &str| -> u64 { s.trim_end_matches('s').parse().expect("seconds") };
    let exec = value("ExecStart");
    let grace = exec
        .split_whitespace()
        .skip_while(|w| *w != "--grace")
        .nth(1)
        .expect("ExecStart sets --grace");
    let kill_grace = spoolflow::Options::default().kill_grace.as_secs();
    assert!(
        secs(&value("TimeoutStopSec")) > secs(grace) + kill_grace,
        "TimeoutStopSec leaves room for the grace and the kill grace"
    );
}
