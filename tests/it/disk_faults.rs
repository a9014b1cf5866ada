//! Issue 10, item 2 (SPEC 10, durability): the disk failing. Through the
//! built binary (a debug build, which honours `SPOOLFLOW_FAULT`, the fault
//! injection seam of `store::spool`), each durable operation fails once —
//! a record's write and fsync, a claim, a rejection, a `run/` rewrite, a
//! flow's progress — and on a real read-only `done/`. Each time the engine
//! logs what failed (the file and the error) and exits 1, nothing is lost
//! (the task is still in `in/` or `run/`), and a start without the fault
//! completes every task with exactly one record.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

/// How long an engine may take to stop on a fault, or to drain: above
/// every engine timer (the 30 s safety rescan included), so that a pass
/// never comes from one.
const EXIT_DEADLINE: Duration = Duration::from_secs(60);

/// Replies a payload.
const ECHO: &str = "#!/bin/sh\ncat >/dev/null\necho '{\"ok\":true}'\n";

/// Replies `uncompleted` (with a new payload) the first time it runs for
/// a task, then completes it.
const ONCE_UNCOMPLETED: &str = r#"#!/bin/sh
cat >/dev/null
mark="$SPOOLFLOW_ROOT/ran-$SPOOLFLOW_ID"
if [ -e "$mark" ]; then
  echo '{"ok":true}'
else
  : > "$mark"
  echo '{"point":"uncompleted","payload":{"step":1}}'
fi
"#;

fn root_with_echo() -> TestRoot {
    let t = TestRoot::new();
    t.tasker("org", "echo", ECHO);
    t
}

fn task(id: &str) -> String {
    format!(r#"{{"domain":"org","tasker":"echo","id":"{id}","payload":{{"id":"{id}"}}}}"#)
}

/// `spoolflow run` with `SPOOLFLOW_FAULT` set to `fault` (`None`: unset).
fn engine(t: &TestRoot, fault: Option<&str>, args: &[&str]) -> EngineProcess {
    t.spawn_engine_with_fault(fault, args)
}

/// Waits for `engine` to stop on the disk failure: exit status 1, and
/// the log line naming the failed operation's file and error.
fn stops_on_the_failure(engine: EngineProcess, file: &str, error: &str) -> String {
    let (code, err) = engine.wait(EXIT_DEADLINE);
    assert_eq!(
        code,
        Some(1),
        "the engine exits 1 on the disk failure:\n{err}"
    );
    let line = err
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("the disk failed"))
        .unwrap_or_else(|| panic!("no 'the disk failed' line in:\n{err}"));
    assert!(
        line.contains(file) && line.contains(error) && line.contains("stopping"),
        "the log line names {file:?} and {error:?}: {line}"
    );
    eprintln!("engine stopped: {line}");
    // The command's own message, for whoever runs it by hand.
    assert!(
        err.lines()
            .any(|l| l.starts_with("spoolflow: ") && l.contains(file)),
        "stderr ends with the failure:\n{err}"
    );
    err
}

/// Where `id`'s task is: `in/`, `run/`, `done/` or `failed/` (panics if
/// it is in none, or in more than one of run/ and the records).
fn whereabouts(t: &TestRoot, id: &str) -> &'static str {
    let places: Vec<&'static str> = [
        ("in", format!("var/spool/in/{id}.json")),
        ("in", format!("var/spool/in/org/{id}.json")),
        ("run", format!("var/spool/run/{id}.json")),
        ("done", format!("var/spool/done/{id}.json")),
        ("failed", format!("var/spool/failed/{id}.json")),
    ]
    .into_iter()
    .filter(|(_, p)| t.join(p).exists())
    .map(|(w, _)| w)
    .collect();
    match places.as_slice() {
        [one] => one,
        // A record made durable just before the failure, beside the run/
        // file it had no time to remove: the next start resolves it.
        ["run", "done"] => "done",
        [] => panic!("task {id} is lost: in none of in/, run/, done/, failed/"),
        more => panic!("task {id} is in {more:?}"),
    }
}

/// Files (not directories) under `rel`, recursively, relative to it.
fn files_under(t: &TestRoot, rel: &str) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let base = t.join(rel);
    let mut out = Vec::new();
    walk(&base, &base, &mut out);
    out.sort();
    out
}

/// Starts the engine without the fault, with `--drain`: it exits 0, every
/// task has exactly one record (completed), and `in/` and `run/` are empty.
fn restart_completes(t: &TestRoot, ids: &[&str]) {
    let (code, err) = engine(t, None, &["--drain", "--workers", "2"]).wait(EXIT_DEADLINE);
    assert_eq!(code, Some(0), "the restart drains:\n{err}");
    let mut want: Vec<String> = ids.iter().map(|id| format!("{id}.json")).collect();
    want.sort();
    assert_eq!(t.list("var/spool/done"), want, "one record per task");
    assert!(t.list("var/spool/failed").is_empty());
    assert!(files_under(t, "var/spool/run").is_empty(), "run/ is empty");
    assert!(files_under(t, "var/spool/in").is_empty(), "in/ is empty");
    for id in ids {
        let rec = t.must_record(id);
        assert_eq!(rec["state"], "completed", "{id}: {rec}");
        assert_eq!(
            t.points_named(id, "completed").len(),
            1,
            "{id} has one final point"
        );
    }
}

/// The engine holds the lock (it has started).
fn wait_started(t: &TestRoot, engine: &mut EngineProcess) {
    let lock = t.join("var/run/engine.lock");
    let pid = engine.pid().to_string();
    wait_for("the engine to hold the lock", DEADLINE, || {
        engine.exited()
            || fs::read_to_string(&lock).is_ok_and(|s| s.lines().next() == Some(pid.as_str()))
    });
    assert!(!engine.exited(), "the engine runs");
}

#[test]
fn a_record_write_that_fails_stops_the_engine_and_the_task_stays_in_run() {
    let t = root_with_echo();
    let ids = ["w1", "w2", "w3"];
    for id in ids {
        t.drop_task(&format!("{id}.json"), &task(id));
    }
    // The second record's bytes cannot be written (the disk is full).
    let e = engine(&t, Some("write:2:enospc@/spool/done/"), &["--workers", "1"]);
    stops_on_the_failure(e, "/var/spool/done/", "No space left on device");
    let places: Vec<&str> = ids.iter().map(|id| whereabouts(&t, id)).collect();
    assert_eq!(
        places.iter().filter(|p| **p == "done").count(),
        1,
        "one record was written before the failure: {places:?}"
    );
    restart_completes(&t, &ids);
}

#[test]
fn a_record_fsync_that_fails_stops_the_engine_and_is_not_taken_as_written() {
    let t = root_with_echo();
    t.drop_task("f1.json", &task("f1"));
    let e = engine(&t, Some("fsync:1@/spool/done/"), &[]);
    stops_on_the_failure(e, "/var/spool/done/f1.json", "Input/output error");
    // The record's temporary is gone, the task is still in run/.
    assert_eq!(whereabouts(&t, "f1"), "run");
    assert!(
        t.list("var/spool/done").is_empty(),
        "no record, no temporary"
    );
    restart_completes(&t, &["f1"]);
}

#[test]
fn a_directory_fsync_that_fails_after_a_record_stops_the_engine() {
    let t = root_with_echo();
    t.drop_task("g1.json", &task("g1"));
    // The record's own fsync (first), then done/'s (second) fails: the
    // record is in place but not known to be durable.
    let e = engine(&t, Some("fsync:2@/var/spool/done"), &[]);
    stops_on_the_failure(e, "/var/spool/done:", "Input/output error");
    assert!(
        t.join("var/spool/run/g1.json").exists(),
        "the run/ file stays until the record is durable"
    );
    restart_completes(&t, &["g1"]);
}

/// Runs one task with the first fsync of `run/` failing, the engine
/// started with `args`: it stops on the failure (exit 1), the record
/// stands, and a start without the fault finishes cleanly.
fn a_failed_fsync_of_run_stops_the_engine(id: &str, args: &[&str]) {
    let t = root_with_echo();
    t.drop_task(&format!("{id}.json"), &task(id));
    let e = engine(&t, Some("fsync:1@/var/spool/run"), args);
    stops_on_the_failure(e, "/var/spool/run:", "Input/output error");
    assert_eq!(whereabouts(&t, id), "done");
    restart_completes(&t, &[id]);
}

#[test]
fn a_run_fsync_that_fails_once_the_engine_is_idle_stops_it_and_the_record_stands() {
    // An ended task's run/ file leaves run/ once its record is durable;
    // run/ is fsynced for many of them together, or once the writer has
    // had nothing to do for a moment: that fsync, the first of run/, fails.
    a_failed_fsync_of_run_stops_the_engine("s1", &[]);
}

/// The same failure while a draining engine ends: whichever fsync of
/// `run/` fails (the idle one, one while the engine ends, or the writer's
/// last), the exit is 1 with the log line.
#[test]
fn a_run_fsync_that_fails_as_a_draining_engine_ends_makes_its_exit_1() {
    a_failed_fsync_of_run_stops_the_engine("s2", &["--drain"]);
}

/// `retry` and `gc` take a task missing from `run/` for ended, and the
/// engine makes those moves durable a moment after the records: both
/// fsync `run/` first, and a failure of that fsync stops them before they
/// move or remove anything.
#[test]
fn retry_and_gc_fsync_run_before_they_touch_an_ended_task() {
    let t = TestRoot::new();
    t.tasker("org", "bad", "#!/bin/sh\ncat >/dev/null\nexit 1\n");
    t.drop_task("r1.json", r#"{"domain":"org","tasker":"bad","retries":0}"#);
    let (code, err) = engine(&t, None, &["--drain"]).wait(EXIT_DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(whereabouts(&t, "r1"), "failed");
    for args in [&["retry", "r1"][..], &["gc", "--older-than", "0s"]] {
        let mut cmd = t.cmd();
        cmd.env("SPOOLFLOW_FAULT", "fsync:1@/var/spool/run")
            .args(args);
        let o = output_within(cmd, EXIT_DEADLINE);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("/var/spool/run") && err.contains("Input/output error"),
            "{args:?} names the failed fsync: {err}"
        );
        assert_eq!(whereabouts(&t, "r1"), "failed", "{args:?} changed nothing");
        assert!(!t.join("var/spool/history/r1").exists(), "{args:?}");
    }
    // Without the fault, retry moves the record into history/.
    let mut retry = t.cmd();
    retry.args(["retry", "r1"]);
    let o = output_within(retry, EXIT_DEADLINE);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(t.join("var/spool/history/r1").is_dir());
}

#[test]
fn a_claim_rename_that_fails_stops_the_engine_and_the_task_stays_in_in() {
    let t = root_with_echo();
    t.drop_task("c1.json", &task("c1"));
    // The claim of a file naming its domain: a rename from in/ to run/.
    let e = engine(&t, Some("rename:1@/spool/in/"), &[]);
    stops_on_the_failure(e, "/var/spool/in/c1.json", "Input/output error");
    assert_eq!(whereabouts(&t, "c1"), "in");
    restart_completes(&t, &["c1"]);
}

#[test]
fn a_domainless_claim_that_cannot_be_written_stops_the_engine() {
    let t = root_with_echo();
    // A file of in/org/ that does not name its domain is written anew into
    // run/ by the durable writer.
    t.drop_task_in(
        "org",
        "d1.json",
        r#"{"tasker":"echo","id":"d1","payload":{}}"#,
    );
    let e = engine(&t, Some("write:1:enospc@/spool/run/"), &[]);
    stops_on_the_failure(e, "/var/spool/run/d1.json", "No space left on device");
    assert_eq!(whereabouts(&t, "d1"), "in");
    restart_completes(&t, &["d1"]);
}

#[test]
fn a_rejection_that_fails_stops_the_engine_and_the_input_stays_in_in() {
    let t = root_with_echo();
    t.drop_task("ok1.json", &task("ok1"));
    let bad = t.drop_bytes("", "bad.json", b"{ not json");
    let e = engine(&t, Some("rename:1@/spool/rejected/"), &[]);
    stops_on_the_failure(e, "/var/spool/rejected/bad.json", "Input/output error");
    assert!(bad.exists(), "the input is still in in/");
    assert!(t.list("var/spool/rejected").is_empty());
    whereabouts(&t, "ok1");
    restart_completes(&t, &["ok1"]);
    assert!(!bad.exists());
    // Rejected at last, with its reason.
    t.reason("bad.json");
}

#[test]
fn a_rejection_whose_reason_cannot_be_written_stops_the_engine() {
    let t = root_with_echo();
    let bad = t.drop_bytes("", "bad.json", b"{ not json");
    // The .reason, written before the input is moved (issue 15), cannot
    // be written.
    let e = engine(&t, Some("write:1:enospc@/spool/rejected/"), &[]);
    stops_on_the_failure(e, "/var/spool/rejected/bad.json", "No space left on device");
    // Not lost: still in in/, and nothing in rejected/ without its reason.
    assert!(bad.exists());
    assert!(t.list("var/spool/rejected").is_empty());
    restart_completes(&t, &[]);
    assert!(!bad.exists());
    t.reason("bad.json");
}

#[test]
fn a_run_rewrite_that_fails_stops_the_engine_and_the_next_start_goes_on_from_run() {
    let t = TestRoot::new();
    t.tasker("org", "echo", ONCE_UNCOMPLETED);
    t.drop_task("u1.json", &task("u1"));
    // After `uncompleted`, run/u1.json is rewritten with the new payload:
    // the disk is full.
    let e = engine(&t, Some("write:1:enospc@/spool/run/"), &[]);
    stops_on_the_failure(e, "/var/spool/run/u1.json", "No space left on device");
    assert_eq!(whereabouts(&t, "u1"), "run");
    let file: serde_json::Value =
        serde_json::from_slice(&fs::read(t.join("var/spool/run/u1.json")).unwrap()).unwrap();
    assert_eq!(
        file["payload"],
        serde_json::json!({"id": "u1"}),
        "run/ holds the last durable payload"
    );
    restart_completes(&t, &["u1"]);
    assert_eq!(t.points_named("u1", "recovered").len(), 1);
}

#[test]
fn a_flow_progress_write_that_fails_stops_the_engine() {
    let t = root_with_echo();
    t.drop_task(
        "fl1.json",
        r#"{"domain":"org","id":"fl1","flow":{"sequence":[{"task":"echo"},{"task":"echo"}]},"payload":{}}"#,
    );
    // A flow's claim writes its resolved tree into run/fl1.json (the first
    // write); its first progress (its journal or a snapshot of its run/
    // file, the second) cannot be written.
    let e = engine(&t, Some("write:2:enospc@/spool/run/fl1."), &[]);
    stops_on_the_failure(e, "/var/spool/run/fl1.", "No space left on device");
    assert_eq!(whereabouts(&t, "fl1"), "run");
    restart_completes(&t, &["fl1"]);
}

#[test]
fn running_taskers_are_killed_when_the_engine_stops_on_a_disk_failure() {
    let t = root_with_echo();
    // Waits for a gate (at most ~60 s, longer than the wait below for it
    // to be killed, so that it cannot pass by giving up on its own).
    t.tasker(
        "org",
        "held",
        r#"#!/bin/sh
cat >/dev/null
echo $$ > "$SPOOLFLOW_ROOT/held.pid"
i=0; while [ ! -e "$SPOOLFLOW_ROOT/gate" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
echo '{"ok":true}'
"#,
    );
    t.drop_task(
        "h1.json",
        r#"{"domain":"org","tasker":"held","id":"h1","payload":{}}"#,
    );
    let mut e = engine(&t, Some("write:1@/spool/done/"), &["--workers", "2"]);
    let pid_file = t.join("held.pid");
    let mut pid = None;
    wait_for("the held tasker to run", DEADLINE, || {
        pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        pid.is_some() || e.exited()
    });
    let pid = pid.expect("the held tasker runs");
    // Another task's record cannot be written: the engine stops.
    t.drop_task("w1.json", &task("w1"));
    stops_on_the_failure(e, "/var/spool/done/w1.json", "Input/output error");
    wait_for("the held tasker to be killed", DEADLINE, || {
        process_gone(pid)
    });
    assert_eq!(whereabouts(&t, "h1"), "run");
    fs::write(t.join("gate"), b"").unwrap();
    restart_completes(&t, &["h1", "w1"]);
    assert_eq!(t.points_named("h1", "recovered").len(), 1);
}

/// Restores a directory made read-only, however the test ends.
struct ReadOnly {
    dir: PathBuf,
    immutable: bool,
}

impl ReadOnly {
    /// Makes `dir` read-only for real: `chmod 0555`, or, as root (whom
    /// modes do not stop), `chattr +i`. `Err`: why it could not be done.
    fn make(dir: &Path) -> Result<ReadOnly, String> {
        use std::os::unix::fs::PermissionsExt;
        let root = nix::unistd::geteuid().is_root();
        let guard = if root {
            let out = std::process::Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .output()
                .map_err(|e| format!("running as root and chattr is not available: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "running as root and `chattr +i` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            ReadOnly {
                dir: dir.to_path_buf(),
                immutable: true,
            }
        } else {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o555))
                .map_err(|e| format!("chmod 0555: {e}"))?;
            ReadOnly {
                dir: dir.to_path_buf(),
                immutable: false,
            }
        };
        // Check that it holds (a capability may let writes through).
        let probe = dir.join(".probe");
        if fs::write(&probe, b"x").is_ok() {
            let _ = fs::remove_file(&probe);
            return Err(format!(
                "{} is still writable after {}",
                dir.display(),
                if root { "chattr +i" } else { "chmod 0555" }
            ));
        }
        Ok(guard)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.immutable {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.dir)
                .status();
        } else {
            let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755));
        }
    }
}

#[test]
fn a_read_only_done_directory_stops_the_engine_and_loses_nothing() {
    let t = root_with_echo();
    let mut e = engine(&t, None, &[]);
    wait_started(&t, &mut e);
    let done = t.join("var/spool/done");
    let guard = match ReadOnly::make(&done) {
        Ok(g) => g,
        Err(why) => {
            eprintln!(
                "SKIPPED a_read_only_done_directory_stops_the_engine_and_loses_nothing: {why}"
            );
            return;
        }
    };
    eprintln!(
        "done/ made read-only with {}",
        if guard.immutable {
            "chattr +i (running as root)"
        } else {
            "chmod 0555"
        }
    );
    t.drop_task("r1.json", &task("r1"));
    let error = if guard.immutable {
        "Operation not permitted"
    } else {
        "Permission denied"
    };
    stops_on_the_failure(e, "/var/spool/done/r1.json", error);
    assert_eq!(whereabouts(&t, "r1"), "run");
    drop(guard);
    restart_completes(&t, &["r1"]);
}

/// A record found at start beside its `run/` file (the engine died between
/// writing the record and removing the file): the file goes only once the
/// record's directory is durable. A record seen at start may be one the
/// dead engine never made durable; removing `run/` first would let a power
/// loss keep the removal and lose the record.
#[test]
fn a_run_file_beside_its_record_stays_until_the_records_directory_is_durable() {
    let t = root_with_echo();
    t.drop_task("r1.json", &task("r1"));
    let (code, err) = engine(&t, None, &["--drain"]).wait(EXIT_DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(t.must_record("r1")["state"], "completed");
    // As the dead engine would have left it: the record, and run/ too.
    fs::write(t.join("var/spool/run/r1.json"), task("r1")).unwrap();
    // The first fsync of done/ at this start is recovery's: it fails.
    let (code, err) = engine(&t, Some("fsync:1@/var/spool/done"), &["--drain"]).wait(EXIT_DEADLINE);
    assert_eq!(code, Some(1), "the start fails on the disk failure:\n{err}");
    assert!(
        err.contains("the disk failed") && err.contains("/var/spool/done"),
        "the message names done/:\n{err}"
    );
    assert!(
        t.join("var/spool/run/r1.json").exists(),
        "run/r1.json stays while done/ is not known to be durable"
    );
    // A start without the fault finishes it: one record, run/ empty, the
    // task not run again.
    restart_completes(&t, &["r1"]);
}

/// The final point is appended once the record is durable. When that
/// append fails on the disk (full here), the engine stops (exit 1) and the
/// task's `run/` file stays, so that the next start adds the point the
/// record has: the record and the points log never disagree for good.
#[test]
fn a_final_point_that_cannot_be_appended_stops_the_engine_and_is_added_at_the_next_start() {
    let t = root_with_echo();
    t.drop_task("p1.json", &task("p1"));
    // The loop's own injected appends to the log come first (`allocated`,
    // `started`): the third is the writer's final point.
    let e = engine(&t, Some("write:3:enospc@/var/log/tsk/p1.log"), &[]);
    stops_on_the_failure(e, "/var/log/tsk/p1.log", "No space left on device");
    assert_eq!(t.must_record("p1")["state"], "completed");
    assert!(
        t.join("var/spool/run/p1.json").exists(),
        "the run/ file stays for the next start"
    );
    assert!(t.points_named("p1", "completed").is_empty());
    // The next start's append fails the same way: it stops too, the run/
    // file still kept.
    let e = engine(&t, Some("write:1:enospc@/var/log/tsk/p1.log"), &["--drain"]);
    let (code, err) = e.wait(EXIT_DEADLINE);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(t.join("var/spool/run/p1.json").exists(), "{err}");
    restart_completes(&t, &["p1"]);
}
