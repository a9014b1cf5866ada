//! How fast `submit --batch` makes task files durable: N tasks submitted
//! as one batch into a fresh root, through the library
//! (`spoolflow::submit::submit_lines`, with one `syncfs` for the batch and,
//! to compare, an fsync of each file) and through the built binary with a
//! JSON-lines file, as a user runs it.
//!
//! ```text
//! cargo run --release --example submit_bench -- [--tasks N] [--runs R] [--no-binary]
//! ```
//!
//! Each root is made in `$TMPDIR` (use `TMPDIR=/dev/shm` for tmpfs). Each
//! figure is the best of R runs (default 3), each on a fresh root; the
//! time covers checking the lines, writing, syncing and renaming every
//! file, and fsyncing `in/` (for the binary, also its start and reading
//! the file).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use spoolflow::submit::{self, BatchOptions, BatchSync, Defaults};
use spoolflow::Root;

struct Args {
    tasks: usize,
    runs: usize,
    binary: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        tasks: 20_000,
        runs: 3,
        binary: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |what: &str| -> usize {
            args.next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{what} takes a number"))
        };
        match arg.as_str() {
            "--tasks" => a.tasks = number("--tasks"),
            "--runs" => a.runs = number("--runs").max(1),
            "--no-binary" => a.binary = false,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// JSON lines of `n` small tasks, as a user would submit them.
fn lines(n: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(n * 64);
    for i in 0..n {
        text.extend_from_slice(
            format!("{{\"payload\":{{\"n\":{i},\"book\":\"moby-dick\"}}}}\n").as_bytes(),
        );
    }
    text
}

/// A fresh root with a tasker that serves `org`.
fn fresh_root() -> (tempfile::TempDir, Root) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let root = Root::new(tmp.path()).expect("a root");
    root.init().expect("init");
    std::fs::create_dir_all(root.tsk().join("org")).expect("tsk/org");
    std::fs::write(root.tsk().join("org/cat"), "#!/bin/sh\ncat\n").expect("a tasker");
    (tmp, root)
}

fn count_in(root: &Root) -> usize {
    std::fs::read_dir(root.spool_in())
        .expect("in/")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
        .count()
}

/// The best time of `runs` library submissions of `text`.
fn library(
    text: &[u8],
    tasks: usize,
    runs: usize,
    sync: BatchSync,
    writers: usize,
    keep: &mut Vec<tempfile::TempDir>,
) -> Duration {
    let defaults = Defaults {
        domain: Some("org".parse().expect("a domain")),
        tasker: Some("cat".parse().expect("a taskee")),
        priority: None,
    };
    let options = BatchOptions {
        force: false,
        sync,
        writers,
    };
    (0..runs)
        .map(|_| {
            let (tmp, root) = fresh_root();
            let t = Instant::now();
            let ids = submit::submit_lines(&root, text, &defaults, &options).expect("submitted");
            let took = t.elapsed();
            assert_eq!(ids.len(), tasks);
            assert_eq!(count_in(&root), tasks);
            keep.push(tmp);
            took
        })
        .min()
        .expect("at least one run")
}

/// The best time of `runs` runs of `spoolflow submit --batch FILE`.
fn binary(
    bin: &Path,
    text: &[u8],
    tasks: usize,
    runs: usize,
    keep: &mut Vec<tempfile::TempDir>,
) -> Duration {
    (0..runs)
        .map(|_| {
            let (tmp, root) = fresh_root();
            let file = tmp.path().join("batch.jsonl");
            std::fs::write(&file, text).expect("the batch file");
            let t = Instant::now();
            let out = Command::new(bin)
                .arg("--root")
                .arg(root.dir())
                .args(["submit", "--domain", "org", "--tasker", "cat", "--batch"])
                .arg(&file)
                .output()
                .expect("run spoolflow");
            let took = t.elapsed();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.stdout.iter().filter(|&&b| b == b'\n').count(), tasks);
            keep.push(tmp);
            took
        })
        .min()
        .expect("at least one run")
}

/// The release binary beside this example.
fn build() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "spoolflow"])
        .status()
        .expect("cargo build");
    assert!(status.success(), "cargo build failed");
    let exe = std::env::current_exe().expect("this example's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/release")
        .join("spoolflow")
}

fn report(what: &str, tasks: usize, took: Duration) {
    println!(
        "{what:<34} {tasks:>7} tasks in {:>8.1} ms  {:>9.0} tasks/s",
        took.as_secs_f64() * 1000.0,
        tasks as f64 / took.as_secs_f64()
    );
}

fn main() {
    let args = parse_args();
    let text = lines(args.tasks);
    let dir = std::env::temp_dir();
    // Every root is removed at the end only: on ext4 without a journal,
    // inodes freed in the last minute slow down every new file (see
    // `spoolflow::submit::batch`), and one run must not tax the next.
    let mut keep = Vec::new();
    println!(
        "submit --batch, {} tasks, best of {} runs, roots in {}",
        args.tasks,
        args.runs,
        dir.display()
    );
    for (what, sync, writers) in [
        ("library, one syncfs", BatchSync::Filesystem, 0),
        ("library, one syncfs, 1 writer", BatchSync::Filesystem, 1),
        ("library, an fsync per file", BatchSync::EachFile, 0),
    ] {
        let took = library(&text, args.tasks, args.runs, sync, writers, &mut keep);
        report(what, args.tasks, took);
    }
    if args.binary {
        let bin = build();
        let took = binary(&bin, &text, args.tasks, args.runs, &mut keep);
        report("binary, --batch FILE", args.tasks, took);
    }
}
