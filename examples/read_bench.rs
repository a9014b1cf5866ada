//! How fast the reading commands answer on a large root: `status` and
//! `list --limit 20` over N ended records (default 100 000), first with no
//! records index (it is built), then with it (the usual case), then after
//! 100 new records (the index is brought up to date).
//!
//! ```text
//! cargo run --release --example read_bench -- [--records N]
//! ```
//!
//! The root is made in `$TMPDIR` (use `TMPDIR=/dev/shm` for tmpfs) with
//! records written as the engine writes them (one JSON file each, in
//! `done/` and `failed/`), and the commands run as the built binary, as an
//! operator runs them. Each figure is the best of 3 runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

fn main() {
    let mut records = 100_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--records" => {
                records = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--records N")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let bin = build();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    run(&bin, root, &["init"]);
    eprintln!("writing {records} records…");
    write_records(root, 0, records);

    let status = ["status", "--json"];
    let list = [
        "list", "--limit", "20", "--state", "failed", "--sort", "-ended",
    ];
    let cold_status = time_cold(&bin, root, &status);
    let cold_list = time_cold(&bin, root, &list);
    let warm_status = best(&bin, root, &status);
    let warm_list = best(&bin, root, &list);
    write_records(root, records, 100);
    let fresh_status = once(&bin, root, &status);
    let index = std::fs::metadata(root.join("var/cache/records.idx"))
        .map(|m| m.len())
        .unwrap_or(0);

    println!("### Reading commands over {records} records (best of 3, ms)");
    println!();
    println!("| command | no index (built) | with the index | 100 new records |");
    println!("|---|---:|---:|---:|");
    println!(
        "| `status --json` | {} | {} | {} |",
        ms(cold_status),
        ms(warm_status),
        ms(fresh_status)
    );
    println!(
        "| `list --limit 20 --state failed --sort -ended` | {} | {} | |",
        ms(cold_list),
        ms(warm_list)
    );
    println!();
    println!(
        "records index: {:.1} MiB ({} bytes per record)",
        index as f64 / 1048576.0,
        index / (records as u64 + 100)
    );
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// Builds the release binary and gives its path.
fn build() -> PathBuf {
    let ok = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--bin", "spoolflow"])
        .status()
        .expect("cargo build");
    assert!(ok.success(), "cargo build failed");
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/spoolflow")
}

fn run(bin: &Path, root: &Path, args: &[&str]) -> Duration {
    let start = Instant::now();
    let out = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("SPOOLFLOW_ROOT")
        .output()
        .expect("run spoolflow");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// The time with no index (removed before each run).
fn time_cold(bin: &Path, root: &Path, args: &[&str]) -> Duration {
    (0..3)
        .map(|_| {
            let _ = std::fs::remove_file(root.join("var/cache/records.idx"));
            run(bin, root, args)
        })
        .min()
        .unwrap_or_default()
}

fn best(bin: &Path, root: &Path, args: &[&str]) -> Duration {
    (0..3)
        .map(|_| run(bin, root, args))
        .min()
        .unwrap_or_default()
}

fn once(bin: &Path, root: &Path, args: &[&str]) -> Duration {
    run(bin, root, args)
}

/// Writes `n` records starting at number `from`: one in ten failed, in
/// four domains and three taskees.
fn write_records(root: &Path, from: usize, n: usize) {
    for i in from..from + n {
        let id = format!("task-{i:07}");
        let failed = i % 10 == 0;
        let r = json!({
            "id": id, "exid": id, "nid": "0",
            "domain": format!("org.example.d{}", i % 4),
            "tasker": null, "taskee": format!("t{}", i % 3),
            "tasker_path": format!("tsk/org.example/t{}", i % 3),
            "state": if failed { "failed" } else { "completed" },
            "reason": if failed { Some("the work failed") } else { None },
            "error": if failed { Some(json!({"kind": "work", "message": "the work failed"})) } else { None },
            "attempts": 1, "offers": 1, "priority": 0, "headers": {},
            "created_at": format!("2026-12-01T10:{:02}:{:02}.000000Z", i / 60 % 60, i % 60),
            "started_at": format!("2026-12-01T10:{:02}:{:02}.100000Z", i / 60 % 60, i % 60),
            "ended_at": format!("2026-12-01T10:{:02}:{:02}.200000Z", i / 60 % 60, i % 60),
            "payload": { "n": i, "book": "moby-dick", "stamp": "2026-12-01T10:00:00Z" }
        });
        let dir = if failed { "failed" } else { "done" };
        std::fs::write(
            root.join(format!("var/spool/{dir}/{id}.json")),
            r.to_string(),
        )
        .expect("write a record");
    }
}
