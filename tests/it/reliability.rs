//! SPEC 8 and 10: cancelling (queued, running, still in `in/`, unknown and
//! ended ids), graceful stop and recovery, and hostile taskmaster scripts
//! that must fail only their own task. Real `sh` taskers, real signals, the
//! engine in-process or as the built binary.

use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::common::*;

fn has_point(t: &TestRoot, id: &str, name: &str) -> bool {
    t.point_names(id).iter().any(|p| p == name)
}

/// A tasker that holds its worker until `$SPOOLFLOW_ROOT/release` exists.
fn blocking_tasker(t: &TestRoot, domain: &str, name: &str) {
    t.tasker(
        domain,
        name,
        &format!(
            "#!/bin/sh\n{}\necho '{{\"released\":true}}'\n",
            wait_file("release")
        ),
    );
}

/// Drops a cancel request `var/spool/cancel/<name>` the safe way.
fn drop_cancel(t: &TestRoot, name: &str, content: &str) {
    let dir = t.join("var/spool/cancel");
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

fn release(t: &TestRoot) {
    fs::write(t.join("release"), "").unwrap();
}

/// Runs `f` while an in-process `--drain` engine with `workers` runs on
/// `t`; returns once both are done.
fn while_draining(t: &TestRoot, workers: usize, f: impl FnOnce()) {
    std::thread::scope(|s| {
        let engine = s.spawn(|| t.run_drain(workers));
        f();
        engine.join().expect("the engine thread panicked");
    });
}

fn assert_aborted(t: &TestRoot, id: &str, reason: &str) -> Value {
    let rec = t.must_cancelled_record(id, reason);
    let last = t.points(id).pop().expect("points");
    assert_eq!(last["point"], "aborted", "{last}");
    assert_eq!(last["reason"], reason, "{last}");
    rec
}

// ------------------------------------------------------------------ cancel

#[test]
fn cancelling_a_queued_task_aborts_it_at_once() {
    let t = TestRoot::new();
    blocking_tasker(&t, "org", "block");
    t.tasker(
        "org",
        "never",
        "#!/bin/sh\ntouch \"$SPOOLFLOW_ROOT/second-ran\"\n",
    );
    t.drop_task(
        "a.json",
        r#"{"id":"first","domain":"org","tasker":"block"}"#,
    );
    t.drop_task(
        "b.json",
        r#"{"id":"second","domain":"org","tasker":"never"}"#,
    );
    while_draining(&t, 1, || {
        wait_for("first to start", DEADLINE, || {
            has_point(&t, "first", "started")
        });
        assert!(has_point(&t, "second", "created"));
        drop_cancel(&t, "second", "no longer needed\n");
        wait_for("second's record", DEADLINE, || t.record("second").is_some());
        // Aborted while first still holds the only worker.
        assert!(t.record("first").is_none());
        release(&t);
    });
    let rec = assert_aborted(&t, "second", "no longer needed");
    assert_eq!(rec["attempts"], 0, "{rec:#}");
    assert!(!has_point(&t, "second", "started"));
    assert!(!t.join("second-ran").exists());
    // The request was consumed, not rejected.
    assert!(t.list("var/spool/cancel").is_empty());
    assert!(t.list("var/spool/rejected").is_empty());
    let first = t.must_record("first");
    assert_eq!(first["state"], "completed");
    assert_eq!(first["payload"], json!({"released":true}));
}

#[test]
fn cancelling_a_running_task_terms_its_group() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "slow",
        r#"#!/bin/sh
sleep 60 </dev/null >/dev/null 2>&1 &
echo $! > "$SPOOLFLOW_ROOT/gc.tmp" && mv "$SPOOLFLOW_ROOT/gc.tmp" "$SPOOLFLOW_ROOT/gc.pid"
sleep 60
echo '{"finished":true}'
"#,
    );
    t.drop_task("a.json", r#"{"domain":"org","tasker":"slow"}"#);
    let engine = t.spawn_engine(&["--drain", "--workers", "1"]);
    wait_for("the tasker and its grandchild", DEADLINE, || {
        t.join("gc.pid").exists() && has_point(&t, "a", "started")
    });
    let gc: i32 = fs::read_to_string(t.join("gc.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let leader = t.points_named("a", "started")[0]["pid"].as_i64().unwrap() as i32;
    assert!(!process_gone(gc) && !process_gone(leader));

    let asked = Instant::now();
    let o = t
        .cmd()
        .args(["cancel", "a", "--reason", "operator said so"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_for("a's record", DEADLINE, || t.record("a").is_some());
    // SIGTERM did it (the tasker traps nothing), not the SIGKILL that
    // would follow 5 s later.
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "{:?}",
        asked.elapsed()
    );
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");

    let rec = assert_aborted(&t, "a", "operator said so");
    assert_eq!(rec["attempts"], 1);
    assert!(rec["started_at"].is_string());
    assert_eq!(rec["payload"], json!({}));
    wait_for("the tasker to be gone", DEADLINE, || process_gone(leader));
    wait_for("the grandchild to be gone", DEADLINE, || process_gone(gc));
    assert!(t.list("var/spool/cancel").is_empty());
}

#[test]
fn cancel_requests_for_unknown_or_ended_tasks_are_rejected() {
    let t = TestRoot::new();
    t.tasker("org", "ok", "#!/bin/sh\n");
    blocking_tasker(&t, "org", "block");
    t.drop_task("fin.json", r#"{"domain":"org","tasker":"ok"}"#);
    t.run_drain(1);
    assert_eq!(t.must_record("fin")["state"], "completed");
    let fin_bytes = fs::read(t.join("var/spool/done/fin.json")).unwrap();

    // Found at start-up …
    drop_cancel(&t, "ghost", "whatever");
    drop_cancel(&t, "fin", "too late");
    t.drop_task("hold.json", r#"{"domain":"org","tasker":"block"}"#);
    while_draining(&t, 1, || {
        wait_for("hold to start", DEADLINE, || {
            has_point(&t, "hold", "started")
        });
        // … and seen by the watcher of a running engine.
        drop_cancel(&t, "phantom", "");
        wait_for("phantom to be rejected", DEADLINE, || {
            t.rejected_reason("phantom").is_some()
        });
        release(&t);
    });
    for (name, expected) in [
        ("ghost", "unknown task id ghost"),
        ("phantom", "unknown task id phantom"),
        ("fin", "has ended already"),
    ] {
        let reason = t
            .rejected_reason(name)
            .unwrap_or_else(|| panic!("no rejected/{name}.reason"));
        assert!(reason.contains(expected), "{name}: {reason}");
    }
    assert_eq!(
        fs::read_to_string(t.join("var/spool/rejected/ghost")).unwrap(),
        "whatever"
    );
    assert!(t.list("var/spool/cancel").is_empty());
    // The ended task is untouched; the running one was not affected.
    assert_eq!(
        fs::read(t.join("var/spool/done/fin.json")).unwrap(),
        fin_bytes
    );
    assert_eq!(t.must_record("hold")["state"], "completed");
}

#[test]
fn a_cancel_for_a_task_still_in_in_applies_when_it_is_taken() {
    let t = TestRoot::new();
    t.tasker("org", "ok", "#!/bin/sh\necho '{\"ran\":true}'\n");
    t.tasker(
        "org",
        "never",
        "#!/bin/sh\ntouch \"$SPOOLFLOW_ROOT/b-ran\"\n",
    );
    // Both wait in in/ (b in its domain's spool) with b's cancel request
    // before any engine runs.
    t.drop_task("a.json", r#"{"domain":"org","tasker":"ok"}"#);
    t.drop_task_in("org", "b.json", r#"{"tasker":"never","priority":9}"#);
    drop_cancel(&t, "b", "changed my mind");
    t.run_drain(1);
    let rec = assert_aborted(&t, "b", "changed my mind");
    assert_eq!(rec["domain"], "org");
    assert_eq!(rec["attempts"], 0);
    assert!(rec["started_at"].is_null());
    assert!(!has_point(&t, "b", "started"));
    assert!(!has_point(&t, "b", "offered"));
    assert!(!t.join("b-ran").exists());
    assert_eq!(t.must_record("a")["payload"], json!({"ran":true}));
    assert!(t.list("var/spool/cancel").is_empty());
    assert!(t.list("var/spool/rejected").is_empty());
}

// ------------------------------------------------------------------ stop

#[test]
fn graceful_stop_finishes_within_the_grace_and_recovers_the_rest() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "short",
        &format!(
            "#!/bin/sh\n{}\necho '{{\"short\":\"done\"}}'\n",
            wait_file("release")
        ),
    );
    t.tasker(
        "org",
        "long",
        r#"#!/bin/sh
echo "$SPOOLFLOW_ATTEMPT" >> "$SPOOLFLOW_ROOT/long-attempts"
if [ "$SPOOLFLOW_ATTEMPT" = 1 ]; then sleep 60; fi
echo "{\"long\":$SPOOLFLOW_ATTEMPT}"
"#,
    );
    t.drop_task("short.json", r#"{"domain":"org","tasker":"short"}"#);
    t.drop_task("long.json", r#"{"domain":"org","tasker":"long"}"#);
    let engine = t.spawn_engine(&["--grace", "1s", "--workers", "2"]);
    wait_for("both taskers to start", DEADLINE, || {
        has_point(&t, "short", "started") && has_point(&t, "long", "started")
    });
    let long_pid = t.points_named("long", "started")[0]["pid"]
        .as_i64()
        .unwrap() as i32;
    engine.signal(Signal::SIGTERM);
    // The engine says in its log that it stopped claiming.
    wait_for("the engine to begin stopping", DEADLINE, || {
        fs::read_to_string(t.join("var/log/engine.log")).is_ok_and(|l| l.contains("stopping"))
    });
    t.drop_task("late.json", r#"{"domain":"org","tasker":"short"}"#);
    release(&t);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");

    // The short one finished within the grace.
    let short = t.must_record("short");
    assert_eq!(short["state"], "completed", "{short:#}");
    assert_eq!(short["payload"], json!({"short":"done"}));
    // The long one was stopped and left in run/, with no record and no
    // final point.
    assert!(t.record("long").is_none());
    assert!(t.join("var/spool/run/long.json").exists());
    let names = t.point_names("long");
    assert_eq!(
        names.last().map(String::as_str),
        Some("started"),
        "{names:?}"
    );
    wait_for("the long tasker to be gone", DEADLINE, || {
        process_gone(long_pid)
    });
    // Nothing new was claimed after the signal.
    assert_eq!(t.list("var/spool/in"), ["late.json"]);
    assert!(t.points("late").is_empty());

    t.run_drain(2);
    let long = t.must_record("long");
    assert_eq!(long["state"], "completed", "{long:#}");
    assert_eq!(long["attempts"], 2);
    assert!(long["error"].is_null());
    assert_eq!(long["payload"], json!({"long":2}));
    let names = t.point_names("long");
    let recovered = names
        .iter()
        .position(|p| p == "recovered")
        .expect("recovered");
    let first_start = names.iter().position(|p| p == "started").unwrap();
    assert!(first_start < recovered, "{names:?}");
    assert!(
        !names.iter().any(|p| p == "retried" || p == "failed"),
        "{names:?}"
    );
    assert_eq!(
        fs::read_to_string(t.join("long-attempts")).unwrap(),
        "1\n2\n"
    );
    assert_eq!(t.must_record("late")["state"], "completed");
    assert!(t.list("var/spool/run").is_empty());
}

// ------------------------------------------------------------------ hostile taskmasters

#[test]
fn hostile_taskmasters_fail_their_own_task_only() {
    let t = TestRoot::new();
    t.tasker("any", "echo", "#!/bin/sh\ncat\n");
    let cases: &[(&str, &str, &[&str])] = &[
        // Which limit a hog meets first depends on how fast the build
        // runs it (a release build reaches the operation limit first).
        ("spin", "loop {}", &["operation limit", "time limit"]),
        (
            "hog-string",
            r#"let s = "x"; loop { s += s; }"#,
            &["size limit"],
        ),
        (
            "hog-array",
            "let a = []; loop { a.push(1); }",
            &["size limit", "time limit", "operation limit"],
        ),
        (
            "hog-map",
            "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
            &["size limit", "time limit", "operation limit"],
        ),
        (
            // Each string and the map stay within their own bounds; what
            // they hold together does not. On a loaded machine the 1 s
            // deadline may come first (the memory bound alone:
            // `sandbox::tests`).
            "hog-memory",
            r#"let m = #{}; let s = ""; s.pad(1000000, "y"); let i = 0; loop { m[`k${i}`] = s + i; i += 1; }"#,
            &["memory limit", "time limit"],
        ),
        ("deep", "fn f(n) { f(n + 1) } f(0)", &["call depth limit"]),
        ("importer", "import \"x\" as y;\n\"echo\"", &["import"]),
        ("evaluator", "eval(\"1\")", &["eval"]),
        (
            "spammer",
            r#"loop { print("spam"); }"#,
            &["operation limit", "time limit"],
        ),
    ];
    for (domain, script, _) in cases {
        t.taskmaster(domain, script);
        t.drop_task(
            &format!("{domain}.json"),
            &format!(r#"{{"domain":"{domain}","tasker":"echo","payload":{{"x":1}}}}"#),
        );
    }
    t.drop_task(
        "zz-good.json",
        r#"{"domain":"good","tasker":"echo","payload":{"fine":true}}"#,
    );
    let began = Instant::now();
    t.run_drain(2);
    // Each script is bounded (about a second at most).
    assert!(
        began.elapsed() < Duration::from_secs(25),
        "{:?}",
        began.elapsed()
    );
    for (domain, _, expected) in cases {
        let rec = t.must_record(domain);
        assert_eq!(rec["state"], "failed", "{domain}: {rec:#}");
        assert_eq!(rec["error"]["kind"], "config", "{domain}: {rec:#}");
        let reason = rec["reason"].as_str().unwrap();
        let prefix = format!("tsk/{domain}/taskmaster.rhai: ");
        assert!(reason.starts_with(&prefix), "{domain}: {reason}");
        assert!(
            expected.iter().any(|e| reason.contains(e)),
            "{domain}: {reason}"
        );
        assert!(!has_point(&t, domain, "started"), "{domain}");
        assert_eq!(
            t.point_names(domain).last().map(String::as_str),
            Some("failed")
        );
    }
    let good = t.must_record("zz-good");
    assert_eq!(good["state"], "completed", "{good:#}");
    assert_eq!(good["payload"], json!({"fine":true}));
}

/// A stop exits even when a task running at the signal ends during the
/// grace in a way that would queue it again (a `work` error to retry): the
/// task stays in `run/` for the next start.
#[test]
fn a_stop_exits_when_a_task_ending_in_the_grace_would_be_retried() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "flaky",
        &format!("#!/bin/sh\n{}\nexit 75\n", wait_file("release")),
    );
    t.drop_task("a.json", r#"{"domain":"org","tasker":"flaky"}"#);
    let engine = t.spawn_engine(&["--grace", "10s"]);
    wait_for("a started", DEADLINE, || {
        t.point_names("a").iter().any(|p| p == "started")
    });
    engine.signal(Signal::SIGTERM);
    // Only once the engine is stopping does the tasker end.
    wait_for("the engine to begin stopping", DEADLINE, || {
        fs::read_to_string(t.join("var/log/engine.log")).is_ok_and(|l| l.contains("stopping"))
    });
    fs::write(t.join("release"), "").unwrap();
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert!(t.record("a").is_none());
    assert_eq!(t.list("var/spool/run"), ["a.json"]);
    // The retry it had earned is kept for the next start.
    assert_eq!(t.points_named("a", "retried").len(), 1);
}

/// `spoolflow cancel` finds a task still in `in/` under another file name
/// (by the id inside), and answers exit 3 for an id nowhere in the spool.
#[test]
fn cancel_finds_a_task_in_in_by_the_id_inside() {
    let t = TestRoot::new();
    t.tasker("org", "echo", "#!/bin/sh\ncat\n");
    t.drop_task_in("org", "foo.json", r#"{"tasker":"echo","id":"order-7"}"#);
    let out = t
        .cmd()
        .args(["cancel", "order-7", "--reason", "changed my mind"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = t.cmd().args(["cancel", "nosuch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    t.run_drain(1);
    let rec = t.must_record("order-7");
    assert_eq!(rec["state"], "aborted");
    assert_eq!(rec["reason"], "changed my mind");
    assert!(t.points_named("order-7", "started").is_empty());
}

/// A cancel request that arrives while the engine stops, for a task it has
/// let go of (queued in `run/`), is kept and applied at the next start.
#[test]
fn a_cancel_during_a_stop_applies_at_the_next_start() {
    let t = TestRoot::new();
    blocking_tasker(&t, "org", "hold");
    t.drop_task("a.json", r#"{"domain":"org","tasker":"hold"}"#);
    t.drop_task("b.json", r#"{"domain":"org","tasker":"hold"}"#);
    let engine = t.spawn_engine(&["--workers", "1", "--grace", "20s"]);
    wait_for("a started", DEADLINE, || {
        t.point_names("a").iter().any(|p| p == "started")
    });
    engine.signal(Signal::SIGTERM);
    wait_for("the engine to begin stopping", DEADLINE, || {
        fs::read_to_string(t.join("var/log/engine.log")).is_ok_and(|l| l.contains("stopping"))
    });
    drop_cancel(&t, "b", "not needed after all");
    fs::write(t.join("release"), "").unwrap();
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert!(t.rejected_reason("b").is_none(), "the request was kept");
    assert_eq!(t.list("var/spool/cancel"), ["b"]);
    t.run_drain(1);
    let b = t.must_record("b");
    assert_eq!(b["state"], "aborted");
    assert_eq!(b["reason"], "not needed after all");
    assert_eq!(t.must_record("a")["state"], "completed");
}
