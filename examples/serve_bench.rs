//! How fast the dashboard answers on a large root: the overview (`/`),
//! the first page of tasks (`/tasks`), and their JSON (`/api/status`,
//! `/api/tasks`) over N ended records (default 100 000) with a points log
//! each, served by the release binary (`spoolflow serve`) on a loopback
//! port.
//!
//! ```text
//! cargo run --release --example serve_bench -- [--records N]
//! ```
//!
//! The root is made in `$TMPDIR` with records written as the engine writes
//! them (one JSON file each in `done/` and `failed/`, ended over the last
//! hour, one in ten failed). Figures: the server's start (until it prints
//! its address), the first overview (the records index is built then),
//! and the best of 5 for each page afterwards (the usual case); then, as
//! while an engine finishes tasks, the overview's JSON right after each of
//! 5 new records (the first answer that counts it: the server brings its
//! records up to date then).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    let ok = Command::new(&bin)
        .arg("init")
        .arg(root)
        .stdout(Stdio::null())
        .status()
        .expect("init");
    assert!(ok.success());
    eprintln!("writing {records} records and their points logs…");
    write_records(root, records);

    let (started, first, best, fresh) = measure(&bin, root);
    // Again, as after a restart: the records index exists now.
    let (_, first_indexed, _, _) = measure(&bin, root);

    println!("### The dashboard over {records} records (ms)");
    println!();
    println!("server start (until it listens): {}", ms(started));
    println!(
        "first overview, no records index (it is built): {}",
        ms(first.0)
    );
    println!(
        "first overview, records index there (a restart): {}",
        ms(first_indexed.0)
    );
    println!();
    println!("| page | best of 5 | bytes |");
    println!("|---|---:|---:|");
    for (p, (d, n)) in PAGES.iter().zip(best) {
        println!("| `{p}` | {} | {n} |", ms(d));
    }
    let shown: Vec<String> = fresh.iter().map(|d| ms(*d)).collect();
    println!();
    println!(
        "`/api/status` after each of 5 new records: {} (ms)",
        shown.join(", ")
    );
}

const PAGES: [&str; 5] = [
    "/",
    "/tasks",
    "/api/status",
    "/api/tasks",
    "/tasks?state=failed&sort=-ended",
];

/// What [`measure`] gives: the time until the server listens, the first
/// overview, the best of 5 for each page, the status after each new record.
type Measures = (
    Duration,
    (Duration, usize),
    Vec<(Duration, usize)>,
    Vec<Duration>,
);

/// Starts the server and measures it (see [`Measures`]).
fn measure(bin: &Path, root: &Path) -> Measures {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("SPOOLFLOW_TOKEN")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap_or(0) > 0, "serve exited");
        if let Some(a) = line
            .trim()
            .strip_prefix("spoolflow serve: listening on http://")
        {
            break a.trim_end_matches('/').to_string();
        }
    };
    let started = start.elapsed();
    let first = get(&addr, "/");
    let best: Vec<(Duration, usize)> = PAGES
        .iter()
        .map(|p| (0..5).map(|_| get(&addr, p)).min().unwrap_or_default())
        .collect();
    let fresh = (0..5).map(|_| after_a_record(&addr, root)).collect();
    let _ = child.kill();
    let _ = child.wait();
    (started, first, best, fresh)
}

/// Writes one more record (as the engine does: aside, then renamed in)
/// and asks `/api/status` until it counts it; the time of that answer.
fn after_a_record(addr: &str, root: &Path) -> Duration {
    let completed = |body: &[u8]| -> u64 {
        let at = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
        let v: serde_json::Value = serde_json::from_slice(&body[at..]).unwrap_or_default();
        v["total"]["completed"].as_u64().unwrap_or(0)
    };
    let before = completed(&get_body(addr, "/api/status").1);
    let id = format!("new-{}", before);
    let record = json!({"id": id, "exid": id, "nid": "0", "domain": "org.example",
        "tasker": null, "taskee": "t0", "tasker_path": null, "state": "completed",
        "reason": null, "error": null, "attempts": 1, "offers": 1, "priority": 0,
        "headers": {}, "created_at": null, "started_at": null, "ended_at": null, "payload": {}});
    let aside = root.join("var/spool/done/.new");
    std::fs::write(&aside, record.to_string()).expect("write a record");
    std::fs::rename(&aside, root.join(format!("var/spool/done/{id}.json"))).expect("rename");
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (took, body) = get_body(addr, "/api/status");
        if completed(&body) > before {
            return took;
        }
        assert!(Instant::now() < end, "the new record was never counted");
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// One GET, timed to the last byte of the answer.
fn get(addr: &str, path: &str) -> (Duration, usize) {
    let (took, body) = get_body(addr, path);
    (took, body.len())
}

/// One GET: its time and the whole answer (headers and body).
fn get_body(addr: &str, path: &str) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut body = Vec::new();
    s.read_to_end(&mut body).expect("read");
    let took = start.elapsed();
    assert!(
        body.starts_with(b"HTTP/1.1 200"),
        "{path}: {}",
        String::from_utf8_lossy(&body[..body.len().min(200)])
    );
    (took, body)
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

/// Writes `n` records (as `read_bench` does, ended over the last hour)
/// and a points log for each.
fn write_records(root: &Path, n: usize) {
    let now = chrono::Utc::now();
    let ts = |secs_ago: i64| {
        (now - chrono::Duration::seconds(secs_ago))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    for i in 0..n {
        let id = format!("task-{i:07}");
        let failed = i % 10 == 0;
        let ago = (n - i) as i64 * 3600 / n as i64;
        let r = json!({
            "id": id, "exid": id, "nid": "0",
            "domain": format!("org.example.d{}", i % 4),
            "tasker": null, "taskee": format!("t{}", i % 3),
            "tasker_path": format!("tsk/org.example/t{}", i % 3),
            "state": if failed { "failed" } else { "completed" },
            "reason": if failed { Some("the work failed") } else { None },
            "error": if failed { Some(json!({"kind": "work", "message": "the work failed"})) } else { None },
            "attempts": 1, "offers": 1, "priority": 0, "headers": {},
            "created_at": ts(ago + 1), "started_at": ts(ago + 1), "ended_at": ts(ago),
            "payload": { "n": i, "book": "moby-dick", "stamp": "2026-12-01T10:00:00Z" }
        });
        let dir = if failed { "failed" } else { "done" };
        std::fs::write(
            root.join(format!("var/spool/{dir}/{id}.json")),
            r.to_string(),
        )
        .expect("write a record");
        let log: String = [
            "created",
            "offered",
            "started",
            if failed { "failed" } else { "completed" },
        ]
        .iter()
        .map(|p| {
            format!(
                "{}\n",
                json!({"ts": ts(ago), "id": id, "exid": id, "nid": "0", "point": p})
            )
        })
        .collect();
        std::fs::write(root.join(format!("var/log/tsk/{id}.log")), log).expect("write a log");
    }
}
