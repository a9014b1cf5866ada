//! A tasker against the engine's hold on it (SPEC 6, 8, 10): one that
//! moves itself out of its process group is still ended by its timeout;
//! a stop that reaches a tasker only after it exited keeps its completed
//! reply (and the request is rejected, saying so), but still ends a task
//! whose reply would run it again; a
//! tasker file open for writing at the spawn is a `work` error, retried;
//! what a tasker's group leaves dying at its end is reaped, never left a
//! zombie of the engine.

use std::fs;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::common::*;

/// The pids a tasker wrote into `$SPOOLFLOW_ROOT/<file>`, one per line.
fn pids(t: &TestRoot, file: &str) -> Vec<i32> {
    fs::read_to_string(t.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The tasker's leader moves itself into a group of its own child's
/// making (`setpgid`), so that a signal to its own group hits nobody: the
/// timeout still ends it (the leader is signalled by its pid too) and
/// the child, which holds stdout, is ended with the task.
#[test]
fn a_tasker_that_leaves_its_group_is_still_ended_by_its_timeout() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "leaver",
        "#!/usr/bin/env python3\n\
         import os, sys, time\n\
         sys.stdin.read()\n\
         root = os.environ['SPOOLFLOW_ROOT']\n\
         r, w = os.pipe()\n\
         pid = os.fork()\n\
         if pid == 0:\n\
         \x20   os.setpgid(0, 0)\n\
         \x20   os.write(w, b'x')\n\
         \x20   time.sleep(120)\n\
         \x20   sys.exit(0)\n\
         os.read(r, 1)\n\
         os.setpgid(0, pid)\n\
         with open(os.path.join(root, 'pids'), 'w') as f:\n\
         \x20   f.write('%d\\n%d\\n' % (os.getpid(), pid))\n\
         time.sleep(120)\n",
    );
    t.drop_task(
        "a.json",
        r#"{"id":"a","domain":"org","tasker":"leaver","timeout":"2s"}"#,
    );
    let engine = t.spawn_engine(&["--workers", "1", "--drain", "--kill-grace", "1s"]);
    wait_for("the tasker's pids", DEADLINE, || {
        pids(&t, "pids").len() == 2
    });
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    let rec = t.must_record("a");
    assert_eq!(rec["state"], "failed", "{rec}");
    assert_eq!(rec["error"]["kind"], "timeout", "{rec}");
    for pid in pids(&t, "pids") {
        assert!(process_gone(pid), "process {pid} outlived its task");
    }
}

/// Runs task `id` with a tasker that counts its runs in `runs`, leaves a
/// background child holding stdout (so its run's end waits 2 s after its
/// exit), replies `reply` and exits; once its driver has reaped it (the
/// engine has seen its exit), cancels it. Gives the engine and the record.
fn cancel_after_exit(t: &TestRoot, id: &str, reply: &str) -> (EngineProcess, serde_json::Value) {
    t.tasker(
        "org",
        "late",
        &format!(
            "#!/bin/sh\ncat >/dev/null\n\
             echo run >> \"$SPOOLFLOW_ROOT/runs\"\n\
             sleep 30 &\n\
             echo '{reply}'\n\
             echo $$ > \"$SPOOLFLOW_ROOT/leader\"\n"
        ),
    );
    let engine = t.spawn_engine(&["--workers", "1"]);
    t.drop_task(
        &format!("{id}.json"),
        &format!(r#"{{"id":"{id}","domain":"org","tasker":"late"}}"#),
    );
    wait_for("the tasker's pid", DEADLINE, || {
        pids(t, "leader").len() == 1
    });
    let leader = pids(t, "leader")[0];
    wait_for("the leader reaped", DEADLINE, || {
        !std::path::Path::new(&format!("/proc/{leader}")).exists()
    });
    fs::write(t.join(&format!("var/spool/cancel/{id}")), "too late").unwrap();
    wait_for("the record", DEADLINE, || t.record(id).is_some());
    let rec = t.must_record(id);
    (engine, rec)
}

/// A cancel that comes once the tasker has exited 0 changes nothing: the
/// task completes with its reply, it ran once, and the request goes to
/// `rejected/` saying why.
#[test]
fn a_cancel_after_the_tasker_exited_keeps_its_reply() {
    let t = TestRoot::new();
    let reply = r#"{"point":"completed","payload":{"charged":true}}"#;
    let (engine, rec) = cancel_after_exit(&t, "c", reply);
    assert_eq!(rec["state"], "completed", "{rec}");
    assert_eq!(rec["payload"]["charged"], true, "{rec}");
    assert_eq!(fs::read_to_string(t.join("runs")).unwrap(), "run\n");
    wait_for("the request's rejection", DEADLINE, || {
        t.rejected_reason("c").is_some()
    });
    let why = t.rejected_reason("c").unwrap();
    assert!(why.contains("completed before the cancel"), "{why}");
    engine.signal(Signal::SIGTERM);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
}

/// The same late cancel, but the tasker's reply would run it again
/// (`uncompleted`): the cancel ends the task, which runs no more.
#[test]
fn a_cancel_after_the_tasker_exited_still_ends_a_task_that_would_run_again() {
    let t = TestRoot::new();
    let reply = r#"{"point":"uncompleted","payload":{},"after":"1s"}"#;
    let (engine, rec) = cancel_after_exit(&t, "u", reply);
    assert_eq!(rec["state"], "aborted", "{rec}");
    assert_eq!(fs::read_to_string(t.join("runs")).unwrap(), "run\n");
    engine.signal(Signal::SIGTERM);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
}

/// A tasker file open for writing (an update in place) makes the spawn
/// fail with "Text file busy": a `work` error, retried, not a `config`
/// failure; once the file is closed the task runs.
#[test]
fn a_tasker_file_being_written_is_retried_not_failed() {
    let t = TestRoot::new();
    let path = t.tasker("org", "busy", "#!/bin/sh\ncat\n");
    let writer = fs::OpenOptions::new().append(true).open(&path).unwrap();
    let engine = t.spawn_engine(&["--workers", "1"]);
    t.drop_task("b.json", r#"{"id":"b","domain":"org","tasker":"busy"}"#);
    wait_for("b retried", DEADLINE, || {
        t.point_names("b").iter().any(|n| n == "retried")
    });
    assert!(t.record("b").is_none());
    drop(writer);
    wait_for("b's record", DEADLINE, || t.record("b").is_some());
    let rec = t.must_record("b");
    assert_eq!(rec["state"], "completed", "{rec}");
    engine.signal(Signal::SIGTERM);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
}

/// The engine's children and their states (`/proc/<pid>/task/<pid>/children`).
fn children_of(pid: i32) -> Vec<(i32, char)> {
    let list = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter_map(|child| {
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let state = stat[stat.rfind(')')? + 1..].trim_start().chars().next()?;
            Some((child, state))
        })
        .collect()
}

/// Taskers that leave background children in their group: the group is
/// killed at the task's end, and members caught dying (no environment to
/// read, not zombies yet) are the task's all the same: reaped, none left
/// a zombie of the engine.
#[test]
fn what_a_taskers_group_leaves_dying_is_reaped() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "bg",
        "#!/bin/sh\ncat >/dev/null\n\
         sleep 100 >/dev/null 2>&1 </dev/null &\n\
         sleep 100 >/dev/null 2>&1 </dev/null &\n\
         echo '{}'\n",
    );
    let engine = t.spawn_engine(&["--workers", "2"]);
    let n = 150;
    for i in 0..n {
        t.drop_task(
            &format!("z{i}.json"),
            &format!(r#"{{"id":"z{i}","domain":"org","tasker":"bg"}}"#),
        );
    }
    wait_for("every record", Duration::from_secs(120), || {
        t.list("var/spool/done").len() == n
    });
    let left = children_of(engine.pid());
    engine.signal(Signal::SIGTERM);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        left.is_empty(),
        "the engine's children after {n} tasks: {left:?}"
    );
}
