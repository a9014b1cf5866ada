//! The dashboard and the reading commands against what a tasker (or
//! anyone able to write under the root) may leave in `var/`: a FIFO or a
//! symbolic link in place of a task's stderr log, points log or a
//! rejection's reason never hangs a page, a command or the live feed, and
//! a link is never followed out of the root.

use std::process::Stdio;
use std::time::Duration;

use super::serve_support::*;
use crate::common::*;

/// Runs tasks `ids` to their end (their tasker writes a line on stderr
/// and replies its payload).
fn run_tasks(t: &TestRoot, ids: &[&str]) {
    t.tasker("d", "echo", "#!/bin/sh\necho to-stderr >&2\ncat\n");
    for id in ids {
        t.drop_task(
            &format!("{id}.json"),
            &format!(r#"{{"id":"{id}","domain":"d","tasker":"echo","payload":{{}}}}"#),
        );
    }
    t.run_drain(2);
}

/// A root with tasks `fifo`, `sneaky` and `plain` ended, then the stderr
/// log of `fifo` replaced by a FIFO and that of `sneaky` by a link to a
/// file outside the root.
fn hostile_root() -> (TestRoot, tempfile::TempDir) {
    let t = TestRoot::new();
    run_tasks(&t, &["fifo", "sneaky", "plain"]);
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "SECRET-OUTSIDE-THE-ROOT\n").unwrap();
    let logs = t.join("var/log/tsk");
    std::fs::remove_file(logs.join("fifo.err")).unwrap();
    nix::unistd::mkfifo(
        &logs.join("fifo.err"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::fs::remove_file(logs.join("sneaky.err")).unwrap();
    std::os::unix::fs::symlink(&secret, logs.join("sneaky.err")).unwrap();
    (t, outside)
}

#[test]
fn a_fifo_or_a_link_as_a_stderr_log_neither_hangs_nor_leaks_a_page() {
    let (t, _outside) = hostile_root();
    let srv = serve(&t, &[]);
    // More requests than the server has blocking threads (8): each
    // answers (the client gives up at its deadline otherwise).
    for _ in 0..10 {
        let page = get(&srv, "/tasks/fifo");
        assert_eq!(page.status, 200, "{}", page.body);
    }
    for path in ["/tasks/fifo", "/api/tasks/fifo/logs", "/", "/tasks/plain"] {
        assert_eq!(get(&srv, path).status, 200, "{path}");
    }
    assert!(get(&srv, "/api/tasks/plain/logs")
        .body
        .contains("to-stderr"));
    for path in ["/tasks/sneaky", "/api/tasks/sneaky/logs"] {
        let r = get(&srv, path);
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.body.contains("SECRET-OUTSIDE"), "{path}: {}", r.body);
    }
}

#[test]
fn a_fifo_or_a_link_as_a_stderr_log_neither_hangs_nor_leaks_logs() {
    let (t, _outside) = hostile_root();
    for id in ["fifo", "sneaky"] {
        let child = t
            .cmd()
            .args(["logs", "--stderr", id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_output(child, DEADLINE);
        assert!(out.contains("completed"), "{id}: {out}");
        assert!(!out.contains("SECRET-OUTSIDE"), "{id}: {out}");
    }
}

#[test]
fn a_fifo_or_a_link_as_a_rejection_reason_is_no_reason() {
    let t = TestRoot::new();
    let rejected = t.join("var/spool/rejected");
    std::fs::write(rejected.join("r1.json"), "{").unwrap();
    nix::unistd::mkfifo(
        &rejected.join("r1.json.reason"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::fs::write(rejected.join("r2.json"), "{").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "SECRET-OUTSIDE\n").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        rejected.join("r2.json.reason"),
    )
    .unwrap();
    let srv = serve(&t, &[]);
    for path in ["/", "/tasks?state=rejected", "/tasks/r1", "/tasks/r2"] {
        let r = get(&srv, path);
        assert!(r.status < 500, "{path}: {}", r.status);
        assert!(!r.body.contains("SECRET-OUTSIDE"), "{path}: {}", r.body);
    }
    for id in ["r1", "r2"] {
        let child = t
            .cmd()
            .args(["show", id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_output(child, DEADLINE);
        assert!(
            out.contains(id) && !out.contains("SECRET-OUTSIDE"),
            "{id}: {out}"
        );
    }
}

/// Waits for a command to exit within `deadline` (killed and failed
/// otherwise); its stdout and stderr.
fn wait_output(mut child: std::process::Child, deadline: Duration) -> String {
    let mut status = None;
    let end = std::time::Instant::now() + deadline;
    while status.is_none() {
        status = child.try_wait().unwrap();
        if status.is_none() && std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("the command did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_huge_points_log_gives_a_bounded_page_and_answer() {
    use std::io::Write;
    let t = TestRoot::new();
    run_tasks(&t, &["big"]);
    // A tasker may copy 10 000 points per run, a flow has many runs: 24 MB.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(t.join("var/log/tsk/big.log"))
        .unwrap();
    let line = format!(
        "{{\"ts\":\"2026-12-05T10:00:00.000000Z\",\"id\":\"big\",\"exid\":\"big\",\"nid\":\"0\",\"point\":\"progress\",\"source\":\"tasker\",\"note\":\"{}\"}}\n",
        "x".repeat(140)
    );
    let mut chunk = String::new();
    for _ in 0..1000 {
        chunk.push_str(&line);
    }
    for _ in 0..100 {
        log.write_all(chunk.as_bytes()).unwrap();
    }
    drop(log);
    let srv = serve(&t, &[]);
    let page = get(&srv, "/tasks/big");
    assert_eq!(page.status, 200);
    let api = get(&srv, "/api/tasks/big");
    assert_eq!(api.status, 200);
    assert!(api.body.len() < 8 << 20, "{} bytes", api.body.len());
    let v = api.json();
    let points = v["points"].as_array().unwrap();
    assert!(
        !points.is_empty() && points.len() < 100_000,
        "{}",
        points.len()
    );
    assert_eq!(points.last().unwrap()["point"], "progress");
}

#[test]
fn records_moved_away_and_a_new_done_directory_are_seen() {
    let t = TestRoot::new();
    run_tasks(&t, &["a1"]);
    let srv = serve(&t, &[]);
    let status = |srv: &Server| get(srv, "/api/status").json();
    assert_eq!(status(&srv), cli_json(&t, &["status", "--json"]));
    // An operator archives done/ and makes it again; a task runs.
    let archive = tempfile::tempdir().unwrap();
    std::fs::rename(t.join("var/spool/done"), archive.path().join("done")).unwrap();
    std::fs::create_dir(t.join("var/spool/done")).unwrap();
    run_tasks(&t, &["a2"]);
    let cli = cli_json(&t, &["status", "--json"]);
    wait_for(
        "the dashboard to count what done/ holds now",
        DEADLINE,
        || status(&srv) == cli,
    );
    wait_for("the dashboard to list the new record", DEADLINE, || {
        get(&srv, "/api/tasks?q=a2").json().as_array().map(Vec::len) == Some(1)
    });
    assert!(get(&srv, "/api/tasks?q=a1")
        .json()
        .as_array()
        .unwrap()
        .is_empty());
}
