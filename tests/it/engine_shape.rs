//! The engine's shape (DESIGN: one owner of state, nothing slow on its
//! loop, the filesystem is the truth), seen from outside: a taskmaster
//! that spins does not hold up other domains (SPEC 5, 7), a stop asked
//! for during a flood of drops ends within the grace (SPEC 10), and what
//! SPEC 7 counts across offers — refusals and `uncompleted` replies in a
//! row — survives a `kill -9` (SPEC 4, 10). Real `sh` taskers, real
//! signals, the engine in-process or as the built binary.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use serde_json::Value;
use spoolflow::Options;

use crate::common::*;

fn ts(p: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(p["ts"].as_str().expect("a point has ts"))
        .expect("ts is RFC 3339")
        .with_timezone(&Utc)
}

fn assert_failed(rec: &Value, kind: &str) -> String {
    assert_eq!(rec["state"], "failed", "{rec:#}");
    assert_eq!(rec["error"]["kind"], kind, "{rec:#}");
    rec["reason"]
        .as_str()
        .expect("a failed record has a reason")
        .to_string()
}

/// Waits until the engine process holds the root's lock (so its signal
/// handlers are in place), or panics if it exits first.
fn wait_for_lock(t: &TestRoot, engine: &mut EngineProcess) {
    let lock = t.join("var/run/engine.lock");
    let pid = engine.pid().to_string();
    wait_for("the engine to hold the lock", DEADLINE, || {
        engine.exited()
            || fs::read_to_string(&lock).is_ok_and(|s| s.lines().next() == Some(pid.as_str()))
    });
    assert!(!engine.exited(), "the engine exited before taking the lock");
}

/// Kills a `spoolflow run` with SIGKILL and waits for it.
fn kill_9(engine: EngineProcess) {
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
}

// ------------------------------------------------------------------ taskmasters

/// A taskmaster that runs until the sandbox's wall-clock deadline (1 s)
/// ends it. `loop {}` alone could reach the operation limit first on a
/// fast machine; copying a 512 KiB string costs a few operations and tens
/// of microseconds, so the million operations would take many seconds and
/// the deadline always comes first.
const SPINNING_TASKMASTER: &str = r#"
let s = "x";
for i in 0..19 { s += s; }
loop { let copy = s + "y"; }
"#;

/// Slow taskmasters queued one behind the other: the engine is busy with
/// them for about this many seconds when it runs them on its loop. More of
/// them than workers: those waiting for their domain's turn must not hold
/// a worker either.
const SLOW_TASKS: usize = 3;

/// The bound on drop → `started` for a task of another domain while a
/// taskmaster spins. Nothing in the fast task's path needs more than a
/// claim, a few points and a spawn: 2–10 ms measured on the 2-core
/// machine (debug build, in-process engine), up to about 20 ms with three
/// CPU hogs beside it. A taskmaster run on the engine's loop costs up to
/// the sandbox's full second per slow task. The bound sits far from both.
const LATENCY_BOUND: Duration = Duration::from_millis(100);

/// SPEC 5 bounds a taskmaster run at a second of wall time, so that a
/// runaway script fails its own task "and the engine goes on": the engine
/// goes on with other domains meanwhile, not a second later.
#[test]
fn a_spinning_taskmaster_does_not_delay_another_domain() {
    let t = TestRoot::new();
    t.taskmaster("slow", SPINNING_TASKMASTER);
    t.tasker("slow", "quick", "#!/bin/sh\ncat >/dev/null\n");
    t.tasker("fast", "quick", "#!/bin/sh\ncat >/dev/null\n");
    let slow: Vec<String> = (1..=SLOW_TASKS).map(|i| format!("slow-{i}")).collect();
    for id in &slow {
        t.drop_task(
            &format!("{id}.json"),
            r#"{"domain":"slow","tasker":"quick"}"#,
        );
    }
    let engine = t.start_in_process(Options {
        workers: 2,
        ..Options::default()
    });
    // Claimed, so its taskmaster runs now (or is about to): the first
    // slow task ends only a second later, at the sandbox's deadline.
    wait_for("slow-1 to be created", DEADLINE, || {
        !t.points_named("slow-1", "created").is_empty()
    });
    let dropped = Utc::now();
    t.drop_task("fast.json", r#"{"domain":"fast","tasker":"quick"}"#);
    wait_for("the fast task to start", DEADLINE, || {
        !t.points_named("fast", "started").is_empty()
    });
    let started = ts(&t.points_named("fast", "started")[0]);
    wait_for("the fast task and the slow ones to end", DEADLINE, || {
        t.record("fast").is_some() && slow.iter().all(|id| t.record(id).is_some())
    });
    engine.stop();

    // Each slow task spun for its full second and failed its own task.
    let mut slow_ends = Vec::new();
    for id in &slow {
        let rec = t.must_record(id);
        let reason = assert_failed(&rec, "config");
        assert!(
            reason.contains("exceeded the sandbox's time limit"),
            "{id}: {reason}"
        );
        let created = ts(&t.points_named(id, "created")[0]);
        let failed = ts(&t.points_named(id, "failed")[0]);
        slow_ends.push(failed);
        assert!(
            failed - created >= chrono::Duration::milliseconds(900),
            "{id} ended {:?} after it was created: its taskmaster did not spin",
            failed - created
        );
    }
    assert_eq!(t.must_record("fast")["state"], "completed");

    // The test tests something: a slow taskmaster still ran when the fast
    // task was dropped.
    let last_slow_end = *slow_ends.iter().max().expect("slow tasks");
    assert!(
        last_slow_end > dropped,
        "every slow taskmaster had ended ({last_slow_end}) before the fast task was dropped \
         ({dropped}): the test did not overlap them"
    );
    let latency = (started - dropped).to_std().unwrap_or_default();
    eprintln!("the fast task started {latency:?} after its drop");
    assert!(
        latency < LATENCY_BOUND,
        "the fast task started {latency:?} after it was dropped (bound {LATENCY_BOUND:?}), \
         waiting for the slow domain's taskmaster; slow tasks ended at {slow_ends:?}, \
         the fast one was dropped at {dropped} and started at {started}"
    );
}

/// A task whose taskmaster is running (or waiting for its domain's turn)
/// is cancelled at once, and its `start_timeout` fires: neither waits for
/// the script (SPEC 7, 8).
#[test]
fn a_task_being_offered_can_be_cancelled_and_time_out() {
    let t = TestRoot::new();
    t.taskmaster("slow", SPINNING_TASKMASTER);
    t.tasker("slow", "quick", "#!/bin/sh\ncat >/dev/null\n");
    // c1 is offered first; s1 waits behind it for the domain's turn, at
    // least a second, far beyond its start_timeout.
    t.drop_task("c1.json", r#"{"domain":"slow","tasker":"quick"}"#);
    t.drop_task(
        "s1.json",
        r#"{"domain":"slow","tasker":"quick","start_timeout":"100ms"}"#,
    );
    let engine = t.start_in_process(Options {
        workers: 2,
        ..Options::default()
    });
    wait_for("c1 to be created", DEADLINE, || {
        !t.points_named("c1", "created").is_empty()
    });
    fs::write(t.join("var/spool/cancel/c1"), "no longer needed").unwrap();
    wait_for("both records", DEADLINE, || {
        t.record("c1").is_some() && t.record("s1").is_some()
    });
    engine.stop();
    // Aborted by the cancel, not failed by the taskmaster's time limit.
    let c1 = t.must_record("c1");
    assert_eq!(c1["state"], "aborted", "{c1:#}");
    assert_eq!(c1["error"]["kind"], "aborted", "{c1:#}");
    assert_eq!(c1["reason"], "no longer needed", "{c1:#}");
    let reason = assert_failed(&t.must_record("s1"), "timeout");
    assert_eq!(reason, "not started within start_timeout 100ms");
}

// ------------------------------------------------------------------ stop

/// Task files dropped at least, and before SIGTERM.
const FLOOD: usize = 10_000;
const SIGTERM_AFTER: usize = 1_000;
const GRACE: Duration = Duration::from_secs(2);
/// What a stop may take beyond the grace: the running taskers (which end
/// at once) and the last records' commit, on a loaded machine.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// Drops `in/f<i>.json` the safe way (temporary, then rename).
fn drop_numbered(spool_in: &Path, i: usize) {
    let name = format!("f{i:06}.json");
    let tmp = spool_in.join(format!(".{name}.tmp"));
    fs::write(&tmp, br#"{"domain":"org","tasker":"t"}"#).expect("write a task file");
    fs::rename(&tmp, spool_in.join(name)).expect("rename a task file into in/");
}

/// Where each dropped id is: place → ids.
fn places(t: &TestRoot, dropped: usize) -> (BTreeMap<&'static str, usize>, Vec<String>) {
    let mut count = BTreeMap::new();
    let mut problems = Vec::new();
    let dirs = ["in", "run", "done", "failed"];
    let listed: Vec<std::collections::BTreeSet<String>> = dirs
        .iter()
        .map(|d| {
            t.list(&format!("var/spool/{d}"))
                .into_iter()
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .collect();
    for i in 0..dropped {
        let name = format!("f{i:06}.json");
        let at: Vec<&str> = dirs
            .iter()
            .zip(&listed)
            .filter(|(_, set)| set.contains(&name))
            .map(|(d, _)| *d)
            .collect();
        match at.as_slice() {
            [one] => *count.entry(*one).or_insert(0) += 1,
            [] => problems.push(format!("{name} is nowhere")),
            many => problems.push(format!("{name} is in {many:?}")),
        }
    }
    (count, problems)
}

/// SPEC 10: SIGTERM stops the engine within the grace. A stop is one more
/// event of the engine's loop and must not wait behind a flood of others
/// (here: task files dropped faster than the engine takes them).
#[test]
fn sigterm_during_a_flood_of_drops_stops_within_the_grace() {
    let t = TestRoot::new();
    t.tasker("org", "t", "#!/bin/sh\nexit 0\n");
    // stderr to a file: a pipe nobody reads while the flood goes on would
    // stop an engine that logs much at its first 64 KiB.
    let stderr_path = t.join("engine.stderr");
    let child = t
        .cmd()
        .args(["run", "--workers", "2", "--grace", "2s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr_path).expect("engine.stderr"))
        .spawn()
        .expect("spawn spoolflow run");
    let mut engine = EngineProcess { child };
    wait_for_lock(&t, &mut engine);

    let spool_in = t.root.spool_in();
    let dropped = AtomicUsize::new(0);
    let stop_dropping = AtomicBool::new(false);
    let mut signalled_at = 0;
    let mut took = None;
    std::thread::scope(|s| {
        // Drops at least FLOOD files, and goes on as long as the engine
        // runs (until told to stop).
        let dropper = s.spawn(|| {
            let mut i = 0;
            while i < FLOOD || !stop_dropping.load(Ordering::Relaxed) {
                drop_numbered(&spool_in, i);
                i += 1;
                dropped.store(i, Ordering::Relaxed);
            }
        });
        let end = Instant::now() + DEADLINE;
        while dropped.load(Ordering::Relaxed) < SIGTERM_AFTER && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        signalled_at = dropped.load(Ordering::Relaxed);
        let sent = Instant::now();
        engine.signal(Signal::SIGTERM);
        let bound = GRACE + STOP_MARGIN;
        while sent.elapsed() <= bound {
            if engine.exited() {
                took = Some(sent.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Stop the flood whatever happened, so that the scope ends.
        stop_dropping.store(true, Ordering::Relaxed);
        dropper.join().expect("the dropper did not panic");
    });
    let dropped = dropped.into_inner();
    assert!(
        signalled_at >= SIGTERM_AFTER,
        "only {signalled_at} files dropped before SIGTERM"
    );
    let Some(took) = took else {
        let queued = t.list("var/spool/in").len();
        drop(engine); // SIGKILL
        panic!(
            "the engine did not exit within {:?} (grace {GRACE:?} + {STOP_MARGIN:?}) of \
             SIGTERM, sent after {signalled_at} drops; {dropped} files dropped in all, \
             {queued} still in in/",
            GRACE + STOP_MARGIN
        );
    };
    let (code, _) = engine.wait(DEADLINE);
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    assert_eq!(code, Some(0), "the engine's stderr:\n{stderr}");
    eprintln!(
        "SIGTERM after {signalled_at} drops; exited {took:?} later; {dropped} dropped in all"
    );

    // Nothing lost, nothing doubled: each file is in exactly one place.
    let (count, problems) = places(&t, dropped);
    assert!(
        problems.is_empty(),
        "{} task files lost or doubled, e.g. {:?}; placed: {count:?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    assert!(
        t.list("var/spool/rejected").is_empty(),
        "{:?}",
        t.list("var/spool/rejected")
    );
    eprintln!("after the stop: {count:?}");
}

// ------------------------------------------------------------------ refusals

/// SPEC 7: offering a task again to a taskee that refused it fails the
/// task `refused`, without a second run. The refusal is part of the
/// task's state, so it holds across a crash of the engine: a start-up
/// rebuilds it (from the points log) along with attempts and offers.
#[test]
fn a_refusal_survives_kill_9() {
    let t = TestRoot::new();
    t.taskmaster(
        "org",
        r#"if task.refusals.len() == 0 { "picky" } else { "gated" }"#,
    );
    t.tasker(
        "org",
        "picky",
        "#!/bin/sh\necho \"$SPOOLFLOW_ATTEMPT\" >> \"$SPOOLFLOW_ROOT/picky-runs\"\necho '{\"point\":\"refused\",\"reason\":\"not mine\"}'\n",
    );
    // Holds the task (it never sees its gate: the next start kills it).
    t.tasker(
        "org",
        "gated",
        &format!(
            "#!/bin/sh\necho \"$SPOOLFLOW_ATTEMPT\" >> \"$SPOOLFLOW_ROOT/gated-runs\"\n{}\n",
            wait_file("gate")
        ),
    );
    t.drop_task("r1.json", r#"{"domain":"org"}"#);

    let engine = t.spawn_engine(&["--workers", "2"]);
    wait_for("the gated taskee to run r1", DEADLINE, || {
        t.lines_of("gated-runs").len() == 1
            && t.points_named("r1", "started")
                .iter()
                .any(|p| p["taskee"] == "gated")
    });
    kill_9(engine);
    assert_eq!(t.lines_of("picky-runs"), ["1"], "picky ran once");
    assert_eq!(t.points_named("r1", "refused").len(), 1);
    assert!(t.list("var/spool/run").contains(&"r1.json".to_string()));

    // The taskmaster now offers the task to picky again.
    t.taskmaster("org", r#""picky""#);
    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "2"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");

    let rec = t.must_record("r1");
    let names = t.point_names("r1");
    assert_eq!(
        t.lines_of("picky-runs"),
        ["1"],
        "picky, which refused r1 before the crash, was offered it again and ran; \
         record: {rec:#}; points: {names:?}"
    );
    let reason = assert_failed(&rec, "refused");
    assert!(
        reason.contains("picky") && reason.contains("refused"),
        "{reason}"
    );
    assert_eq!(t.points_named("r1", "refused").len(), 1, "{names:?}");
    assert_eq!(t.lines_of("gated-runs"), ["1"]);
    assert!(names.contains(&"recovered".to_string()), "{names:?}");
    assert!(t.list("var/spool/run").is_empty());
}

// ------------------------------------------------------------------ uncompleted

/// The run of [`counting_tasker`] that waits for the engine's death.
const HELD_RUN: u32 = 100;
/// The run at which [`counting_tasker`] gives up: the engine let the row
/// of `uncompleted` replies go on far past 100.
const GIVE_UP_RUN: u32 = 150;

/// Counts its runs in `$SPOOLFLOW_ROOT/runs` and replies `uncompleted`
/// with the count, except that run [`HELD_RUN`] first waits (for a gate
/// nobody opens: the engine is killed meanwhile) and run [`GIVE_UP_RUN`]
/// fails the task.
fn counting_tasker() -> String {
    format!(
        r#"#!/bin/sh
cat >/dev/null
n=$(cat "$SPOOLFLOW_ROOT/runs" 2>/dev/null || echo 0)
n=$((n+1))
echo $n > "$SPOOLFLOW_ROOT/.runs.tmp" && mv "$SPOOLFLOW_ROOT/.runs.tmp" "$SPOOLFLOW_ROOT/runs"
if [ $n -eq {HELD_RUN} ]; then
  {}
fi
if [ $n -ge {GIVE_UP_RUN} ]; then
  echo '{{"point":"failed","reason":"went past 100"}}'
  exit 0
fi
echo "{{\"point\":\"uncompleted\",\"payload\":{{\"n\":$n}}}}"
"#,
        wait_file("gate")
    )
}

/// SPEC 7: after 100 `uncompleted` replies in a row the task fails
/// (`user`). A crash in the middle of the row does not break it (an
/// interrupted run is no reply): the start-up rebuilds the count, and
/// the 100th reply, the first after the crash, ends the task.
#[test]
fn uncompleted_replies_are_counted_across_kill_9() {
    let t = TestRoot::new();
    t.tasker("org", "t", &counting_tasker());
    t.drop_task("u1.json", r#"{"domain":"org","tasker":"t"}"#);

    let engine = t.spawn_engine(&["--workers", "1"]);
    let runs = || {
        fs::read_to_string(t.join("runs"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    wait_for(
        "run 100 to start (after 99 uncompleted replies)",
        DEADLINE,
        || runs() >= HELD_RUN && t.points_named("u1", "started").len() >= HELD_RUN as usize,
    );
    kill_9(engine);
    assert_eq!(runs(), HELD_RUN);
    assert_eq!(
        t.points_named("u1", "uncompleted").len(),
        HELD_RUN as usize - 1
    );

    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "1"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");

    let rec = t.must_record("u1");
    let reason = assert_failed(&rec, "user");
    assert_eq!(
        reason,
        "100 uncompleted replies in a row",
        "after the crash the tasker ran {} more times; record: {rec:#}",
        runs() - HELD_RUN
    );
    // Run 100 was interrupted; its rerun gave the 100th reply, the last.
    assert_eq!(runs(), HELD_RUN + 1);
    assert_eq!(t.points_named("u1", "uncompleted").len(), HELD_RUN as usize);
    let names = t.point_names("u1");
    assert!(names.contains(&"recovered".to_string()), "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("failed"));
    assert!(t.list("var/spool/run").is_empty());
}

/// Every fsync goes through the durable writer: a rejection, the claim of
/// a file that does not name its domain and the rewrite of a `run/` file
/// after `uncompleted` are jobs of the writer (seen through its probe, in
/// the order they were made durable), and so is the record.
#[test]
fn rejections_claims_and_rewrites_are_made_durable_by_the_writer() {
    use spoolflow::store::writer::JobKind;
    let t = TestRoot::new();
    t.tasker(
        "org",
        "unc",
        r#"#!/bin/sh
cat >/dev/null
if [ -e "$SPOOLFLOW_ROOT/once" ]; then
  echo '{"done":true}'
else
  touch "$SPOOLFLOW_ROOT/once"
  echo '{"point":"uncompleted","payload":{"step":2}}'
fi
"#,
    );
    t.drop_bytes("", "notes.txt", b"not a task");
    t.drop_task_in("org", "c1.json", r#"{"tasker":"unc"}"#);
    let (tx, rx) = std::sync::mpsc::channel();
    t.run_drain_with(Options {
        workers: 2,
        drain: true,
        writer_probe: Some(tx),
        ..Options::default()
    });
    assert_eq!(t.must_record("c1")["state"], "completed");
    let jobs: Vec<(JobKind, String)> = rx
        .try_iter()
        .map(|d| {
            let rel = d.path.strip_prefix(t.path()).unwrap_or(&d.path);
            (d.kind, rel.display().to_string())
        })
        .collect();
    let at = |kind: JobKind, path: &str| {
        jobs.iter()
            .position(|(k, p)| *k == kind && p == path)
            .unwrap_or_else(|| panic!("no {kind:?} of {path} among {jobs:?}"))
    };
    at(JobKind::Reject, "var/spool/rejected/notes.txt");
    let claim = at(JobKind::Claim, "var/spool/run/c1.json");
    let rewrite = at(JobKind::Rewrite, "var/spool/run/c1.json");
    let record = at(JobKind::Record, "var/spool/done/c1.json");
    assert!(claim < rewrite && rewrite < record, "{jobs:?}");
    assert!(t.rejected_reason("notes.txt").is_some());
}
