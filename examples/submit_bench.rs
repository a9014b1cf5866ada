//! How fast `submit --batch` makes task files durable: N tasks submitted
//! as one batch into a fresh root, through the library
//! (`spoolflow::submit::submit_lines`: one `syncfs` for the batch, and to
//! compare an fsync of each file) and through the built binary with a
//! JSON-lines file, as a user runs it.
//!
//! ```text
//! cargo run --release --example submit_bench -- [--tasks N] [--runs R] [--no-binary] [--no-fsync-each]
//! ```
//!
//! Roots are made in `$TMPDIR` (use `TMPDIR=/dev/shm` for tmpfs). The
//! variants take turns for R rounds (default 3), each run on a fresh root,
//! and the best of each is printed. A run's time covers checking the
//! lines, writing, syncing and renaming every file, and fsyncing `in/`
//! (for the binary, also its start and reading the file).
//!
//! Creating a file is most of the cost, and on ext4 without a journal it
//! swings with how many inodes were freed nearby in the last minutes (the
//! allocator skips each, see `spoolflow::store::spool::spread_subdirs`).
//! So roots are removed only at the end, and a probe prints, before and
//! after the runs, the cost of creating an empty file in a new directory
//! beside the roots and in one placed as a batch's staging directory is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use spoolflow::submit::{self, BatchOptions, BatchSync, Defaults};
use spoolflow::Root;

struct Args {
    tasks: usize,
    runs: usize,
    binary: bool,
    fsync_each: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        tasks: 20_000,
        runs: 3,
        binary: true,
        fsync_each: true,
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
            "--no-fsync-each" => a.fsync_each = false,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// What is measured.
#[derive(Clone, Copy)]
enum Variant {
    Library(BatchSync),
    Binary,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Library(BatchSync::EachFile) => "library, an fsync per file",
            Variant::Library(_) => "library, one syncfs",
            Variant::Binary => "binary, --batch FILE",
        }
    }
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

/// One run of a variant on a fresh root (kept in `keep`).
fn measure(
    variant: Variant,
    text: &[u8],
    tasks: usize,
    bin: Option<&Path>,
    keep: &mut Vec<tempfile::TempDir>,
) -> Duration {
    let (tmp, root) = fresh_root();
    let took = match variant {
        Variant::Library(sync) => {
            let defaults = Defaults {
                domain: Some("org".parse().expect("a domain")),
                tasker: Some("cat".parse().expect("a taskee")),
                priority: None,
            };
            let options = BatchOptions { force: false, sync };
            let t = Instant::now();
            let ids = submit::submit_lines(&root, text, &defaults, &options).expect("submitted");
            let took = t.elapsed();
            assert_eq!(ids.len(), tasks);
            took
        }
        Variant::Binary => {
            let file = tmp.path().join("batch.jsonl");
            std::fs::write(&file, text).expect("the batch file");
            let t = Instant::now();
            let out = Command::new(bin.expect("the binary is built"))
                .arg("--root")
                .arg(root.dir())
                .args(["submit", "--domain", "org", "--tasker", "cat", "--batch"])
                .arg(&file)
                .output()
                .expect("run spoolflow");
            let took = t.elapsed();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{err}");
            assert_eq!(out.stdout.iter().filter(|&&b| b == b'\n').count(), tasks);
            took
        }
    };
    assert_eq!(count_in(&root), tasks);
    keep.push(tmp);
    took
}

/// Microseconds to create an empty file, over 1000 files: in a new
/// directory beside the roots, and in a subdirectory of a directory whose
/// subdirectories the filesystem is asked to spread (as a batch's files'
/// directory is).
fn fs_probe(keep: &mut Vec<tempfile::TempDir>) -> (f64, f64) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let create = |dir: &Path| {
        std::fs::create_dir_all(dir).expect("a probe directory");
        let t = Instant::now();
        for i in 0..1000 {
            std::fs::File::create(dir.join(i.to_string())).expect("a probe file");
        }
        t.elapsed().as_secs_f64() * 1e6 / 1000.0
    };
    let plain = create(&tmp.path().join("plain"));
    let spread = tmp.path().join("spread");
    std::fs::create_dir(&spread).expect("a probe directory");
    spoolflow::store::spool::spread_subdirs(&spread);
    // A name of its own, as a batch's files' directory has.
    let name = tmp
        .path()
        .file_name()
        .expect("a temporary directory's name");
    let spread = create(&spread.join(name));
    keep.push(tmp);
    (plain, spread)
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

fn main() {
    let args = parse_args();
    let text = lines(args.tasks);
    let mut variants = vec![Variant::Library(BatchSync::Filesystem)];
    if args.fsync_each {
        variants.push(Variant::Library(BatchSync::EachFile));
    }
    let bin = args.binary.then(build);
    if bin.is_some() {
        variants.push(Variant::Binary);
    }
    // Every root is removed at the end only: inodes freed now would slow
    // down the files of the next runs (see the top of this file).
    let mut keep = Vec::new();
    let probe_before = fs_probe(&mut keep);
    let mut best = vec![Duration::MAX; variants.len()];
    for _ in 0..args.runs {
        for (v, b) in variants.iter().zip(best.iter_mut()) {
            *b = (*b).min(measure(*v, &text, args.tasks, bin.as_deref(), &mut keep));
        }
    }
    let probe_after = fs_probe(&mut keep);
    println!(
        "submit --batch, {} tasks, best of {} rounds, roots in {}",
        args.tasks,
        args.runs,
        std::env::temp_dir().display()
    );
    for (v, took) in variants.iter().zip(&best) {
        println!(
            "{:<32} {:>8.1} ms  {:>9.0} tasks/s",
            v.name(),
            took.as_secs_f64() * 1000.0,
            args.tasks as f64 / took.as_secs_f64()
        );
    }
    println!(
        "file creation probe: {:.0} µs/file in a plain directory, {:.0} in a spread one before the runs; {:.0} and {:.0} after",
        probe_before.0, probe_before.1, probe_after.0, probe_after.1
    );
}
