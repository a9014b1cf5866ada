//! Issue 10, item 5: no tasker process outlives its task. A tasker starts
//! two processes that leave its process group — one with `setsid`, one
//! through a double fork into a new session — and neither may survive its
//! task's completion, timeout or cancel, nor a `kill -9` of the engine
//! once the engine restarts. Each case runs with cgroups
//! (`SPOOLFLOW_CONTAIN=cgroup`, where the engine can create them) and with
//! the default, the child subreaper, through the built binary.

use std::fs;
use std::process::Stdio;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::common::{process_gone, wait_file, wait_for, EngineProcess, TestRoot, DEADLINE};

/// Which mechanism the engine is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mech {
    /// Cgroups asked for (the subreaper when they cannot be created).
    Auto,
    /// The default: the child subreaper.
    Subreaper,
}

/// The escaping tasker: both escapees write their pid (they become
/// `sleep`, with that pid), then the tasker ends (`done`) once the test has
/// seen them and opened the gate `go`, or hangs (`hang`). A second attempt
/// (after a `kill -9`) just completes.
fn escaper(end: &str) -> String {
    let both = wait_file("double.pid");
    let gate = wait_file("go");
    format!(
        r#"#!/bin/sh
if [ "$SPOOLFLOW_ATTEMPT" -ge 2 ]; then echo '{{"again":true}}'; exit 0; fi
setsid sh -c 'set -- $(cat /proc/$$/stat); echo "$$ $6" > "$SPOOLFLOW_ROOT/.s.tmp" && mv "$SPOOLFLOW_ROOT/.s.tmp" "$SPOOLFLOW_ROOT/setsid.pid" && exec sleep 300' </dev/null >/dev/null 2>&1 &
( setsid sh -c 'set -- $(cat /proc/$$/stat); echo "$$ $6" > "$SPOOLFLOW_ROOT/.d.tmp" && mv "$SPOOLFLOW_ROOT/.d.tmp" "$SPOOLFLOW_ROOT/double.pid" && exec sleep 301' </dev/null >/dev/null 2>&1 & ) &
{both}
{setsid}
[ "{end}" = hang ] && sleep 300
[ "{end}" = done ] && {{ {gate}; }}
echo '{{}}'
"#,
        setsid = wait_file("setsid.pid"),
    )
}

/// The escapees' pids, once both wrote them; killed when dropped, so that
/// a failing test leaves nothing behind.
struct Escapees(Vec<i32>);

impl Escapees {
    /// The escapees, seen running: for a task that cannot end before the
    /// test lets it (a gate, a hang).
    fn of(t: &TestRoot) -> Escapees {
        let escapees = Escapees::written(t);
        for pid in &escapees.0 {
            assert!(!process_gone(*pid), "escapee {pid} runs");
        }
        escapees
    }

    /// The escapees as they wrote themselves (pid and session id, read
    /// by each from its own `/proc/<pid>/stat`), without asking that they
    /// still run: for a task an engine timer may end before the test looks.
    fn written(t: &TestRoot) -> Escapees {
        let files = [t.join("setsid.pid"), t.join("double.pid")];
        wait_for("both escapees' pid files", DEADLINE, || {
            files.iter().all(|f| f.exists())
        });
        let pids = files
            .iter()
            .map(|f| {
                let text = fs::read_to_string(f).unwrap();
                let (pid, sid) = text.trim().split_once(' ').expect("pid and sid");
                assert_eq!(pid, sid, "escapee {pid} leads a session of its own");
                pid.parse().unwrap()
            })
            .collect();
        Escapees(pids)
    }

    fn alive(&self) -> bool {
        self.0.iter().all(|p| !process_gone(*p))
    }

    fn wait_gone(&self, after: &str) {
        wait_for(
            &format!("the escapees {:?} to be gone {after}", self.0),
            DEADLINE,
            || self.0.iter().all(|p| process_gone(*p)),
        );
    }
}

impl Drop for Escapees {
    fn drop(&mut self) {
        for pid in &self.0 {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"sleep\0") {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

/// `spoolflow run` with the mechanism asked for.
fn engine(t: &TestRoot, mech: Mech, args: &[&str]) -> EngineProcess {
    let mut cmd = t.cmd();
    match mech {
        Mech::Auto => cmd.env("SPOOLFLOW_CONTAIN", "cgroup"),
        Mech::Subreaper => cmd.env_remove("SPOOLFLOW_CONTAIN"),
    };
    let child = cmd
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spoolflow run");
    EngineProcess { child }
}

/// The engine said (at start-up, in its log) which mechanism it used:
/// the one asked for. Checked last, so that without containment a test
/// fails on the escapees it left.
fn check_mech(t: &TestRoot, mech: Mech) {
    let said = fs::read_to_string(t.join("var/log/engine.log")).unwrap_or_default();
    let line = said
        .lines()
        .rfind(|l| l.contains("taskers are contained"))
        .unwrap_or_else(|| panic!("the engine says how it contains taskers: {said}"));
    eprintln!("{mech:?}: {line}");
    if mech == Mech::Subreaper {
        assert!(line.contains("child subreaper"), "{line}");
    }
}

/// Stops an engine (SIGTERM) and checks that it exits cleanly (removing
/// its cgroups).
fn stop(e: EngineProcess) {
    e.signal(Signal::SIGTERM);
    let (code, _) = e.wait(DEADLINE);
    assert_eq!(code, Some(0));
}

fn completed(mech: Mech) {
    let t = TestRoot::new();
    t.tasker("org", "escape", &escaper("done"));
    t.drop_task("a.json", r#"{"domain":"org","tasker":"escape"}"#);
    let e = engine(&t, mech, &["--workers", "1"]);
    let escapees = Escapees::of(&t);
    // Seen alive: now the task may end (else the engine could kill them
    // before the test looked, on a loaded machine).
    fs::write(t.join("go"), "").unwrap();
    wait_for("a's record", DEADLINE, || t.record("a").is_some());
    assert_eq!(t.must_record("a")["state"], "completed");
    // The engine still runs: its task's end did it, not its exit.
    escapees.wait_gone("after the task completed");
    stop(e);
    check_mech(&t, mech);
}

fn timed_out(mech: Mech) {
    let t = TestRoot::new();
    t.tasker("org", "escape", &escaper("hang"));
    t.drop_task(
        "a.json",
        r#"{"domain":"org","tasker":"escape","timeout":"3s"}"#,
    );
    let e = engine(&t, mech, &["--workers", "1"]);
    // The escapees write their pids within milliseconds of the start; the
    // 3 s timer leaves a loaded machine ample room, and they need not
    // still run when the test reads them.
    let escapees = Escapees::written(&t);
    wait_for("a's record", DEADLINE, || t.record("a").is_some());
    let rec = t.must_record("a");
    assert_eq!(rec["error"]["kind"], "timeout", "{rec}");
    escapees.wait_gone("after the task timed out");
    stop(e);
    check_mech(&t, mech);
}

fn cancelled(mech: Mech) {
    let t = TestRoot::new();
    t.tasker("org", "escape", &escaper("hang"));
    t.drop_task("a.json", r#"{"domain":"org","tasker":"escape"}"#);
    let e = engine(&t, mech, &["--workers", "1"]);
    let escapees = Escapees::of(&t);
    wait_for("a's started point", DEADLINE, || {
        !t.points_named("a", "started").is_empty()
    });
    let o = t.cmd().args(["cancel", "a"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_for("a's record", DEADLINE, || t.record("a").is_some());
    assert_eq!(t.must_record("a")["state"], "aborted");
    escapees.wait_gone("after the task was cancelled");
    stop(e);
    check_mech(&t, mech);
}

fn killed_engine(mech: Mech) {
    let t = TestRoot::new();
    t.tasker("org", "escape", &escaper("hang"));
    t.drop_task("a.json", r#"{"domain":"org","tasker":"escape"}"#);
    let e = engine(&t, mech, &["--workers", "1"]);
    let escapees = Escapees::of(&t);
    e.signal(Signal::SIGKILL);
    let (code, _) = e.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    // The engine's death alone leaves them running.
    assert!(escapees.alive(), "the escapees died with the engine");

    let e = engine(&t, mech, &["--drain", "--workers", "1"]);
    escapees.wait_gone("after a kill -9 and a restart");
    let (code, _) = e.wait(DEADLINE);
    assert_eq!(code, Some(0));
    let rec = t.must_record("a");
    assert_eq!(rec["state"], "completed", "{rec}");
    assert_eq!(rec["attempts"], 2, "{rec}");
    assert_eq!(rec["payload"], json!({"again": true}));
    check_mech(&t, mech);
}

#[test]
fn escapees_die_when_their_task_completes() {
    completed(Mech::Auto);
}

#[test]
fn escapees_die_when_their_task_completes_under_the_subreaper() {
    completed(Mech::Subreaper);
}

#[test]
fn escapees_die_when_their_task_times_out() {
    timed_out(Mech::Auto);
}

#[test]
fn escapees_die_when_their_task_times_out_under_the_subreaper() {
    timed_out(Mech::Subreaper);
}

#[test]
fn escapees_die_when_their_task_is_cancelled() {
    cancelled(Mech::Auto);
}

#[test]
fn escapees_die_when_their_task_is_cancelled_under_the_subreaper() {
    cancelled(Mech::Subreaper);
}

#[test]
fn escapees_of_a_killed_engine_die_at_the_next_start() {
    killed_engine(Mech::Auto);
}

#[test]
fn escapees_of_a_killed_engine_die_at_the_next_start_under_the_subreaper() {
    killed_engine(Mech::Subreaper);
}
