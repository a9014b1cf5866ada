//! `spoolflow gc --older-than D [--dry-run] [--json]`: removes what has
//! ended longer ago than D — records (by `ended_at`), earlier attempts in
//! `history/`, rejected files with their reasons, and points and stderr
//! logs (by modification time) of executions no longer queued, running or
//! waiting in `in/` to run again,
//! the job directories of their Slurm runs (`var/slurm/`, SPEC 14),
//! and what an interrupted `submit --batch` left in `in/` (files never
//! submitted, staged in a `.spoolflow-batch-*` directory) — and prints what
//! it removed (or, with `--dry-run`, would remove).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::json;
use spoolflow::layout::Root;
use spoolflow::model::names::TaskId;
use spoolflow::read::index;

use super::output::{cutoff, parse_duration, plural, print_json};
use super::{exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Remove what ended longer ago than this: 30s, 5m, 2h, 7d.
    #[arg(long, value_name = "D", required = true)]
    pub older_than: String,
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print `{ "dry_run", "removed": [paths] }`.
    #[arg(long)]
    pub json: bool,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::existing_root(root)?;
    let now = Utc::now();
    let older = parse_duration("--older-than", &args.older_than)?;
    let before = cutoff(older, now);
    let waiting = waiting_in(&root);
    // An execution still in `run/`, or waiting in `in/` (run again by
    // `retry`), keeps its history and logs, however old: the engine counts
    // its attempts from the one and appends to the other.
    let live = |stem: &str| {
        stem.parse::<TaskId>()
            .is_ok_and(|id| waiting.contains(stem) || root.run_file(&id).exists())
    };
    if !args.dry_run {
        ended_for_good(&root)?;
    }
    let mut doomed = old_records(&root, &before);
    let rejected = old_rejected(&root, &before);
    doomed.extend(old_history(&root, &before, &live));
    let batches = old_batch_dirs(&root, &before);
    doomed.extend(batch_files(&batches));
    let log_of_live = |p: &Path| live(p.file_stem().and_then(|s| s.to_str()).unwrap_or(""));
    doomed.extend(old_files(&root, &root.log_tsk(), &before, |p| {
        !log_of_live(p)
    }));
    let job_dirs = old_job_dirs(&root, &before);
    let mut gone = Removal {
        root: &root,
        dry_run: args.dry_run,
        removed: Vec::new(),
        failed: 0,
    };
    for dir in &job_dirs {
        gone.remove(dir, true);
    }
    for r in &rejected {
        // A reason outlives an entry that could not be removed.
        if gone.remove(&r.entry, r.dir) {
            if let Some(reason) = &r.reason {
                gone.remove(reason, false);
            }
        }
    }
    for path in &doomed {
        gone.remove(path, false);
    }
    let Removal {
        removed, failed, ..
    } = gone;
    if !args.dry_run {
        remove_empty_history(&root);
        remove_empty_batches(&batches);
        // The records index forgets the records removed now, before a
        // new record of the same id may get a freed inode number (the
        // index knows a record by its name and inode).
        let _ = index::records(&root);
    }
    if args.json {
        return print_json(&json!({ "dry_run": args.dry_run, "removed": removed }));
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for r in &removed {
        println!("{verb} {r}");
    }
    println!("{verb} {}", plural(removed.len(), "file", "files"));
    if failed > 0 {
        return Err(Failure::new(
            exit::FAILURE,
            "some files could not be removed",
        ));
    }
    Ok(())
}

/// What `gc` removed (or, with `--dry-run`, would remove), and how many
/// it could not.
struct Removal<'a> {
    root: &'a Root,
    dry_run: bool,
    removed: Vec<String>,
    failed: usize,
}

impl Removal<'_> {
    /// Removes a file (a link, never followed) or a directory with what it
    /// holds; whether it is gone (or would be).
    fn remove(&mut self, path: &Path, dir: bool) -> bool {
        let ok = self.dry_run
            || if dir {
                std::fs::remove_dir_all(path).is_ok()
            } else {
                std::fs::remove_file(path).is_ok()
            };
        let shown = self.root.relative(path).display().to_string();
        if !ok {
            eprintln!("spoolflow: cannot remove {}", path.display());
            self.failed += 1;
        } else if dir {
            self.removed.push(format!("{shown}/"));
        } else {
            self.removed.push(shown);
        }
        ok
    }
}

/// Records that ended before `before` (through the records index).
fn old_records(root: &Root, before: &str) -> Vec<PathBuf> {
    let mut old: Vec<PathBuf> = index::records(root)
        .files
        .into_iter()
        .filter(|f| f.summary.ended_at.as_deref().is_some_and(|e| e < before))
        .map(|f| f.path)
        .collect();
    // Removed, and listed, in a stable order.
    old.sort();
    old
}

/// An entry of `rejected/` to remove: the file or directory (moved there
/// whole from `in/`), then its reason (only once the entry is gone).
struct Rejected {
    entry: PathBuf,
    dir: bool,
    reason: Option<PathBuf>,
}

/// What of `rejected/` was rejected before `before`. An entry is aged by
/// its `.reason`, written when it was rejected: the entry itself keeps the
/// date it had in `in/`, which may be long before. A reason whose entry is
/// gone is aged by its own date. As `list` reads them, `X.reason` is a
/// reason unless `X.reason.reason` is there (a rejected file so named).
fn old_rejected(root: &Root, before: &str) -> Vec<Rejected> {
    let dir = root.rejected();
    let names: std::collections::BTreeSet<std::ffi::OsString> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().starts_with('.'))
        .collect();
    let reason_of = |n: &std::ffi::OsStr| {
        let mut r = n.to_os_string();
        r.push(".reason");
        r
    };
    let old = |p: &Path| {
        let at = spoolflow::read::tasks::modified(p);
        at.is_some_and(|t| t.as_str() < before)
    };
    let mut out = Vec::new();
    for name in &names {
        let path = dir.join(name);
        let subject = name.to_str().and_then(|n| n.strip_suffix(".reason"));
        if let Some(subject) = subject.filter(|_| !names.contains(&reason_of(name))) {
            if !names.contains(std::ffi::OsStr::new(subject)) && old(&path) {
                let lone = Rejected {
                    entry: path,
                    dir: false,
                    reason: None,
                };
                out.push(lone);
            }
            continue;
        }
        let reason = names.get(&reason_of(name)).map(|r| dir.join(r));
        if !old(reason.as_deref().unwrap_or(&path)) {
            continue;
        }
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        out.push(Rejected {
            entry: path,
            dir: is_dir,
            reason,
        });
    }
    out
}

/// Files of `dir` last modified before `before` that `keep_if` accepts.
fn old_files(
    _root: &Root,
    dir: &Path,
    before: &str,
    keep_if: impl Fn(&Path) -> bool,
) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| {
            e.metadata()
                .ok()
                .filter(|m| !m.is_dir())
                .and_then(|m| m.modified().ok())
                .is_some_and(|t| {
                    spoolflow::model::task::timestamp(DateTime::<Utc>::from(t)).as_str() < before
                })
        })
        .map(|e| e.path())
        .filter(|p| keep_if(p))
        .collect()
}

/// The engine makes ended tasks' moves out of `run/` durable together, a
/// moment after their records: made durable before any record goes, so
/// that a crash cannot bring back the `run/` file of a task whose record
/// is gone. (No `run/` at all: nothing to make durable.)
fn ended_for_good(root: &Root) -> Result<(), Failure> {
    use spoolflow::store::spool::{fsync_dir, SpoolError};
    match fsync_dir(&root.run()) {
        Ok(()) | Err(SpoolError::Missing { .. }) => Ok(()),
        Err(e) => Err(Failure::new(exit::FAILURE, e)),
    }
}

/// The directories of Slurm runs (`var/slurm/<exid>.<nid>.<offer>/`)
/// of executions no longer in `run/`, unchanged since `before`.
fn old_job_dirs(root: &Root, before: &str) -> Vec<PathBuf> {
    let ended = |name: &str| {
        let exid = name.rsplitn(3, '.').nth(2).unwrap_or("");
        exid.parse::<TaskId>()
            .is_ok_and(|id| !root.run_file(&id).exists())
    };
    std::fs::read_dir(root.slurm_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| ended(&e.file_name().to_string_lossy()))
        .filter(|e| {
            e.metadata()
                .ok()
                .filter(|m| m.is_dir())
                .and_then(|m| m.modified().ok())
                .is_some_and(|t| {
                    spoolflow::model::task::timestamp(DateTime::<Utc>::from(t)).as_str() < before
                })
        })
        .map(|e| e.path())
        .collect()
}

/// Earlier attempts in `history/<id>/` older than `before`, of tasks
/// that are not `live`.
fn old_history(root: &Root, before: &str, live: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    std::fs::read_dir(root.history())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !live(&e.file_name().to_string_lossy()))
        .flat_map(|e| old_files(root, &e.path(), before, |_| true))
        .collect()
}

/// The ids of the task files waiting in `in/` and its domains'
/// directories, by their names (`<id>.json`, as `retry` writes them).
fn waiting_in(root: &Root) -> std::collections::HashSet<String> {
    spoolflow::store::intake::counted_entries(root)
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            Some(name.strip_suffix(".json")?.to_string())
        })
        .collect()
}

/// The staging directories of batches that were interrupted (a crash, a
/// kill) before their files were renamed into `in/`: directories of `in/`
/// named `.spoolflow-batch-*` in which nothing changed since `before`.
/// Their files were never submitted.
fn old_batch_dirs(root: &Root, before: &str) -> Vec<PathBuf> {
    let older = |p: &Path| {
        std::fs::symlink_metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| {
                spoolflow::model::task::timestamp(DateTime::<Utc>::from(t)).as_str() < before
            })
    };
    std::fs::read_dir(root.spool_in())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(Root::BATCH_STAGING_PREFIX)
                && e.file_type().is_ok_and(|t| t.is_dir())
        })
        .map(|e| e.path())
        .filter(|dir| {
            // The writers' directories change with every file written.
            older(dir) && children(dir).iter().all(|c| older(c))
        })
        .collect()
}

/// The entries of a directory (none if it cannot be read).
fn children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// The files of the staging directories `dirs`.
fn batch_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter()
        .flat_map(|d| walkdir::WalkDir::new(d).min_depth(1).into_iter().flatten())
        .filter(|e| !e.file_type().is_dir())
        .map(|e| e.into_path())
        .collect()
}

/// Removes the staging directories `dirs` once emptied.
fn remove_empty_batches(dirs: &[PathBuf]) {
    for dir in dirs {
        for child in children(dir) {
            // Fails, as it should, when the directory is not empty.
            let _ = std::fs::remove_dir(child);
        }
        let _ = std::fs::remove_dir(dir);
    }
}

fn remove_empty_history(root: &Root) {
    for e in std::fs::read_dir(root.history())
        .into_iter()
        .flatten()
        .flatten()
    {
        // Fails, as it should, when the directory is not empty.
        let _ = std::fs::remove_dir(e.path());
    }
}
