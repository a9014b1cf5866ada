//! Issue 9, the engine's part, through the built binary: `retry` (SPEC 9:
//! history, attempts counted on, refusals and exit codes, crash-safety),
//! `priority` (SPEC 13: request files applied to queued tasks, refused for
//! running ones, kept across restarts and applied at start-up), what
//! `spoolflow run` logs (item 15), its progress line (item 11), and the
//! records' `first_started_at`, `attempts_log` and `created_at` (item 16).

use std::fs;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::common::*;

fn run(c: &mut Command) -> Output {
    c.stdin(Stdio::null()).output().expect("run spoolflow")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `spoolflow <args>`; returns (exit code, stdout, stderr).
fn cli(t: &TestRoot, args: &[&str]) -> (i32, String, String) {
    let o = run(t.cmd().args(args));
    (
        o.status.code().unwrap_or(-1),
        text(&o.stdout),
        text(&o.stderr),
    )
}

/// `spoolflow run --drain --workers 1` to its end; returns its stderr.
fn drain(t: &TestRoot) -> String {
    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "1"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    err
}

fn ts(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// An SGR (colour) escape sequence in `s`.
fn has_colour(s: &str) -> bool {
    s.split("\x1b[").skip(1).any(|rest| {
        let code: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ';')
            .collect();
        rest[code.len()..].starts_with('m')
    })
}

/// A tasker that appends its task id to `order`; task `g` (the gate)
/// then waits for the file `open<attempt>`. It replies `{}`.
fn gate_tasker(t: &TestRoot) {
    t.tasker(
        "org",
        "t",
        &format!(
            "#!/bin/sh\necho \"$SPOOLFLOW_ID\" >> \"$SPOOLFLOW_ROOT/order\"\n\
             if [ \"$SPOOLFLOW_ID\" = g ]; then {}; fi\necho '{{}}'\n",
            wait_file("open$SPOOLFLOW_ATTEMPT")
        ),
    );
}

fn order(t: &TestRoot) -> Vec<String> {
    fs::read_to_string(t.join("order"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn task(t: &TestRoot, id: &str) {
    t.drop_task(&format!("{id}.json"), r#"{"domain":"org","tasker":"t"}"#);
}

fn wait_point(t: &TestRoot, id: &str, point: &str) {
    wait_for(&format!("{point} of {id}"), DEADLINE, || {
        !t.points_named(id, point).is_empty()
    });
}

// ------------------------------------------------------------------ retry

/// A tasker that fails (`user`) until `fixed` exists, then stamps.
fn fixable_tasker(t: &TestRoot) {
    t.tasker(
        "org",
        "t",
        "#!/bin/sh\n[ -e \"$SPOOLFLOW_ROOT/fixed\" ] || { echo 'broken tasker' >&2; echo 'more' >&2; exit 1; }\n\
         echo \"{\\\"fixed_at_attempt\\\":$SPOOLFLOW_ATTEMPT}\"\n",
    );
}

#[test]
fn retry_completes_a_task_that_failed_before_its_tasker_was_fixed() {
    let t = TestRoot::new();
    fixable_tasker(&t);
    t.drop_task(
        "a.json",
        r#"{"domain":"org","tasker":"t","priority":2,"headers":{"by":"me"},"payload":{"n":1},
            "timeout":"30s","retries":0}"#,
    );
    let engine = t.spawn_engine(&["--workers", "1"]);
    wait_for("a's record", DEADLINE, || t.record("a").is_some());
    let first = t.must_record("a");
    assert_eq!(first["state"], "failed", "{first:#}");
    assert_eq!(first["attempts"], 1);

    fs::write(t.join("fixed"), "").unwrap();
    let (code, out, err) = cli(&t, &["retry", "a"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("a queued again as attempt 2"), "{out}");
    assert!(out.contains("var/spool/history/a/1.json"), "{out}");
    wait_for("a completed", DEADLINE, || {
        t.join("var/spool/done/a.json").exists()
    });
    drop(engine);

    let rec = t.must_record("a");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["attempts"], 2, "attempts go on counting");
    assert_eq!(rec["payload"]["fixed_at_attempt"], 2);
    assert_eq!(rec["priority"], 2);
    assert_eq!(rec["headers"]["by"], "me");
    // The task file's own options came along.
    assert_eq!(
        rec["options"],
        serde_json::json!({"timeout":"30s","retries":0})
    );
    assert!(!t.join("var/spool/failed/a.json").exists());
    // The earlier record, whole and readable, in the history.
    assert_eq!(t.list("var/spool/history/a"), ["1.json"]);
    let old: spoolflow::model::task::Record =
        serde_json::from_slice(&fs::read(t.join("var/spool/history/a/1.json")).unwrap())
            .expect("a history record reads as a record");
    assert_eq!(serde_json::to_value(&old).unwrap(), first);
    // One points log for both lives, attempts numbered on.
    let started: Vec<Value> = t
        .points_named("a", "started")
        .iter()
        .map(|p| p["attempt"].clone())
        .collect();
    assert_eq!(started, [Value::from(1), Value::from(2)]);
    assert_eq!(t.points_named("a", "created").len(), 2);
    // This life's attempts only; the first life's are in its record.
    let log = rec["attempts_log"].as_array().unwrap();
    assert_eq!(log.len(), 1, "{rec:#}");
    assert_eq!(log[0]["attempt"], 2);
    assert_eq!(log[0]["outcome"], "completed");

    // `show` lists the earlier attempts beside the record.
    let (code, out, err) = cli(&t, &["show", "a", "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["record"]["attempts"], 2);
    assert_eq!(shown["history"].as_array().unwrap().len(), 1);
    assert_eq!(shown["history"][0], first);
    let (_, out, _) = cli(&t, &["show", "a"]);
    assert!(out.contains("earlier attempts (history/):"), "{out}");
    assert!(out.contains("1 attempt(s), failed at "), "{out}");
    // `logs` follows the second life to its end, not the first's.
    let (code, out, _) = cli(&t, &["logs", "a", "--follow", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), t.points("a").len());
}

#[test]
fn retry_refuses_completed_unknown_and_unfinished_tasks() {
    let t = TestRoot::new();
    t.tasker("org", "t", "#!/bin/sh\necho '{}'\n");
    task(&t, "done1");
    drain(&t);
    assert_eq!(t.must_record("done1")["state"], "completed");

    let (code, _, err) = cli(&t, &["retry", "nope"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("unknown task id nope"), "{err}");

    let (code, _, err) = cli(&t, &["retry", "done1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("task done1 completed"), "{err}");
    assert!(t.join("var/spool/done/done1.json").exists());

    // Queued, no engine: not ended.
    task(&t, "q1");
    let (code, _, err) = cli(&t, &["retry", "q1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has not ended"), "{err}");

    // Bad usage.
    let (code, _, _) = cli(&t, &["retry"]);
    assert_eq!(code, 2);
}

#[test]
fn retry_without_an_engine_waits_and_a_second_retry_is_refused() {
    let t = TestRoot::new();
    fixable_tasker(&t);
    t.drop_task("a.json", r#"{"domain":"org","tasker":"t","retries":1}"#);
    drain(&t);
    assert_eq!(t.must_record("a")["state"], "failed");
    assert_eq!(t.must_record("a")["attempts"], 1);

    let (code, out, err) = cli(&t, &["retry", "a"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(t.join("var/spool/in/a.json").exists());
    assert!(t.record("a").is_none());
    // Already queued again: a second retry is refused, nothing moves.
    let (code, _, err) = cli(&t, &["retry", "a"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(t.list("var/spool/history/a"), ["1.json"]);

    // Still broken: the second life fails too, and a third goes on counting.
    drain(&t);
    let rec = t.must_record("a");
    assert_eq!(
        (rec["state"].as_str(), rec["attempts"].as_u64()),
        (Some("failed"), Some(2))
    );
    assert_eq!(cli(&t, &["retry", "a"]).0, 0);
    fs::write(t.join("fixed"), "").unwrap();
    drain(&t);
    let rec = t.must_record("a");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["attempts"], 3);
    assert_eq!(t.list("var/spool/history/a"), ["1.json", "2.json"]);
}

#[test]
fn a_retry_interrupted_after_the_record_moved_is_finished_by_the_next() {
    let t = TestRoot::new();
    fixable_tasker(&t);
    task(&t, "a");
    drain(&t);
    // The state a crash between the steps leaves: the record in the
    // history, the task queued nowhere.
    fs::create_dir_all(t.join("var/spool/history/a")).unwrap();
    fs::rename(
        t.join("var/spool/failed/a.json"),
        t.join("var/spool/history/a/1.json"),
    )
    .unwrap();
    let (code, out, err) = cli(&t, &["retry", "a"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("interrupted retry"), "{out}");
    assert_eq!(t.list("var/spool/history/a"), ["1.json"]);
    fs::write(t.join("fixed"), "").unwrap();
    drain(&t);
    let rec = t.must_record("a");
    assert_eq!(rec["state"], "completed");
    assert_eq!(rec["attempts"], 2);
    // Its record removed (as gc does): not an interrupted retry, so the
    // completed task is not run again from its history.
    fs::remove_file(t.join("var/spool/done/a.json")).unwrap();
    let (code, _, err) = cli(&t, &["retry", "a"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no record any more"), "{err}");
    assert!(t.list("var/spool/in").is_empty());
}

#[test]
fn an_aborted_task_can_be_retried() {
    let t = TestRoot::new();
    t.tasker("org", "t", "#!/bin/sh\necho '{}'\n");
    task(&t, "a");
    // Cancelled while queued (no engine): aborted at start-up.
    assert_eq!(cli(&t, &["cancel", "a"]).0, 0);
    drain(&t);
    let rec = t.must_record("a");
    assert_eq!(rec["state"], "aborted");
    assert_eq!(rec["attempts"], 0);
    assert_eq!(cli(&t, &["retry", "a"]).0, 0);
    assert_eq!(t.list("var/spool/history/a"), ["0.json"]);
    drain(&t);
    assert_eq!(t.must_record("a")["state"], "completed");
    assert_eq!(t.must_record("a")["attempts"], 1);
}

// ------------------------------------------------------------------ priority

#[test]
fn priority_reorders_queued_tasks_and_is_kept_in_run() {
    let t = TestRoot::new();
    gate_tasker(&t);
    let engine = t.spawn_engine(&["--workers", "1"]);
    task(&t, "g");
    wait_point(&t, "g", "started");
    for id in ["a", "b", "c"] {
        task(&t, id);
        wait_point(&t, id, "created");
    }
    let (code, out, err) = cli(&t, &["priority", "c", "10"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("priority of c is now 10"), "{out}");
    let (code, _, err) = cli(&t, &["priority", "b", "-5"]);
    assert_eq!(code, 0, "{err}");
    wait_for("the requests applied", DEADLINE, || {
        t.list("var/spool/priority").is_empty()
    });
    let run_c: Value =
        serde_json::from_slice(&fs::read(t.join("var/spool/run/c.json")).unwrap()).unwrap();
    assert_eq!(run_c["priority"], 10, "durable in run/");
    fs::write(t.join("open1"), "").unwrap();
    wait_for("all done", DEADLINE, || {
        ["a", "b", "c"].iter().all(|id| t.record(id).is_some())
    });
    drop(engine);
    assert_eq!(order(&t), ["g", "c", "a", "b"]);
    assert_eq!(t.must_record("c")["priority"], 10);
    assert_eq!(t.must_record("b")["priority"], -5);
    assert_eq!(t.must_record("a")["priority"], 0);
}

/// Tasks held back by `max_concurrent` start by priority, then arrival,
/// when a unit frees; a priority request moves a held-back task too.
#[test]
fn tasks_waiting_on_a_limit_start_by_priority() {
    let t = TestRoot::new();
    t.tasker_dir(
        "org",
        "one",
        r#"{"cmd":["./run.sh"],"max_concurrent":1}"#,
        &[(
            "run.sh",
            &format!(
                "#!/bin/sh\necho \"$SPOOLFLOW_ID\" >> \"$SPOOLFLOW_ROOT/order\"\n\
                 if [ \"$SPOOLFLOW_ID\" = g ]; then {}; fi\necho '{{}}'\n",
                wait_file("open")
            ),
        )],
    );
    let submit = |id: &str, priority: i32| {
        t.drop_task(
            &format!("{id}.json"),
            &format!(r#"{{"domain":"org","tasker":"one","priority":{priority}}}"#),
        );
    };
    let engine = t.spawn_engine(&["--workers", "4"]);
    submit("g", 0);
    wait_point(&t, "g", "started");
    // They wait on max_concurrent in this order, the urgent one last.
    for (id, priority) in [("a", 0), ("b", 0), ("c", 5)] {
        submit(id, priority);
        wait_point(&t, id, "suspended");
    }
    let (code, _, err) = cli(&t, &["priority", "b", "3"]);
    assert_eq!(code, 0, "{err}");
    wait_for("the request applied", DEADLINE, || {
        t.list("var/spool/priority").is_empty()
    });
    // d comes after b's request, and offers of a domain take turns: once
    // d waits on the limit, b waits there again under its new priority.
    submit("d", 0);
    wait_point(&t, "d", "suspended");
    fs::write(t.join("open"), "").unwrap();
    wait_for("all done", DEADLINE, || {
        ["g", "a", "b", "c", "d"]
            .iter()
            .all(|id| t.record(id).is_some())
    });
    drop(engine);
    assert_eq!(order(&t), ["g", "c", "b", "a", "d"]);
    assert_eq!(t.points_named("b", "suspended").len(), 1, "said once");
}

/// A cancel or priority request for a task whose file is still being
/// written in `in/` waits for it (its id is not known until it is read),
/// rather than being rejected as unknown while the task then runs.
#[test]
fn requests_for_a_task_still_being_written_wait_for_it() {
    use std::io::Write;
    let t = TestRoot::new();
    gate_tasker(&t);
    let engine = t.spawn_engine(&["--workers", "2"]);
    let open = |id: &str| {
        let mut f = fs::File::create(t.join(&format!("var/spool/in/{id}.json"))).unwrap();
        f.write_all(br#"{"domain":"org","#).unwrap();
        f
    };
    let (mut w1, mut w2) = (open("w1"), open("w2"));
    let (code, _, err) = cli(&t, &["cancel", "w1", "--reason", "not wanted"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&t, &["priority", "w2", "7"]);
    assert_eq!(code, 0, "{err}");
    // A task dropped after the requests: once it is done, the engine has
    // looked at them (events come in order).
    task(&t, "m");
    wait_for("m done", DEADLINE, || t.record("m").is_some());
    assert!(t.join("var/spool/cancel/w1").exists(), "the cancel waits");
    assert!(
        t.join("var/spool/priority/w2").exists(),
        "the priority waits"
    );
    assert!(t.list("var/spool/rejected").is_empty());
    for f in [&mut w1, &mut w2] {
        f.write_all(br#""tasker":"t"}"#).unwrap();
    }
    drop((w1, w2));
    wait_for("w1 and w2 ended", DEADLINE, || {
        t.record("w1").is_some() && t.record("w2").is_some()
    });
    drop(engine);
    let w1 = t.must_record("w1");
    assert_eq!(w1["state"], "aborted", "{w1:#}");
    assert!(!order(&t).contains(&"w1".to_string()), "w1 never ran");
    assert_eq!(t.must_record("w2")["priority"], 7);
    assert!(t.list("var/spool/rejected").is_empty());
}

/// A writer's temporary or an editor's dotfile held open in `in/` never
/// becomes a task: it does not hold back a request for an unknown id.
#[test]
fn temporaries_held_open_in_in_do_not_hold_back_requests() {
    use std::io::Write;
    let t = TestRoot::new();
    gate_tasker(&t);
    let engine = t.spawn_engine(&["--workers", "1"]);
    let mut held = Vec::new();
    for name in ["x.json.tmp", ".x.json.swp"] {
        let mut f = fs::File::create(t.join(&format!("var/spool/in/{name}"))).unwrap();
        f.write_all(b"{").unwrap();
        held.push(f);
    }
    fs::write(t.join("var/spool/cancel/nosuch"), "").unwrap();
    wait_for("the request's rejection", DEADLINE, || {
        t.rejected_reason("nosuch").is_some()
    });
    assert!(t
        .rejected_reason("nosuch")
        .unwrap()
        .contains("unknown task id nosuch"));
    drop(held);
    drop(engine);
}

#[test]
fn priority_of_a_running_ended_or_unknown_task_is_refused() {
    let t = TestRoot::new();
    gate_tasker(&t);
    task(&t, "d");
    drain(&t);
    let (code, _, err) = cli(&t, &["priority", "d", "3"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ended"), "{err}");
    let (code, _, err) = cli(&t, &["priority", "nope", "3"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("unknown task id nope"), "{err}");

    let engine = t.spawn_engine(&["--workers", "1"]);
    t.drop_task("g.json", r#"{"domain":"org","tasker":"t","priority":2}"#);
    wait_point(&t, "g", "started");
    let (code, _, err) = cli(&t, &["priority", "g", "7"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("priority request for g refused: task g is running"),
        "{err}"
    );
    let reason = t.reason("g");
    assert!(reason.contains("task g is running"), "{reason}");
    // The priority it has already: refused all the same (its run/ file
    // holding 2 does not mean the request was applied).
    let (code, out, err) = cli(&t, &["priority", "g", "2"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("task g is running"), "{err}");
    // A request dropped by hand for a task nobody knows.
    fs::write(t.join("var/spool/priority/ghost"), "4").unwrap();
    wait_for("ghost rejected", DEADLINE, || {
        t.rejected_reason("ghost").is_some()
    });
    assert_eq!(t.reason("ghost"), "priority request: unknown task id ghost");
    fs::write(t.join("open1"), "").unwrap();
    wait_for("g done", DEADLINE, || t.record("g").is_some());
    drop(engine);
    assert_eq!(t.must_record("g")["priority"], 2);
}

#[test]
fn a_priority_request_waits_for_the_engine_and_applies_at_start_up() {
    let t = TestRoot::new();
    gate_tasker(&t);
    for id in ["a", "b", "c"] {
        task(&t, id);
    }
    let (code, out, err) = cli(&t, &["priority", "c", "4"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applies when one starts"), "{out}");
    assert_eq!(t.list("var/spool/priority"), ["c"]);
    drain(&t);
    assert_eq!(order(&t), ["c", "a", "b"]);
    assert_eq!(t.must_record("c")["priority"], 4);
    assert!(t.list("var/spool/priority").is_empty());
}

#[test]
fn a_changed_priority_survives_a_restart() {
    let t = TestRoot::new();
    gate_tasker(&t);
    let engine = t.spawn_engine(&["--workers", "1", "--grace", "0s"]);
    task(&t, "g");
    wait_point(&t, "g", "started");
    for id in ["a", "b"] {
        task(&t, id);
        wait_point(&t, id, "created");
    }
    assert_eq!(cli(&t, &["priority", "b", "9"]).0, 0);
    wait_for("the request applied", DEADLINE, || {
        t.list("var/spool/priority").is_empty()
    });
    engine.signal(Signal::SIGTERM);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert!(t.record("b").is_none());
    // The gate's next attempt may pass at once.
    fs::write(t.join("open2"), "").unwrap();
    drain(&t);
    // b keeps its 9; g and a (recovered in submission order) follow at 0.
    assert_eq!(order(&t), ["g", "b", "g", "a"]);
    assert_eq!(t.must_record("b")["priority"], 9);
}

// ------------------------------------------------------------------ logging

#[test]
fn the_engine_logs_one_line_per_outcome_without_colour() {
    let t = TestRoot::new();
    fixable_tasker(&t);
    task(&t, "bad");
    let err = drain(&t);
    fs::write(t.join("fixed"), "").unwrap();
    task(&t, "good");
    let err2 = drain(&t);
    let rec = t.must_record("bad");
    let kind = rec["error"]["kind"].as_str().unwrap();
    let first_line = rec["reason"].as_str().unwrap().lines().next().unwrap();
    let line = err
        .lines()
        .find(|l| l.contains("task bad failed"))
        .unwrap_or_else(|| panic!("no outcome line in {err}"));
    assert!(line.contains("(taskee t, "), "{line}");
    assert!(line.contains("1 attempt)"), "{line}");
    assert!(
        line.ends_with(&format!(": {kind}: {first_line}")),
        "{line} / {first_line}"
    );
    assert!(
        err2.lines()
            .any(|l| l.contains("task good completed (taskee t, ") && l.contains("1 attempt)")),
        "{err2}"
    );
    // stderr is a pipe here: no colour, no progress line.
    assert!(!has_colour(&err) && !has_colour(&err2), "{err:?}");
    assert!(!err.contains('\r') && !err2.contains("queued, "), "{err:?}");
    // engine.log holds the same lines.
    let log = fs::read_to_string(t.join("var/log/engine.log")).unwrap();
    assert!(log.contains("task bad failed") && log.contains("task good completed"));
    assert!(!has_colour(&log));
}

#[test]
fn engine_started_is_logged_only_once_the_lock_is_taken() {
    let t = TestRoot::new();
    let first = t.spawn_engine(&[]);
    wait_for("the first engine's lock", DEADLINE, || {
        fs::read_to_string(t.join("var/run/engine.lock"))
            .is_ok_and(|s| s.lines().next() == Some(first.pid().to_string().as_str()))
    });
    let (code, err) = t.spawn_engine(&[]).wait(DEADLINE);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("another engine is running"), "{err}");
    assert!(!err.contains("engine started"), "{err}");
    first.signal(Signal::SIGTERM);
    let (code, err) = first.wait(DEADLINE);
    assert_eq!(code, Some(0));
    assert!(err.contains("engine started on "), "{err}");
}

#[test]
fn recovered_and_orphan_killed_tasks_are_logged_by_id() {
    let t = TestRoot::new();
    gate_tasker(&t);
    let engine = t.spawn_engine(&["--workers", "1"]);
    task(&t, "g");
    wait_point(&t, "g", "started");
    engine.signal(Signal::SIGKILL);
    drop(engine);
    // The orphan (attempt 1) waits for open1, which never comes; the
    // recovered attempt 2 may pass.
    fs::write(t.join("open2"), "").unwrap();
    let err = drain(&t);
    assert!(err.contains("killed the orphan tasker of task g"), "{err}");
    assert!(err.contains("recovered task g"), "{err}");
    assert_eq!(t.must_record("g")["state"], "completed");
}

/// Runs `spoolflow run --drain` on a pseudo-terminal (`script`), with
/// `NO_COLOR` set or not; returns what the terminal showed.
fn drain_on_a_terminal(t: &TestRoot, no_color: bool) -> String {
    let cmdline = format!(
        "{} --root {} run --drain --workers 1",
        env!("CARGO_BIN_EXE_spoolflow"),
        t.path().display()
    );
    let mut c = Command::new("script");
    c.args(["-qefc", &cmdline, "/dev/null"]);
    c.env_remove("SPOOLFLOW_ROOT").env_remove("NO_COLOR");
    if no_color {
        c.env("NO_COLOR", "1");
    }
    let o = run(&mut c);
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout)
}

#[test]
fn on_a_terminal_colour_follows_no_color_and_drain_shows_progress() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("no `script` to make a terminal; skipped");
        return;
    }
    let t = TestRoot::new();
    t.tasker("org", "t", "#!/bin/sh\necho '{}'\n");
    task(&t, "a");
    let shown = drain_on_a_terminal(&t, false);
    assert!(has_colour(&shown), "colour on a terminal: {shown:?}");
    assert!(
        shown.contains("1 done, 0 failed, 0 running, 0 queued"),
        "{shown:?}"
    );
    assert!(shown.contains("\r\x1b[2K"), "drawn in place: {shown:?}");
    task(&t, "b");
    let shown = drain_on_a_terminal(&t, true);
    assert!(!has_colour(&shown), "NO_COLOR: {shown:?}");
    assert!(shown.contains("task b completed"), "{shown:?}");
}

// ------------------------------------------------------------------ records

#[test]
fn records_keep_every_attempt_across_retries_with_backoff() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "t",
        "#!/bin/sh\n[ \"$SPOOLFLOW_ATTEMPT\" -lt 3 ] && { echo busy >&2; exit 75; }\necho '{}'\n",
    );
    task(&t, "a");
    drain(&t);
    let rec = t.must_record("a");
    assert_eq!(rec["attempts"], 3, "{rec:#}");
    let log = rec["attempts_log"].as_array().unwrap();
    let outcomes: Vec<&str> = log.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["retried", "retried", "completed"]);
    assert_eq!(log[0]["kind"], "work");
    assert!(log[2].get("kind").is_none());
    for (i, a) in log.iter().enumerate() {
        assert_eq!(a["attempt"], i + 1);
        assert!(ts(&a["ended_at"]) >= ts(&a["started_at"]));
    }
    assert_eq!(rec["first_started_at"], log[0]["started_at"]);
    assert_eq!(rec["started_at"], log[2]["started_at"]);
    // 1 s then 2 s of backoff between the first start and the last.
    let honest = ts(&rec["started_at"]) - ts(&rec["first_started_at"]);
    assert!(honest >= chrono::Duration::milliseconds(2900), "{honest}");
    assert_eq!(log[2]["ended_at"], rec["ended_at"]);
    // The starts match the points.
    let started: Vec<Value> = t
        .points_named("a", "started")
        .iter()
        .map(|p| p["ts"].clone())
        .collect();
    assert_eq!(started.len(), 3);
}

#[test]
fn created_at_is_when_the_task_file_was_written() {
    let t = TestRoot::new();
    t.tasker("org", "t", "#!/bin/sh\necho '{}'\n");
    let (code, out, err) = cli(
        &t,
        &["submit", "--domain", "org", "--tasker", "t", "--id", "s1"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let path = t.join("var/spool/in/s1.json");
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    drain(&t);
    let rec = t.must_record("s1");
    let created = ts(&rec["created_at"]);
    let want = DateTime::<Utc>::from(an_hour_ago);
    assert!(
        (created - want).num_milliseconds().abs() < 5,
        "{created} vs {want}"
    );
    // The `created` point is the claim, an hour later, and says when the
    // file was written.
    let point = &t.points_named("s1", "created")[0];
    assert!(ts(&point["ts"]) - created > chrono::Duration::minutes(59));
    assert_eq!(point["submitted_at"], rec["created_at"]);
}

#[test]
fn earlier_records_are_listed_oldest_first() {
    let t = TestRoot::new();
    fixable_tasker(&t);
    task(&t, "a");
    drain(&t);
    assert_eq!(cli(&t, &["retry", "a"]).0, 0);
    drain(&t);
    assert_eq!(cli(&t, &["retry", "a"]).0, 0);
    let id = "a".parse().unwrap();
    let earlier = spoolflow::store::history::earlier_records(&t.root, &id);
    let attempts: Vec<u32> = earlier.iter().map(|(_, r)| r.attempts).collect();
    assert_eq!(attempts, [1, 2]);
    assert!(earlier[0].0.ends_with("history/a/1.json"));
}
