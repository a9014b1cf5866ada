//! SPEC 4 and 10 through the built binary, with real `kill -9`: at least
//! once and never silently twice across repeated engine crashes, the
//! crash window between a record and its `run/` file, and the tasker
//! processes a dead engine leaves behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::*;

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The records in `done/` (not the committer's temporaries).
fn records(t: &TestRoot) -> usize {
    t.list("var/spool/done")
        .iter()
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .count()
}

/// When to `kill -9` a running engine.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// As soon as it holds the lock (recovery and intake under way).
    Locked,
    /// Once `done/` holds at least this many records.
    Done(usize),
}

const TASKS: usize = 400;

/// Appends "<id> <attempt>" to the ledger in one `O_APPEND` write, sleeps
/// 0–30 ms (by pid), and replies with a payload.
const LEDGER_TASKER: &str = r#"#!/bin/sh
echo "$SPOOLFLOW_ID $SPOOLFLOW_ATTEMPT" >> "$SPOOLFLOW_ROOT/ledger"
sleep 0.0$(( $$ % 4 ))
echo "{\"done\":\"$SPOOLFLOW_ID\"}"
"#;

/// When the engines are killed: at rising counts of records, and twice
/// as soon as an engine holds the lock.
const PLAN: [Moment; 9] = [
    Moment::Done(1),
    Moment::Done(30),
    Moment::Locked,
    Moment::Done(80),
    Moment::Done(140),
    Moment::Locked,
    Moment::Done(200),
    Moment::Done(260),
    Moment::Done(330),
];

#[test]
fn repeated_kill_9_loses_nothing_and_never_completes_twice() {
    let t = TestRoot::new();
    t.tasker("org", "ledger", LEDGER_TASKER);
    let ids: Vec<String> = (0..TASKS).map(|i| format!("c{i:04}")).collect();
    for id in &ids {
        t.drop_task(
            &format!("{id}.json"),
            &format!(r#"{{"domain":"org","tasker":"ledger","payload":{{"id":"{id}"}}}}"#),
        );
    }

    let started = Instant::now();
    let kills = kill_at_moments(&t);
    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "4"])
        .wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "the draining engine failed: {err}");
    eprintln!("all crashes and the drain took {:?}", started.elapsed());
    assert_taskers_gone(t.path());

    // Every task is in done/, and nowhere else.
    let expected: Vec<String> = ids.iter().map(|id| format!("{id}.json")).collect();
    assert_eq!(t.list("var/spool/done"), expected);
    for dir in ["failed", "rejected", "run", "in"] {
        let left = t.list(&format!("var/spool/{dir}"));
        assert!(left.is_empty(), "{dir}/: {left:?}");
    }

    // The ledger: what the taskers actually did, one line per execution.
    let ledger = fs::read_to_string(t.join("ledger")).unwrap();
    let mut runs: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    let mut lines = 0;
    for line in ledger.lines() {
        let (id, attempt) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("torn ledger line {line:?}"));
        let attempt: u32 = attempt
            .parse()
            .unwrap_or_else(|_| panic!("torn ledger line {line:?}"));
        runs.entry(id).or_default().push(attempt);
        lines += 1;
    }
    let mut check = TaskCheck::default();
    for id in &ids {
        let ran = runs
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} is not in the ledger"));
        check.task(&t, id, ran);
    }
    assert_eq!(runs.len(), TASKS, "the ledger names unknown ids");
    check.report(&kills, lines);
    let Kills {
        kills,
        floor,
        cut_short,
    } = kills;
    // At the at-least-once floor: only the taskers running at a kill ran
    // again; a reply that had reached the engine's loop was not lost with
    // it (the replies journal), even when its record was not yet durable.
    assert!(
        lines - TASKS <= cut_short,
        "an execution ran again after its record"
    );
    // The one window left: a tasker whose exit the engine's runtime had
    // reaped but its loop had not yet handled (within a turn of the loop)
    // when the engine was frozen; it is not its child any more, and its
    // reply is not journaled yet. Seen 0–2 times per 9 kills.
    assert!(
        lines - TASKS <= floor + kills,
        "extra executions ({}) far above the floor ({floor})",
        lines - TASKS
    );
    assert_eq!(check.same_attempt_twice, 0, "an attempt number ran twice");
    assert!(
        check.no_final_point.is_empty(),
        "tasks without a final point: {:?}",
        check.no_final_point
    );
}

/// What the kills of [`kill_at_moments`] cut short.
struct Kills {
    kills: usize,
    /// Taskers running at the kills (the at-least-once floor).
    floor: usize,
    /// Executions without a durable record at the kills.
    cut_short: usize,
}

/// Starts an engine for each moment of [`PLAN`], freezes it at that
/// moment, counts what runs, and kills it with SIGKILL (stopping early
/// once every task has its record).
fn kill_at_moments(t: &TestRoot) -> Kills {
    let lock = t.join("var/run/engine.lock");
    let mut out = Kills {
        kills: 0,
        floor: 0,
        cut_short: 0,
    };
    // Executions per id in the ledger at the last kill.
    let mut ran_before: BTreeMap<String, usize> = BTreeMap::new();
    for moment in PLAN {
        let mut engine = t.spawn_engine(&["--workers", "4"]);
        let pid = engine.pid().to_string();
        match moment {
            Moment::Locked => wait_for("the new engine to hold the lock", DEADLINE, || {
                engine.exited()
                    || fs::read_to_string(&lock)
                        .is_ok_and(|s| s.lines().next() == Some(pid.as_str()))
            }),
            Moment::Done(n) => wait_for(&format!("{n} records in done/"), DEADLINE, || {
                engine.exited() || records(t) >= n
            }),
        }
        if engine.exited() {
            let (code, err) = engine.wait(DEADLINE);
            panic!("the engine exited on its own ({code:?}): {err}");
        }
        // Frozen first: what runs now is what the kill cuts short (no
        // tasker starts, and no reply reaches the engine, in between).
        engine.signal(Signal::SIGSTOP);
        let running = children_of(engine.pid());
        let done_at_kill = records(t);
        let run_at_kill = t.list("var/spool/run").len();
        engine.signal(Signal::SIGKILL);
        let (code, _) = engine.wait(DEADLINE);
        assert_eq!(code, None, "the engine was killed by a signal");
        out.kills += 1;
        // The floor: executions of this engine that never became a record
        // (their taskers were running, or had replied to an engine that
        // died before writing the record). The orphans finish on their own
        // (a few ms) before the ledger is read.
        wait_for("the killed engine's taskers to end", DEADLINE, || {
            processes_of(t.path()).is_empty()
        });
        let unfinished = unfinished_runs(t, &mut ran_before);
        out.floor += running;
        out.cut_short += unfinished;
        eprintln!(
            "kill -9 #{} at {moment:?}: done/ {done_at_kill}, run/ {run_at_kill}, \
             {running} taskers running, {unfinished} executions without a record",
            out.kills
        );
        if done_at_kill >= TASKS {
            break;
        }
    }
    assert!(
        out.kills >= 5,
        "only {} kills happened before the tasks ran out",
        out.kills
    );
    out
}

/// The checks of every task's record, points and ledger lines, with the
/// counts the test reports.
#[derive(Default)]
struct TaskCheck {
    recovered: usize,
    recovered_after_start: usize,
    no_final_point: Vec<String>,
    same_attempt_twice: usize,
}

impl TaskCheck {
    /// Task `id`, whose executions wrote the ledger's attempts `ran`.
    fn task(&mut self, t: &TestRoot, id: &str, ran: &[u32]) {
        let rec = t.must_record(id);
        assert_eq!(rec["state"], "completed", "{id}: {rec}");
        assert_eq!(rec["id"], id);
        assert_eq!(rec["payload"], serde_json::json!({"done": id}), "{id}");
        let attempts = rec["attempts"].as_u64().expect("attempts") as u32;
        let ended_at = rec["ended_at"].as_str().expect("ended_at").to_string();

        let points = t.points(id);
        let names = names_of(&points);
        let count = |n: &str| names.iter().filter(|x| **x == n).count();
        assert_eq!(count("created"), 1, "{id}: {names:?}");
        assert!(count("completed") <= 1, "{id} completed twice: {names:?}");
        assert_eq!(count("failed") + count("aborted"), 0, "{id}: {names:?}");
        if count("completed") == 0 {
            self.no_final_point.push(id.to_string());
        }

        // The record is that of the last execution: no execution started
        // after it was written (it was neither overwritten nor run again).
        let starts: Vec<(&str, u32)> = points
            .iter()
            .filter(|p| p["point"] == "started")
            .map(|p| {
                (
                    p["ts"].as_str().unwrap(),
                    p["attempt"].as_u64().unwrap() as u32,
                )
            })
            .collect();
        assert!(!starts.is_empty(), "{id} never started: {names:?}");
        for (ts, _) in &starts {
            assert!(
                *ts <= ended_at.as_str(),
                "{id} started at {ts}, after its record ended at {ended_at}: {names:?}"
            );
        }
        let last_attempt = starts.iter().map(|s| s.1).max().unwrap();
        assert_eq!(attempts, last_attempt, "{id}: {names:?}");

        // Recovered after a start: the next execution is a new attempt.
        if let Some(r) = names.iter().rposition(|n| *n == "recovered") {
            self.recovered += 1;
            if names[..r].contains(&"started") {
                self.recovered_after_start += 1;
                assert!(attempts >= 2, "{id}: attempts {attempts}: {names:?}");
                assert!(
                    names[r..].contains(&"started"),
                    "{id} recovered but did not run again: {names:?}"
                );
            }
        }

        // The ledger holds the completing execution, and nothing later.
        assert!(
            ran.contains(&attempts),
            "{id}: ledger {ran:?} lacks attempt {attempts}"
        );
        assert!(
            ran.iter().all(|a| *a <= attempts),
            "{id}: ledger {ran:?} has an attempt after the record's {attempts}"
        );
        let distinct: BTreeSet<&u32> = ran.iter().collect();
        if ran.len() != distinct.len() {
            // Each execution after a crash is a new attempt (SPEC 10), even
            // when the engine died between the spawn and `started`.
            self.same_attempt_twice += ran.len() - distinct.len();
            eprintln!("{id}: ledger attempts {ran:?}, points {names:?}");
        }
    }

    /// The test's figures, on stderr.
    fn report(&self, kills: &Kills, lines: usize) {
        eprintln!(
            "crash test: {TASKS} tasks, {} kill -9, {lines} executions in the ledger: \
             duplicate-execution rate {:.3} ({} extra executions; the floor, taskers running \
             at the kills: {}; executions without a durable record at the kills: {}); \
             {} tasks recovered, {} of them after a start; {} attempt numbers ran twice; \
             {} tasks without a final point ({:?})",
            kills.kills,
            lines as f64 / TASKS as f64,
            lines - TASKS,
            kills.floor,
            kills.cut_short,
            self.recovered,
            self.recovered_after_start,
            self.same_attempt_twice,
            self.no_final_point.len(),
            self.no_final_point
        );
    }
}

/// The child processes of `pid` (a frozen engine's taskers): running,
/// or exited with their exit not yet taken by the engine (zombies), or
/// forked and not yet the tasker's program.
fn children_of(pid: i32) -> usize {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // `pid (comm) state ppid …`; comm may hold spaces and parens.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<i32>().ok())
                == Some(pid)
        })
        .count()
}

/// The executions that ran since the last kill (ledger lines of ids
/// without a record now) — cut short by this kill; updates `ran_before`
/// to the ledger's counts.
fn unfinished_runs(t: &TestRoot, ran_before: &mut BTreeMap<String, usize>) -> usize {
    let ledger = fs::read_to_string(t.join("ledger")).unwrap_or_default();
    let mut now: BTreeMap<String, usize> = BTreeMap::new();
    for line in ledger.lines() {
        if let Some((id, _)) = line.split_once(' ') {
            *now.entry(id.to_string()).or_default() += 1;
        }
    }
    let cut = now
        .iter()
        .filter(|(id, n)| t.record(id).is_none() && **n > ran_before.get(*id).copied().unwrap_or(0))
        .map(|(id, n)| n - ran_before.get(id).copied().unwrap_or(0))
        .sum();
    *ran_before = now;
    cut
}

/// SPEC 4: a crash between writing the record and removing the `run/`
/// file. The record is authoritative: the leftover is removed and the
/// task is not run again.
#[test]
fn a_run_file_beside_its_record_is_removed_not_run_again() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "marker",
        "#!/bin/sh\n: > \"$SPOOLFLOW_ROOT/marker-$SPOOLFLOW_ID\"\n",
    );
    let task = |id: &str| format!(r#"{{"domain":"org","tasker":"marker","id":"{id}"}}"#);
    let record = |id: &str, state: &str| {
        let mut b = serde_json::to_vec_pretty(&serde_json::json!({
            "id": id, "exid": id, "nid": "0", "domain": "org",
            "tasker": "marker", "taskee": "marker", "tasker_path": "tsk/org/marker",
            "state": state, "reason": null, "error": null, "attempts": 1, "offers": 1,
            "priority": 0, "headers": {},
            "created_at": "2026-01-01T00:00:00.000000Z",
            "started_at": "2026-01-01T00:00:00.100000Z",
            "ended_at": "2026-01-01T00:00:00.200000Z",
            "payload": {"kept": id}
        }))
        .unwrap();
        b.push(b'\n');
        b
    };
    // w1 completed, w2 failed, each with its run/ file left behind and the
    // points of its one execution; r3 is an ordinary leftover with no
    // record, to show the marker works.
    fs::write(t.join("var/spool/run/w1.json"), task("w1")).unwrap();
    fs::write(t.join("var/spool/done/w1.json"), record("w1", "completed")).unwrap();
    fs::write(t.join("var/spool/run/w2.json"), task("w2")).unwrap();
    fs::write(t.join("var/spool/failed/w2.json"), record("w2", "failed")).unwrap();
    fs::write(t.join("var/spool/run/r3.json"), task("r3")).unwrap();
    for id in ["w1", "w2"] {
        fs::write(t.join(&format!("var/log/tsk/{id}.log")), one_execution(id)).unwrap();
    }

    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "2"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");

    assert!(t.list("var/spool/run").is_empty());
    assert_eq!(
        fs::read(t.join("var/spool/done/w1.json")).unwrap(),
        record("w1", "completed")
    );
    assert_eq!(
        fs::read(t.join("var/spool/failed/w2.json")).unwrap(),
        record("w2", "failed")
    );
    assert!(!t.join("var/spool/failed/w1.json").exists());
    assert!(!t.join("var/spool/done/w2.json").exists());
    for id in ["w1", "w2"] {
        assert!(!t.join(&format!("marker-{id}")).exists(), "{id} ran again");
        let names = t.point_names(id);
        assert_eq!(
            &names[..4],
            ["created", "offered", "allocated", "started"],
            "{id}: {names:?}"
        );
        assert!(
            names[4..].iter().all(|n| !matches!(
                n.as_str(),
                "recovered" | "offered" | "allocated" | "started" | "retried"
            )),
            "{id} was queued again: {names:?}"
        );
    }
    assert!(t.list("var/spool/rejected").is_empty());

    // The control: a leftover without a record is recovered and runs.
    assert!(t.join("marker-r3").exists());
    assert_eq!(t.must_record("r3")["state"], "completed");
    assert_eq!(t.point_names("r3")[0], "recovered");
}

/// The points of one execution of `id` (attempt 1) up to `started`, as
/// an engine that died before logging the final point leaves them.
fn one_execution(id: &str) -> String {
    let point = |ts: &str, point: &str, extra: &str| {
        format!(
            r#"{{"ts":"2026-01-01T00:00:00.{ts}Z","id":"{id}","exid":"{id}","nid":"0","point":"{point}"{extra}}}"#
        ) + "\n"
    };
    [
        point(
            "000000",
            "created",
            r#","domain":"org","priority":0,"tasker":"marker""#,
        ),
        point("000100", "offered", r#","taskee":"marker","offer":1"#),
        point(
            "000200",
            "allocated",
            r#","taskee":"marker","tasker":"tsk/org/marker""#,
        ),
        point(
            "000300",
            "started",
            r#","taskee":"marker","tasker":"tsk/org/marker","attempt":1,"pid":4242"#,
        ),
    ]
    .concat()
}

/// SPEC 4: the final point is logged once the record is durable; an
/// engine killed after the record but before the point leaves a log with
/// no final point. The next start, which finds the record beside the
/// `run/` file, completes the log (so `logs`, `events` and `show` see the
/// end of the task).
/// SPEC 10: a task id used again once `gc` removed its record starts its
/// attempts at 1 again; cut short by `kill -9`, it runs again at the next
/// start (`recovered`), and is not completed with the reply the id's
/// earlier life left in the replies journal.
#[test]
fn an_id_used_again_after_its_record_went_is_not_completed_by_its_old_reply() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "work",
        &format!(
            "#!/bin/sh\ncase \"$(cat)\" in\n\
             *slow*) : > \"$SPOOLFLOW_ROOT/slow-runs\"; {}; echo '{{\"result\":\"new\"}}';;\n\
             *) echo '{{\"result\":\"old\"}}';;\nesac\n",
            wait_file("go")
        ),
    );
    let task = |k: &str| {
        format!(r#"{{"domain":"org","tasker":"work","id":"job1","payload":{{"k":"{k}"}}}}"#)
    };
    t.drop_task("job1.json", &task("fast"));
    t.run_drain(1);
    assert_eq!(t.must_record("job1")["payload"]["result"], "old");
    // What `gc` does to an old record and its log.
    fs::remove_file(t.join("var/spool/done/job1.json")).unwrap();
    fs::remove_file(t.join("var/log/tsk/job1.log")).unwrap();
    t.drop_task("job1.json", &task("slow"));
    let engine = t.spawn_engine(&["--workers", "1"]);
    wait_for("the second life's tasker to run", DEADLINE, || {
        t.join("slow-runs").exists()
    });
    engine.signal(Signal::SIGKILL);
    let _ = engine.wait(DEADLINE);
    fs::write(t.join("go"), "").unwrap();
    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "1"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");
    let rec = t.must_record("job1");
    assert_eq!(rec["payload"]["result"], "new", "{rec:#}");
    assert_eq!(t.points_named("job1", "recovered").len(), 1);
}

#[test]
fn a_record_found_at_start_up_gets_its_final_point() {
    let t = TestRoot::new();
    t.tasker("org", "marker", "#!/bin/sh\n");
    fs::write(
        t.join("var/spool/run/w1.json"),
        r#"{"domain":"org","tasker":"marker","id":"w1"}"#,
    )
    .unwrap();
    fs::write(
        t.join("var/spool/done/w1.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "id": "w1", "exid": "w1", "nid": "0", "domain": "org",
            "tasker": "marker", "taskee": "marker", "tasker_path": "tsk/org/marker",
            "state": "completed", "reason": null, "error": null, "attempts": 1,
            "offers": 1, "priority": 0, "headers": {},
            "created_at": "2026-01-01T00:00:00.000000Z",
            "started_at": "2026-01-01T00:00:00.000300Z",
            "ended_at": "2026-01-01T00:00:00.100000Z",
            "payload": {}
        }))
        .unwrap(),
    )
    .unwrap();
    fs::write(t.join("var/log/tsk/w1.log"), one_execution("w1")).unwrap();

    let (code, err) = t.spawn_engine(&["--drain"]).wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(t.list("var/spool/run").is_empty());
    let names = t.point_names("w1");
    assert_eq!(
        names.iter().filter(|n| *n == "completed").count(),
        1,
        "the log of a completed task has no final point: {names:?}"
    );
    assert_eq!(names.last().map(String::as_str), Some("completed"));
}

/// SPEC 10: the next start kills the tasker processes (and what they
/// started) of an engine that died, and runs the task again as a new
/// attempt.
#[test]
fn kill_9_orphans_are_killed_at_the_next_start() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "forker",
        r#"#!/bin/sh
if [ "$SPOOLFLOW_ATTEMPT" -ge 2 ]; then
  echo '{"second":true}'
  exit 0
fi
echo $$ > "$SPOOLFLOW_ROOT/.tasker.pid.tmp"
mv "$SPOOLFLOW_ROOT/.tasker.pid.tmp" "$SPOOLFLOW_ROOT/tasker.pid"
sleep 300 &
echo $! > "$SPOOLFLOW_ROOT/.grandchild.pid.tmp"
mv "$SPOOLFLOW_ROOT/.grandchild.pid.tmp" "$SPOOLFLOW_ROOT/grandchild.pid"
sleep 300
"#,
    );
    t.drop_task("o1.json", r#"{"domain":"org","tasker":"forker"}"#);

    let engine = t.spawn_engine(&["--workers", "2"]);
    let grandchild_file = t.join("grandchild.pid");
    wait_for("the grandchild's pid file", DEADLINE, || {
        grandchild_file.exists()
    });
    let tasker = read_pid(&t.join("tasker.pid")).expect("tasker pid");
    let grandchild = read_pid(&grandchild_file).expect("grandchild pid");
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None);
    // The engine's death alone leaves them running.
    assert!(
        !process_gone(tasker),
        "tasker {tasker} died with the engine"
    );
    assert!(
        !process_gone(grandchild),
        "grandchild {grandchild} died with the engine"
    );
    assert!(t.list("var/spool/run").contains(&"o1.json".to_string()));

    let engine = t.spawn_engine(&["--drain", "--workers", "2"]);
    wait_for(
        "the old tasker and its child to be killed",
        DEADLINE,
        || process_gone(tasker) && process_gone(grandchild),
    );
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");

    let rec = t.must_record("o1");
    assert_eq!(rec["state"], "completed", "{rec}");
    assert_eq!(rec["attempts"], 2, "{rec}");
    assert_eq!(rec["payload"], serde_json::json!({"second": true}));
    let names = t.point_names("o1");
    let recovered = names.iter().position(|n| n == "recovered");
    let started = names.iter().position(|n| n == "started");
    assert!(
        started.is_some() && recovered.is_some() && started < recovered,
        "expected started, then recovered: {names:?}"
    );
    assert_eq!(names.last().map(String::as_str), Some("completed"));
    assert!(processes_of(t.path()).is_empty());
}
