//! Issue 15, sections B and D (and two lines of E): one engine per root
//! even when its lock file or `var/run/` is removed or replaced; the dead
//! engine's taskers still killed after a `kill -9` whose lock file went
//! too; SIGHUP as a graceful stop; a full disk never lets a tasker run
//! unrecorded nor leaves a rejected file without its reason; a removed
//! `var/spool/run/` named as such. Through the built binary, with real
//! taskers, real signals and the `SPOOLFLOW_FAULT` seam of `store::spool`.

use std::fs;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::common::*;

/// Above every engine timer (the 30 s safety rescan included): a pass
/// never comes from one.
const EXIT_DEADLINE: Duration = Duration::from_secs(60);

/// Counts its runs in `ran-<id>` (one line each), writes its pid to
/// `pid-<id>`, then waits for `gate` (at most ~20 s) and replies.
const HELD: &str = r#"#!/bin/sh
cat >/dev/null
echo run >> "$SPOOLFLOW_ROOT/ran-$SPOOLFLOW_ID"
echo $$ > "$SPOOLFLOW_ROOT/pid-$SPOOLFLOW_ID"
i=0; while [ ! -e "$SPOOLFLOW_ROOT/gate" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
echo '{"ok":true}'
"#;

fn held_root(ids: &[&str]) -> TestRoot {
    let t = TestRoot::new();
    t.tasker("org", "held", HELD);
    for id in ids {
        t.drop_task(
            &format!("{id}.json"),
            &format!(r#"{{"domain":"org","tasker":"held","id":"{id}","payload":{{}}}}"#),
        );
    }
    t
}

/// How many times the tasker ran for `id`.
fn runs(t: &TestRoot, id: &str) -> usize {
    fs::read_to_string(t.join(&format!("ran-{id}")))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// `spoolflow run` with stderr kept and `NO_COLOR`, with `SPOOLFLOW_FAULT`
/// set to `fault` (or unset).
fn engine(t: &TestRoot, fault: Option<&str>, args: &[&str]) -> EngineProcess {
    t.spawn_engine_with_fault(fault, args)
}

/// The pid the tasker of `id` wrote (once whole).
fn tasker_pid(t: &TestRoot, id: &str) -> Option<i32> {
    fs::read_to_string(t.join(&format!("pid-{id}")))
        .ok()
        .filter(|s| s.ends_with('\n'))
        .and_then(|s| s.trim().parse().ok())
}

/// Waits until the tasker of each id runs (its pid written).
fn wait_running(t: &TestRoot, e: &mut EngineProcess, ids: &[&str]) {
    wait_for("the taskers to run", DEADLINE, || {
        e.exited() || ids.iter().all(|id| tasker_pid(t, id).is_some())
    });
    assert!(!e.exited(), "the engine runs");
}

/// The pid record names `pid` on its first line.
fn record_names(t: &TestRoot, pid: i32) -> bool {
    fs::read_to_string(t.join("var/run/engine.lock"))
        .is_ok_and(|s| s.lines().next() == Some(pid.to_string().as_str()))
}

/// A second engine on the root exits 1 naming the first one's pid.
fn second_engine_refused(t: &TestRoot, first: i32) {
    let (code, err) = engine(t, None, &[]).wait(EXIT_DEADLINE);
    assert_eq!(code, Some(1), "the second engine is refused:\n{err}");
    assert!(
        err.contains("another engine is running") && err.contains(&format!("pid {first}")),
        "the refusal names the running engine's pid {first}:\n{err}"
    );
    assert!(
        !err.contains("killed"),
        "the second engine killed nothing:\n{err}"
    );
}

/// Opens the gate, waits for each id's record, stops the engine with
/// SIGTERM: every task completed, its tasker ran once.
fn finish_once(t: &TestRoot, mut e: EngineProcess, ids: &[&str]) {
    fs::write(t.join("gate"), b"").unwrap();
    wait_for("the records", DEADLINE, || {
        e.exited() || ids.iter().all(|id| t.record(id).is_some())
    });
    assert!(!e.exited(), "the first engine went on");
    e.signal(Signal::SIGTERM);
    let (code, err) = e.wait(EXIT_DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    for id in ids {
        let rec = t.must_record(id);
        assert_eq!(rec["state"], "completed", "{rec}");
        assert_eq!(rec["attempts"], 1, "{rec}");
        assert_eq!(runs(t, id), 1, "the tasker of {id} ran once");
    }
}

#[test]
fn a_removed_lock_file_does_not_let_a_second_engine_start() {
    let ids = ["a", "b"];
    let t = held_root(&ids);
    let mut e = engine(&t, None, &["--workers", "2"]);
    wait_running(&t, &mut e, &ids);
    fs::remove_file(t.join("var/run/engine.lock")).unwrap();
    second_engine_refused(&t, e.pid());
    // The running engine writes its pid record again.
    let pid = e.pid();
    wait_for("the pid record again", DEADLINE, || record_names(&t, pid));
    finish_once(&t, e, &ids);
}

#[test]
fn removing_var_run_under_a_running_engine_changes_nothing() {
    let ids = ["a", "b"];
    let t = held_root(&ids);
    let mut e = engine(&t, None, &["--workers", "2"]);
    wait_running(&t, &mut e, &ids);
    fs::remove_dir_all(t.join("var/run")).unwrap();
    second_engine_refused(&t, e.pid());
    let pid = e.pid();
    wait_for("var/run/ and the pid record again", DEADLINE, || {
        record_names(&t, pid)
            && t.join("var/run/points").is_dir()
            && t.join("var/run/replies.log").is_file()
    });
    // The taskers registry is written again, naming the running taskers.
    wait_for("the taskers registry again", DEADLINE, || {
        fs::read_to_string(t.join("var/run/taskers")).is_ok_and(|s| {
            s.split_whitespace()
                .filter(|w| w.parse::<i32>().is_ok())
                .count()
                == 2
        })
    });
    // A task dropped now runs too (its tasker gets a points file).
    t.drop_task(
        "c.json",
        r#"{"domain":"org","tasker":"held","id":"c","payload":{}}"#,
    );
    finish_once(&t, e, &["a", "b", "c"]);
}

#[test]
fn a_lock_file_replaced_by_another_file_does_not_let_a_second_engine_start() {
    let ids = ["a"];
    let t = held_root(&ids);
    let mut e = engine(&t, None, &["--workers", "2"]);
    wait_running(&t, &mut e, &ids);
    let lock = t.join("var/run/engine.lock");
    let pid = e.pid();
    // A regular file with garbage.
    fs::write(&lock, b"garbage\x00\xff\n").unwrap();
    second_engine_refused(&t, pid);
    wait_for("the pid record again", DEADLINE, || record_names(&t, pid));
    // A directory.
    fs::remove_file(&lock).unwrap();
    fs::create_dir(&lock).unwrap();
    second_engine_refused(&t, pid);
    wait_for("the pid record again", DEADLINE, || record_names(&t, pid));
    // `status` still sees the engine.
    let out = t.cmd().args(["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["engine"]["pid"], pid, "{status}");
    finish_once(&t, e, &ids);
}

#[test]
fn an_engine_starts_on_a_root_whose_var_run_was_removed() {
    let t = TestRoot::new();
    t.tasker("org", "echo", "#!/bin/sh\ncat >/dev/null\necho '{}'\n");
    fs::remove_dir_all(t.join("var/run")).unwrap();
    t.drop_task(
        "r1.json",
        r#"{"domain":"org","tasker":"echo","id":"r1","payload":{}}"#,
    );
    let (code, err) = engine(&t, None, &["--drain"]).wait(EXIT_DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(t.must_record("r1")["state"], "completed");
    assert!(t.join("var/run/points").is_dir());
}

#[test]
fn after_a_kill_9_and_a_removed_lock_file_the_dead_engines_taskers_are_killed() {
    let t = held_root(&["k"]);
    let mut e = engine(&t, None, &["--workers", "2"]);
    wait_running(&t, &mut e, &["k"]);
    let orphan = tasker_pid(&t, "k").unwrap();
    e.signal(Signal::SIGKILL);
    let (code, _) = e.wait(EXIT_DEADLINE);
    assert_eq!(code, None, "killed by a signal");
    assert!(!process_gone(orphan), "the tasker outlived its engine");
    fs::remove_file(t.join("var/run/engine.lock")).unwrap();
    fs::remove_file(t.join("pid-k")).unwrap();
    let mut e = engine(&t, None, &["--workers", "2"]);
    wait_for("the orphan to be killed", DEADLINE, || process_gone(orphan));
    // Recovered and run again, as a second attempt.
    wait_running(&t, &mut e, &["k"]);
    assert_eq!(t.points_named("k", "recovered").len(), 1);
    fs::write(t.join("gate"), b"").unwrap();
    wait_for("the record", DEADLINE, || t.record("k").is_some());
    e.signal(Signal::SIGTERM);
    let (code, err) = e.wait(EXIT_DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    let rec = t.must_record("k");
    assert_eq!(
        (&rec["state"], &rec["attempts"]),
        (&"completed".into(), &2.into())
    );
    assert_eq!(runs(&t, "k"), 2);
}

/// SIGHUP (the terminal closed) or SIGQUIT to an engine whose tasker runs, with its
/// stderr already closed (`closed_stderr`) or not: the graceful stop, its
/// log lines, exit 0, the tasker stopped and its task left in `run/`,
/// recovered by the next start.
fn stops_gracefully_on(sig: Signal, closed_stderr: bool) {
    let t = held_root(&["h"]);
    let mut e = engine(&t, None, &["--workers", "1", "--grace", "1s"]);
    wait_running(&t, &mut e, &["h"]);
    let tasker = tasker_pid(&t, "h").unwrap();
    if closed_stderr {
        // Whatever the engine writes to stderr now meets a closed pipe.
        drop(e.child.stderr.take());
    }
    e.signal(sig);
    let (code, err) = e.wait(EXIT_DEADLINE);
    assert_eq!(code, Some(0), "a graceful stop, not death by {sig}:\n{err}");
    let log = fs::read_to_string(t.join("var/log/engine.log")).unwrap();
    assert!(log.contains(&format!("received {sig}")), "{log}");
    assert!(log.contains("stopping: no new tasks"), "{log}");
    assert!(log.contains("engine stopped"), "{log}");
    wait_for("the tasker to be stopped", DEADLINE, || {
        process_gone(tasker)
    });
    assert!(t.join("var/spool/run/h.json").exists(), "left in run/");
    assert!(t.record("h").is_none());
    fs::write(t.join("gate"), b"").unwrap();
    let (code, err) = engine(&t, None, &["--drain"]).wait(EXIT_DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(t.must_record("h")["state"], "completed");
    assert_eq!(t.points_named("h", "recovered").len(), 1);
}

#[test]
fn sighup_is_a_graceful_stop() {
    stops_gracefully_on(Signal::SIGHUP, false);
}

#[test]
fn sigquit_is_a_graceful_stop() {
    stops_gracefully_on(Signal::SIGQUIT, false);
}

#[test]
fn sighup_with_the_terminal_gone_is_a_graceful_stop() {
    stops_gracefully_on(Signal::SIGHUP, true);
}

/// The lines of an engine's stderr about `name`, but for the fault
/// seam's own and the command's last line: what the log says of it.
fn log_lines_about<'a>(err: &'a str, name: &str) -> Vec<&'a str> {
    err.lines()
        .filter(|l| l.contains(name) && !l.contains("SPOOLFLOW_FAULT"))
        .filter(|l| !l.starts_with("spoolflow: "))
        .collect()
}

#[test]
fn no_tasker_starts_while_its_allocated_point_cannot_be_written() {
    let t = held_root(&["p"]);
    fs::write(t.join("gate"), b"").unwrap();
    // The first point that counts an attempt cannot be written.
    let e = engine(&t, Some("write:1:enospc@/log/tsk/"), &["--drain"]);
    let (code, err) = e.wait(EXIT_DEADLINE);
    assert_eq!(code, Some(1), "the engine stops:\n{err}");
    assert!(
        err.contains("the disk failed") && err.contains("No space left on device"),
        "{err}"
    );
    assert_eq!(runs(&t, "p"), 0, "no tasker ran");
    assert!(t.join("var/spool/run/p.json").exists());
    let (code, err) = engine(&t, None, &["--drain"]).wait(EXIT_DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    let rec = t.must_record("p");
    assert_eq!(
        (&rec["state"], &rec["attempts"]),
        (&"completed".into(), &1.into())
    );
    assert_eq!(runs(&t, "p"), 1);
}

#[test]
fn a_started_point_that_cannot_be_written_stops_the_tasker_and_counts_the_attempt() {
    let t = held_root(&["s"]);
    // `allocated` is written, `started` (the second) is not.
    let e = engine(&t, Some("write:2:enospc@/log/tsk/"), &["--workers", "1"]);
    let (code, err) = e.wait(EXIT_DEADLINE);
    assert_eq!(code, Some(1), "the engine stops:\n{err}");
    if let Some(pid) = tasker_pid(&t, "s") {
        wait_for("the tasker to be killed", DEADLINE, || process_gone(pid));
    }
    assert!(t.join("var/spool/run/s.json").exists());
    // Three starts (the fault each time at the second point written):
    // every execution is counted.
    let e = engine(&t, Some("write:2:enospc@/log/tsk/"), &["--workers", "1"]);
    let (code, err) = e.wait(EXIT_DEADLINE);
    assert_eq!(code, Some(1), "the engine stops:\n{err}");
    fs::write(t.join("gate"), b"").unwrap();
    let (code, err) = engine(&t, None, &["--drain"]).wait(EXIT_DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    let rec = t.must_record("s");
    assert_eq!(rec["state"], "completed", "{rec}");
    let attempts = rec["attempts"].as_u64().unwrap() as usize;
    assert!(
        attempts >= runs(&t, "s"),
        "attempts {attempts} counts every run ({})",
        runs(&t, "s")
    );
    assert_eq!(attempts, 3, "{rec}");
}

#[test]
fn a_reason_that_cannot_be_written_leaves_the_input_in_in_and_is_said_once() {
    let t = TestRoot::new();
    let bad = t.drop_bytes("", "bad.json", b"{ not json");
    let e = engine(&t, Some("write:1:enospc@/spool/rejected/"), &["--drain"]);
    let (code, err) = e.wait(EXIT_DEADLINE);
    assert_eq!(code, Some(1), "the engine stops:\n{err}");
    assert!(bad.exists(), "the input is still in in/");
    assert!(
        t.list("var/spool/rejected").is_empty(),
        "nothing in rejected/ without its reason"
    );
    let said = log_lines_about(&err, "bad.json");
    assert_eq!(said.len(), 1, "said once: {said:#?}");
    let (code, err) = engine(&t, None, &["--drain"]).wait(EXIT_DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert!(!bad.exists());
    assert!(t.reason("bad.json").contains("invalid JSON"));
}

#[test]
fn a_failed_claim_is_said_once() {
    let t = TestRoot::new();
    t.tasker("org", "echo", "#!/bin/sh\ncat >/dev/null\necho '{}'\n");
    t.drop_task(
        "c1.json",
        r#"{"domain":"org","tasker":"echo","id":"c1","payload":{}}"#,
    );
    let e = engine(&t, Some("rename:1:enospc@/spool/in/"), &["--drain"]);
    let (code, err) = e.wait(EXIT_DEADLINE);
    assert_eq!(code, Some(1), "the engine stops:\n{err}");
    let said = log_lines_about(&err, "c1.json");
    assert_eq!(said.len(), 1, "said once: {said:#?}");
    assert!(said[0].contains("No space left on device"), "{}", said[0]);
}

#[test]
fn a_removed_run_directory_is_named_with_what_happens_next() {
    let t = held_root(&["m"]);
    let mut e = engine(&t, None, &["--workers", "1"]);
    wait_running(&t, &mut e, &["m"]);
    fs::remove_dir_all(t.join("var/spool/run")).unwrap();
    fs::write(t.join("gate"), b"").unwrap();
    let (code, err) = e.wait(EXIT_DEADLINE);
    assert_eq!(code, Some(1), "the engine stops:\n{err}");
    let line = err
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no error line:\n{err}"));
    assert!(
        line.contains("var/spool/run is missing") && line.contains("next start makes"),
        "{line}"
    );
    assert!(!err.contains("page cache"), "{err}");
    // The record made durable before is kept; the next start goes on.
    assert_eq!(t.must_record("m")["state"], "completed");
    let (code, err) = engine(&t, None, &["--drain"]).wait(EXIT_DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert!(t.join("var/spool/run").is_dir());
}

/// The root's lock left to a child of a dead engine (one caught between
/// its fork and its exec when the engine was killed keeps the descriptor
/// until it execs) is no running engine: `status` names none, and `list`
/// says the dead engine's task is queued, as it will be run again. Here
/// `flock(1)`, killed, leaves the lock to its child.
#[test]
fn a_lock_held_after_its_taker_died_is_no_running_engine() {
    let t = held_root(&["k"]);
    let mut e = engine(&t, None, &["--workers", "1"]);
    wait_running(&t, &mut e, &["k"]);
    e.signal(Signal::SIGKILL);
    let (code, _) = e.wait(EXIT_DEADLINE);
    assert_eq!(code, None, "killed by a signal");
    let holder_file = t.join("holder");
    let mut taker = std::process::Command::new("flock")
        .arg("--nonblock")
        .arg(t.path())
        .args([
            "sh",
            "-c",
            "echo $$ > \"$0.tmp\" && mv \"$0.tmp\" \"$0\" && exec sleep 60",
        ])
        .arg(&holder_file)
        .spawn()
        .expect("flock(1) from util-linux");
    wait_for("flock's child", DEADLINE, || holder_file.exists());
    let holder: i32 = fs::read_to_string(&holder_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let holder = KilledOnDrop(holder);
    taker.kill().unwrap();
    taker.wait().unwrap();
    // (Listed with the dead taker's pid in the first pid namespace; in
    // another, the kernel leaves such a lock out of /proc/locks.)
    let status = json_of(&t, &["status", "--json"]);
    assert!(status["engine"].is_null(), "{status:#}");
    let listed = json_of(&t, &["list", "--json"]);
    assert_eq!(listed[0]["id"], "k", "{listed:#}");
    assert_eq!(listed[0]["state"], "queued", "{listed:#}");
    drop(holder);
}

/// A process killed when the test ends, passed or not.
struct KilledOnDrop(i32);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGKILL);
    }
}
