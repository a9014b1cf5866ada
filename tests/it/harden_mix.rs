//! Issue 15, the hostile mix (through the built binary): while a steady
//! stream of good tasks runs, every hostile tasker and spool entry of the
//! issue at once. Every good task completes, its drop → `started` p99 under
//! 1 s; every hostile task ends with its own reply or a reason; every
//! hostile entry ends in `rejected/` with a reason; SIGTERM stops the
//! engine within its grace (and the kill grace that follows it) while a
//! tasker that ignores SIGTERM still runs.

use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::common::*;

/// Good tasks dropped, one every [`GOOD_EVERY`].
const GOOD: usize = 60;
const GOOD_EVERY: Duration = Duration::from_millis(50);
/// The engine's grace on SIGTERM; a tasker still running then gets
/// SIGTERM, and SIGKILL [`KILL_GRACE_SECS`] later (SPEC 10).
const GRACE_SECS: u64 = 2;
const KILL_GRACE_SECS: u64 = 5;

/// The hostile taskers: name, script, and what their task must end as
/// (`state`, and a piece of the reason or of the payload).
fn hostile_taskers() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let reply = r#"echo '{"ok":"reply"}'"#;
    let failed = r#"echo '{"point":"failed","reason":"the work failed"}'"#;
    vec![
        (
            "fifo",
            format!("cat >/dev/null; rm -f \"$SPOOLFLOW_POINTS\"; mkfifo \"$SPOOLFLOW_POINTS\"; {reply}"),
            "completed",
            "reply",
        ),
        (
            "zero",
            format!("cat >/dev/null; rm -f \"$SPOOLFLOW_POINTS\"; ln -s /dev/zero \"$SPOOLFLOW_POINTS\"; {reply}"),
            "completed",
            "reply",
        ),
        (
            "pdir",
            format!("cat >/dev/null; rm -f \"$SPOOLFLOW_POINTS\"; mkdir \"$SPOOLFLOW_POINTS\"; {reply}"),
            "completed",
            "reply",
        ),
        (
            "grow",
            format!(
                "cat >/dev/null; (while :; do echo '{{\"point\":\"tick\"}}'; done >>\"$SPOOLFLOW_POINTS\") & sleep 1; {reply}"
            ),
            "completed",
            "reply",
        ),
        (
            "detacherr",
            format!("cat >/dev/null; {failed}; setsid sleep 20 >/dev/null &"),
            "failed",
            "the work failed",
        ),
        (
            "detachout",
            format!("cat >/dev/null; {failed}; setsid sleep 20 2>/dev/null &"),
            "failed",
            "the work failed",
        ),
        (
            "burst",
            format!(
                "cat >/dev/null; python3 -c 'import sys\nfor i in range(20000): sys.stdout.write(\"{{\\\"point\\\":\\\"p\\\",\\\"i\\\":%d}}\\n\" % i)' >>\"$SPOOLFLOW_POINTS\"; {reply}"
            ),
            "completed",
            "reply",
        ),
        (
            "noisy",
            format!("cat >/dev/null; head -c 20000000 /dev/zero | tr '\\0' x >&2; {reply}"),
            "completed",
            "reply",
        ),
    ]
}

/// Writes the root: good and hostile taskers, broken taskmasters.
fn setup(t: &TestRoot) {
    t.tasker("good", "cat", "#!/bin/sh\ncat\n");
    for (name, script, _, _) in hostile_taskers() {
        t.tasker("bad", name, &format!("#!/bin/sh\n{script}\n"));
    }
    // Ignores SIGTERM: the engine's grace ends it.
    t.tasker(
        "bad",
        "stubborn",
        &format!(
            "#!/bin/sh\ntrap '' TERM\ncat >/dev/null\ntouch \"$SPOOLFLOW_ROOT/stubborn-runs\"\n{}\n",
            wait_file("never")
        ),
    );
    t.tasker("tmdir", "cat", "#!/bin/sh\ncat\n");
    fs::create_dir_all(t.join("tsk/tmdir/taskmaster.rhai")).unwrap();
    t.tasker("tm42", "cat", "#!/bin/sh\ncat\n");
    t.taskmaster("tm42", "42");
}

/// Drops the hostile tasks and entries.
fn drop_hostile(t: &TestRoot) {
    for (name, _, _, _) in hostile_taskers() {
        t.drop_task(
            &format!("{name}.json"),
            &format!(r#"{{"domain":"bad","tasker":"{name}"}}"#),
        );
    }
    t.drop_task("tmdir.json", r#"{"domain":"tmdir","tasker":"cat"}"#);
    t.drop_task("tm42.json", r#"{"domain":"tm42","tasker":"cat"}"#);
    let in_dir = t.join("var/spool/in");
    let mut raw = in_dir.as_os_str().as_bytes().to_vec();
    raw.extend_from_slice(b"/caf\xe9.json");
    fs::write(
        std::ffi::OsStr::from_bytes(&raw),
        br#"{"domain":"good","tasker":"cat"}"#,
    )
    .unwrap();
    t.drop_task(
        "dupkeys.json",
        r#"{"domain":"good","tasker":"cat","tasker":"other"}"#,
    );
    t.drop_bytes(
        "in",
        "bom.json",
        b"\xef\xbb\xbf{\"domain\":\"good\",\"tasker\":\"cat\"}",
    );
}

/// The engine, its log going to a file (a pipe nobody reads would fill).
fn spawn(t: &TestRoot) -> Child {
    let log = File::create(t.join("engine.err")).unwrap();
    t.cmd()
        .args(["run", "--workers", "16", "--grace"])
        .arg(format!("{GRACE_SECS}s"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn spoolflow run")
}

fn ts(p: &Value) -> DateTime<Utc> {
    p["ts"].as_str().unwrap().parse().unwrap()
}

#[test]
fn good_tasks_run_on_time_through_every_hostile_tasker_and_entry() {
    let t = TestRoot::new();
    setup(&t);
    let mut engine = spawn(&t);
    drop_hostile(&t);
    t.drop_task("stubborn.json", r#"{"domain":"bad","tasker":"stubborn"}"#);
    let mut dropped = Vec::new();
    for i in 0..GOOD {
        let at: DateTime<Utc> = SystemTime::now().into();
        t.drop_task(
            &format!("good-{i}.json"),
            r#"{"domain":"good","tasker":"cat"}"#,
        );
        dropped.push(at);
        std::thread::sleep(GOOD_EVERY);
    }

    // Every good task completes, started soon after its drop.
    wait_for("every good task's record", Duration::from_secs(60), || {
        (0..GOOD).all(|i| t.record(&format!("good-{i}")).is_some())
    });
    let mut lat: Vec<Duration> = (0..GOOD)
        .map(|i| {
            let id = format!("good-{i}");
            assert_eq!(t.must_record(&id)["state"], "completed", "{id}");
            let started = t.points_named(&id, "started");
            (ts(&started[0]) - dropped[i]).to_std().unwrap_or_default()
        })
        .collect();
    lat.sort();
    let p99 = lat[(lat.len() * 99).div_ceil(100) - 1];
    let slowest = &lat[lat.len() - 5..];
    assert!(
        p99 < Duration::from_secs(1),
        "drop → started p99 {p99:?}; the slowest {slowest:?}, the median {:?}",
        lat[lat.len() / 2]
    );

    // Every hostile task ends with its reply or a reason.
    let hostile = hostile_taskers();
    wait_for(
        "every hostile task's record",
        Duration::from_secs(60),
        || {
            hostile.iter().all(|h| t.record(h.0).is_some())
                && t.record("tmdir").is_some()
                && t.record("tm42").is_some()
        },
    );
    for (name, _, state, said) in &hostile {
        let rec = t.must_record(name);
        assert_eq!(rec["state"], *state, "{name}: {rec:#}");
        let shown = format!("{}{}", rec["reason"], rec["payload"]);
        assert!(shown.contains(said), "{name}: {rec:#}");
    }
    for id in ["tmdir", "tm42"] {
        let rec = t.must_record(id);
        assert_eq!(rec["error"]["kind"], "config", "{rec:#}");
    }
    let noisy_err = fs::metadata(t.join("var/log/tsk/noisy.err")).unwrap().len();
    assert!(noisy_err < 4 << 20, "noisy.err kept {noisy_err} bytes");

    // Every hostile entry is in rejected/ with a reason.
    wait_for("three rejections with reasons", DEADLINE, || {
        let names = t.list("var/spool/rejected");
        names.iter().filter(|n| n.ends_with(".reason")).count() >= 3
            && names.iter().any(|n| n.starts_with("dupkeys"))
            && names.iter().any(|n| n.starts_with("bom"))
            && names.iter().any(|n| n.starts_with("caf"))
    });
    for name in ["dupkeys.json", "bom.json"] {
        let reason = t.rejected_reason(name).unwrap_or_default();
        assert!(!reason.trim().is_empty(), "{name} has no reason");
    }

    // SIGTERM with a tasker that ignores it: the engine ends within grace.
    wait_for("the stubborn tasker to run", DEADLINE, || {
        t.join("stubborn-runs").exists()
    });
    let sent = Instant::now();
    kill(Pid::from_raw(engine.id() as i32), Signal::SIGTERM).unwrap();
    let end = sent + Duration::from_secs(GRACE_SECS + KILL_GRACE_SECS + 10);
    while engine.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < end,
            "the engine did not stop within its grace"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = sent.elapsed();
    let log = fs::read_to_string(t.join("engine.err")).unwrap_or_default();
    assert!(
        took < Duration::from_secs(GRACE_SECS + KILL_GRACE_SECS + 3),
        "stop took {took:?}:\n{log}"
    );
}
