//! SPEC 12 durability through the built binary, with real `kill -9`: 50
//! flows of three shapes (sequences of 5 task nodes, concurrences of 3,
//! `each` over 20 elements with concurrency 4) survive repeated engine
//! crashes. Each flow leaves exactly one record, completed, with the right
//! payload; a task node whose end was durable at a kill never runs again,
//! and only nodes running at a kill run again.
//!
//! The taskers append `<exid> <nid> <attempt>` to a ledger at their very
//! end (after their work, before their reply), so a ledger line means a
//! run finished; a run killed mid-way may or may not have written it.
//! After every kill (the engine dead, its `run/` files still) the test
//! reads each flow's progress: the task nodes `done` there (or in a flow
//! with a record) are durably finished, those `running` there (or the
//! first nodes of a flow claimed before any progress was written) may run
//! again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::common::*;

/// Pids of live (not zombie) processes whose environment carries
/// `SPOOLFLOW_ROOT=<root>`: taskers of that root and what they started.
fn processes_of(root: &Path) -> Vec<i32> {
    let mut want = b"SPOOLFLOW_ROOT=".to_vec();
    want.extend_from_slice(root.as_os_str().as_encoded_bytes());
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(env) = fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == want.as_slice()) && !process_gone(pid) {
            pids.push(pid);
        }
    }
    pids
}

// ------------------------------------------------------------------ taskers

/// Every tasker: reads its payload (whitespace removed), computes its
/// reply, sleeps 0–20 ms (by pid), appends its ledger line in one
/// `O_APPEND` write, then replies.
fn tasker(body: &str) -> String {
    format!(
        r#"#!/bin/sh
in=$(tr -d ' \n')
{body}
sleep 0.0$(( $$ % 3 ))
echo "$SPOOLFLOW_EXID $SPOOLFLOW_NID $SPOOLFLOW_ATTEMPT" >> "$SPOOLFLOW_ROOT/ledger"
echo "$out"
"#
    )
}

/// `step` (sequences): `{"trail":"T"}` -> `{"trail":"T/<nid>"}`.
const STEP: &str = r#"t=$(printf '%s' "$in" | sed -n 's/.*"trail":"\([^"]*\)".*/\1/p')
out="{\"trail\":\"$t/$SPOOLFLOW_NID\"}""#;

/// `branch` (concurrences): `{"b":{"<nid>":"<exid>"}}`, deep-merged.
const BRANCH: &str = r#"out="{\"b\":{\"$SPOOLFLOW_NID\":\"$SPOOLFLOW_EXID\"}}""#;

/// `item` (each runs): `{"item":"<exid>:<item>"}` for the integer `item`.
const ITEM: &str = r#"i=$(printf '%s' "$in" | sed -n 's/.*"item":\([0-9][0-9]*\).*/\1/p')
out="{\"item\":\"$SPOOLFLOW_EXID:$i\"}""#;

// ------------------------------------------------------------------ flows

const FLOWS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// A sequence of 5 `step` nodes.
    Sequence,
    /// A concurrence of 3 `branch` nodes.
    Concurrence,
    /// An `each` over 20 elements, concurrency 4, of an `item` node.
    Each,
}

const SEQUENCE: usize = 5;
const CONCURRENCE: usize = 3;
const ELEMENTS: usize = 20;
const EACH_CONCURRENCY: usize = 4;

struct FlowCase {
    id: String,
    shape: Shape,
    /// The first element of an `each` (elements are `base..base+20`).
    base: usize,
}

impl FlowCase {
    fn new(i: usize) -> FlowCase {
        let shape = [Shape::Sequence, Shape::Concurrence, Shape::Each][i % 3];
        FlowCase {
            id: format!("f{i:02}"),
            shape,
            base: i * 100,
        }
    }

    fn tree(&self) -> Value {
        match self.shape {
            Shape::Sequence => json!({"sequence": vec![json!({"task": "step"}); SEQUENCE]}),
            Shape::Concurrence => {
                json!({"concurrence": vec![json!({"task": "branch"}); CONCURRENCE]})
            }
            Shape::Each => json!({
                "each": "items", "do": {"task": "item"}, "concurrency": EACH_CONCURRENCY
            }),
        }
    }

    fn input(&self) -> Value {
        match self.shape {
            Shape::Sequence => json!({"trail": self.id}),
            Shape::Concurrence => json!({"id": self.id}),
            Shape::Each => json!({
                "id": self.id,
                "items": (self.base..self.base + ELEMENTS).collect::<Vec<_>>(),
            }),
        }
    }

    fn expected(&self) -> Value {
        match self.shape {
            Shape::Sequence => {
                let mut trail = self.id.clone();
                for n in self.task_nids() {
                    trail.push('/');
                    trail.push_str(&n);
                }
                json!({ "trail": trail })
            }
            Shape::Concurrence => {
                let b: serde_json::Map<String, Value> = self
                    .task_nids()
                    .into_iter()
                    .map(|n| (n, json!(self.id)))
                    .collect();
                json!({ "b": b })
            }
            Shape::Each => json!({
                "id": self.id,
                "items": (self.base..self.base + ELEMENTS)
                    .map(|x| format!("{}:{x}", self.id))
                    .collect::<Vec<_>>(),
            }),
        }
    }

    /// The nids of its task nodes (all children of the root `0`).
    fn task_nids(&self) -> Vec<String> {
        let n = match self.shape {
            Shape::Sequence => SEQUENCE,
            Shape::Concurrence => CONCURRENCE,
            Shape::Each => ELEMENTS,
        };
        (0..n).map(|i| format!("0_{i}")).collect()
    }
}

/// A task node: `(exid, nid)`.
type Key = (String, String);

// ------------------------------------------------------------------ ledger

/// One finished tasker run.
#[derive(Debug, Clone)]
struct Run {
    key: Key,
    attempt: u32,
}

/// The ledger's complete lines; `strict`: a malformed line panics (else,
/// while taskers may be writing, it is skipped).
fn ledger(t: &TestRoot, strict: bool) -> Vec<Run> {
    let text = fs::read_to_string(t.join("ledger")).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    if strict {
        assert_eq!(complete.len(), text.len(), "a torn last ledger line");
    }
    let mut runs = Vec::new();
    for line in complete.lines() {
        let w: Vec<&str> = line.split(' ').collect();
        let attempt = w.get(2).and_then(|a| a.parse::<u32>().ok());
        match (w.len(), attempt) {
            (3, Some(attempt)) => runs.push(Run {
                key: (w[0].to_string(), w[1].to_string()),
                attempt,
            }),
            _ if strict => panic!("torn ledger line {line:?}"),
            _ => {}
        }
    }
    runs
}

/// How many distinct task nodes have a finished run in the ledger.
fn finished_nodes(t: &TestRoot) -> usize {
    ledger(t, false)
        .into_iter()
        .map(|r| r.key)
        .collect::<BTreeSet<_>>()
        .len()
}

// ------------------------------------------------------------------ kills

/// When to `kill -9` a running engine.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// As soon as it holds the lock (recovery and intake under way).
    Locked,
    /// As soon as a node it recovered has started again (soon after the
    /// restart, with the recovered runs in flight).
    Rerun,
    /// Once the ledger names at least this many distinct task nodes.
    Finished(usize),
}

/// What the files say right after a kill.
struct Kill {
    moment: Moment,
    /// Complete ledger lines when the engine was dead (orphans may add
    /// lines after, but only for nodes that were running).
    ledger_len: usize,
    /// Task nodes whose end was durable.
    done: BTreeSet<Key>,
    /// Task nodes queued or running (to be run again).
    running: BTreeSet<Key>,
    /// Task nodes whose completing reply the engine had journaled
    /// (`var/run/replies.log` and its old file): never run again.
    replied: BTreeSet<Key>,
    records: usize,
}

/// The task nodes the replies journal names (its complete lines).
fn journaled_replies(t: &TestRoot) -> BTreeSet<Key> {
    ["var/run/replies.old.log", "var/run/replies.log"]
        .iter()
        .flat_map(|f| {
            let text = fs::read_to_string(t.join(f)).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| {
                    Some((
                        v["exid"].as_str()?.to_string(),
                        v["nid"].as_str()?.to_string(),
                    ))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The durable state of every flow, read from `done/` and `run/` while no
/// engine runs.
fn durable_state(t: &TestRoot, flows: &[FlowCase]) -> Kill {
    let mut done = BTreeSet::new();
    let mut running = BTreeSet::new();
    let mut records = 0;
    for f in flows {
        let key = |nid: &String| (f.id.clone(), nid.clone());
        if t.record(&f.id).is_some() {
            records += 1;
            done.extend(f.task_nids().iter().map(key));
            continue;
        }
        let Some(progress) = t.flow_progress(&f.id) else {
            // Not claimed yet, or claimed with its first progress not
            // durable: no node started (the engine starts a flow's first
            // nodes only once the progress naming them is durable).
            continue;
        };
        for nid in f.task_nids() {
            match progress["nodes"][&nid]["state"].as_str() {
                Some("done") => {
                    done.insert(key(&nid));
                }
                Some("running") => {
                    running.insert(key(&nid));
                }
                None => {}
                Some(other) => panic!(
                    "{} node {nid} is {other} in its run/ file: {:#}",
                    f.id, progress
                ),
            }
        }
    }
    Kill {
        moment: Moment::Locked,
        ledger_len: 0,
        done,
        running,
        replied: journaled_replies(t),
        records,
    }
}

/// Line counts of the flows' points logs.
fn log_lengths(t: &TestRoot, flows: &[FlowCase]) -> BTreeMap<String, usize> {
    flows
        .iter()
        .map(|f| (f.id.clone(), t.points(&f.id).len()))
        .collect()
}

/// Whether a points log shows, after its first `from` points, a
/// `recovered` point followed by a `started` point of the same node.
fn rerun_since(t: &TestRoot, id: &str, from: usize) -> bool {
    let text = fs::read_to_string(t.join(&format!("var/log/tsk/{id}.log"))).unwrap_or_default();
    let mut recovered = BTreeSet::new();
    for line in text.lines().skip(from) {
        let Ok(p) = serde_json::from_str::<Value>(line) else {
            continue; // Being written.
        };
        let nid = p["nid"].as_str().unwrap_or_default().to_string();
        match p["point"].as_str() {
            Some("recovered") => {
                recovered.insert(nid);
            }
            Some("started") if recovered.contains(&nid) => return true,
            _ => {}
        }
    }
    false
}

/// How many `recovered` points node `nid` has.
fn recovered_of(points: &[Value], nid: &str) -> usize {
    points
        .iter()
        .filter(|p| p["point"] == "recovered" && p["nid"] == nid)
        .count()
}

/// The points of node `nid` as `point(attempt)`, for messages.
fn node_points(points: &[Value], nid: &str) -> String {
    points
        .iter()
        .filter(|p| p["nid"] == nid)
        .map(|p| {
            let name = p["point"].as_str().unwrap_or("?");
            match p["attempt"].as_u64() {
                Some(a) => format!("{name}({a})"),
                None => name.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------------ the test

#[test]
fn flows_survive_repeated_kill_9_and_finished_nodes_never_run_again() {
    let t = TestRoot::new();
    t.tasker("org", "step", &tasker(STEP));
    t.tasker("org", "branch", &tasker(BRANCH));
    t.tasker("org", "item", &tasker(ITEM));
    let flows: Vec<FlowCase> = (0..FLOWS).map(FlowCase::new).collect();
    for f in &flows {
        t.drop_task(
            &format!("{}.json", f.id),
            &json!({"domain": "org", "id": f.id, "flow": f.tree(), "payload": f.input()})
                .to_string(),
        );
    }
    let all_nodes: BTreeSet<Key> = flows
        .iter()
        .flat_map(|f| f.task_nids().into_iter().map(|n| (f.id.clone(), n)))
        .collect();
    let total = all_nodes.len();
    assert_eq!(total, 17 * SEQUENCE + 17 * CONCURRENCE + 16 * ELEMENTS);

    let plan = [
        Moment::Finished(5),
        Moment::Locked,
        Moment::Finished(50),
        Moment::Rerun,
        Moment::Finished(110),
        Moment::Finished(180),
        Moment::Locked,
        Moment::Finished(250),
        Moment::Rerun,
        Moment::Finished(320),
        Moment::Finished(390),
    ];
    let lock = t.join("var/run/engine.lock");
    let started = Instant::now();
    let mut kills: Vec<Kill> = Vec::new();
    for moment in plan {
        let logs_at_spawn = log_lengths(&t, &flows);
        let mut engine = t.spawn_engine(&["--workers", "4"]);
        let pid = engine.pid().to_string();
        match moment {
            Moment::Locked => wait_for("the new engine to hold the lock", DEADLINE, || {
                engine.exited()
                    || fs::read_to_string(&lock)
                        .is_ok_and(|s| s.lines().next() == Some(pid.as_str()))
            }),
            Moment::Rerun => {
                // The flows that had a node to recover (running in their
                // progress).
                let recovering: BTreeSet<&String> = kills
                    .last()
                    .map(|k| k.running.iter().map(|(exid, _)| exid).collect())
                    .unwrap_or_default();
                wait_for("a recovered node to start again", DEADLINE, || {
                    engine.exited()
                        || if recovering.is_empty() {
                            fs::read_to_string(&lock)
                                .is_ok_and(|s| s.lines().next() == Some(pid.as_str()))
                        } else {
                            recovering
                                .iter()
                                .any(|id| rerun_since(&t, id, logs_at_spawn[*id]))
                        }
                })
            }
            Moment::Finished(n) => wait_for(&format!("{n} finished task nodes"), DEADLINE, || {
                engine.exited() || finished_nodes(&t) >= n
            }),
        }
        if engine.exited() {
            let (code, err) = engine.wait(DEADLINE);
            panic!("the engine exited on its own ({code:?}): {err}");
        }
        engine.signal(Signal::SIGKILL);
        let (code, _) = engine.wait(DEADLINE);
        assert_eq!(code, None, "the engine was killed by a signal");
        let ledger_len = ledger(&t, false).len();
        let kill = Kill {
            moment,
            ledger_len,
            ..durable_state(&t, &flows)
        };
        eprintln!(
            "kill -9 #{} at {moment:?}: ledger {ledger_len} lines, {} task nodes durably \
             finished, {} queued or running, {} records",
            kills.len() + 1,
            kill.done.len(),
            kill.running.len(),
            kill.records,
        );
        let records = kill.records;
        kills.push(kill);
        if records == FLOWS {
            break;
        }
    }
    let live_kills = kills.iter().filter(|k| k.records < FLOWS).count();
    assert!(
        live_kills >= 5,
        "only {live_kills} kills happened while flows were running"
    );
    // The moments are measured in finished nodes: these rise from kill to
    // kill (a `Locked` or `Rerun` kill comes before much can finish).
    for w in kills.windows(2) {
        assert!(
            w[0].done.is_subset(&w[1].done),
            "a node durably finished at {:?} is not at {:?}",
            w[0].moment,
            w[1].moment
        );
    }

    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "4"])
        .wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "the draining engine failed: {err}");
    eprintln!(
        "{} kills and the drain took {:?}",
        kills.len(),
        started.elapsed()
    );

    // Every tasker of every killed engine is gone: start-up killed them.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_of(t.path());
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "tasker processes of killed engines still run: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // One record per flow, completed, and nothing anywhere else.
    let expected: Vec<String> = flows.iter().map(|f| format!("{}.json", f.id)).collect();
    assert_eq!(t.list("var/spool/done"), expected);
    assert!(
        t.list("var/spool/failed").is_empty(),
        "{:?}",
        t.list("var/spool/failed")
    );
    assert!(
        t.list("var/spool/rejected").is_empty(),
        "{:?}",
        t.list("var/spool/rejected")
    );
    assert!(
        t.list("var/spool/run").is_empty(),
        "{:?}",
        t.list("var/spool/run")
    );
    assert!(t.list("var/spool/in").is_empty());

    // The ledger: one line per finished tasker run.
    let runs = ledger(&t, true);
    let mut by_node: BTreeMap<&Key, Vec<(usize, u32)>> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        assert!(
            all_nodes.contains(&r.key),
            "the ledger names an unknown node {:?}",
            r.key
        );
        by_node.entry(&r.key).or_default().push((i, r.attempt));
    }
    let missing: Vec<&Key> = all_nodes
        .iter()
        .filter(|k| !by_node.contains_key(k))
        .collect();
    assert!(missing.is_empty(), "task nodes that never ran: {missing:?}");

    let mut problems = Vec::new();
    let (mut rerun_nodes, mut silent_reruns) = (0, 0);
    for f in &flows {
        let rec = t.must_record(&f.id);
        let id = f.id.as_str();
        assert_eq!(rec["state"], "completed", "{id}: {rec:#}");
        assert_eq!(rec["id"], id);
        assert_eq!(rec["exid"], id);
        assert_eq!(rec["payload"], f.expected(), "{id}: the final payload");
        assert!(
            rec["errors"].as_array().is_some_and(|e| e.is_empty()),
            "{id}: {rec:#}"
        );

        let points = t.points(id);
        let names = names_of(&points);
        let count = |n: &str| names.iter().filter(|x| **x == n).count();
        assert_eq!(count("completed"), 1, "{id}: {names:?}");
        assert_eq!(count("failed") + count("aborted"), 0, "{id}: {names:?}");
        assert_eq!(points.last().unwrap()["nid"], "0", "{id}: {names:?}");
        assert_eq!(points.last().unwrap()["point"], "completed", "{id}");

        let nodes = rec["nodes"].as_array().expect("a flow record's nodes");
        let recorded: BTreeMap<String, &Value> = nodes
            .iter()
            .map(|n| (n["nid"].as_str().unwrap().to_string(), n))
            .collect();
        assert_eq!(
            recorded.keys().cloned().collect::<Vec<_>>(),
            {
                let mut v = f.task_nids();
                v.sort();
                v
            },
            "{id}: the record's nodes"
        );

        for nid in f.task_nids() {
            let key = (f.id.clone(), nid.clone());
            let ran = &by_node[&key];
            let node = recorded[&nid];
            assert_eq!(node["state"], "completed", "{id} {nid}: {node}");
            let attempts = node["attempts"].as_u64().expect("attempts") as u32;

            // Kills at which the node was running (so may run again), and
            // the first at which its end was durable.
            let running_at: Vec<usize> = (0..kills.len())
                .filter(|j| kills[*j].running.contains(&key))
                .collect();
            let first_done = kills.iter().position(|k| k.done.contains(&key));
            let who = format!(
                "{id} {nid}: ledger (line, attempt) {ran:?}, running at kills {running_at:?}, \
                 durably done from kill {first_done:?}, record attempts {attempts}; \
                 its points: {}",
                node_points(&points, &nid)
            );

            // Only a node running at a kill runs again, once per kill at
            // most.
            if ran.len() > 1 + running_at.len() {
                problems.push(format!("ran {} times: {who}", ran.len()));
            }
            // A node durably finished at a kill never runs after it: all
            // its ledger lines were written before that kill.
            if let Some(j) = first_done {
                if ran.iter().any(|(line, _)| *line >= kills[j].ledger_len) {
                    problems.push(format!("ran after its durable end: {who}"));
                }
                let running_before = running_at.iter().filter(|r| **r < j).count();
                if ran.len() > 1 + running_before {
                    problems.push(format!("finished before a kill, ran again: {who}"));
                }
            }
            // A node whose reply was journaled at a kill never runs after
            // it (the next start completes it from the journal).
            let replied_at = kills.iter().position(|k| k.replied.contains(&key));
            if let Some(j) = replied_at {
                if ran.iter().any(|(line, _)| *line >= kills[j].ledger_len) {
                    problems.push(format!("replied before kill {j}, ran again: {who}"));
                }
            }
            // Each run after a crash is a new attempt; the record's is the
            // last.
            let distinct: BTreeSet<u32> = ran.iter().map(|r| r.1).collect();
            if distinct.len() != ran.len() {
                problems.push(format!("an attempt number ran twice: {who}"));
            }
            if ran.len() > 1 {
                rerun_nodes += 1;
                silent_reruns += (ran.len() - 1).saturating_sub(recovered_of(&points, &nid));
            }
            if !distinct.contains(&attempts) || distinct.iter().any(|a| *a > attempts) {
                problems.push(format!("the record's attempt is not the last run: {who}"));
            }

            // `recovered` points only for nodes running at a kill.
            let recovered = recovered_of(&points, &nid);
            if recovered > running_at.len() {
                problems.push(format!("recovered {recovered} times: {who}"));
            }
        }
    }

    let lines = runs.len();
    let nodes_running_at_kills: usize = kills.iter().map(|k| k.running.len()).sum();
    let replied_not_durable: usize = kills
        .iter()
        .map(|k| k.replied.intersection(&k.running).count())
        .sum();
    eprintln!(
        "flows crash test: {FLOWS} flows, {total} task nodes, {} kill -9 ({live_kills} with \
         flows running), {lines} ledger lines: duplicate rate {:.3} ({} extra runs of \
         {rerun_nodes} nodes; {} task nodes were queued or running across the kills); \
         {silent_reruns} extra runs without a `recovered` point; {replied_not_durable} \
         running nodes had replied at a kill",
        kills.len(),
        lines as f64 / total as f64,
        lines - total,
        nodes_running_at_kills,
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// SPEC 10 and 12: a flow killed while its first task node runs, before
/// any node ended: that node was running, so at the next start it is
/// `recovered` and runs again as a new attempt (the flow's start makes the
/// progress naming its first nodes durable before they run, so a restart
/// does not start the flow over as if nothing had run).
#[test]
fn a_flow_killed_before_its_first_progress_recovers_its_running_node() {
    let t = TestRoot::new();
    t.tasker("org", "step", &tasker(STEP));
    // Notes "<nid> <attempt> <pid>" when it starts, waits for
    // `open-<its pid>`, passes its payload through.
    t.tasker(
        "org",
        "gated",
        &format!(
            "#!/bin/sh\nin=$(cat)\necho \"$SPOOLFLOW_NID $SPOOLFLOW_ATTEMPT $$\" >> \"$SPOOLFLOW_ROOT/starts\"\n{}\nprintf '%s\\n' \"$in\"\n",
            wait_file("open-$$")
        ),
    );
    t.drop_task(
        "g1.json",
        &json!({"domain": "org", "id": "g1",
            "flow": {"sequence": [{"task": "gated"}, {"task": "step"}]},
            "payload": {"trail": "g1"}})
        .to_string(),
    );
    let starts = || -> Vec<Vec<String>> {
        fs::read_to_string(t.join("starts"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').map(str::to_string).collect())
            .collect()
    };

    let engine = t.spawn_engine(&["--workers", "2"]);
    wait_for("0_0 to start", DEADLINE, || starts().len() == 1);
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    // The scenario: the flow is in run/, its first node running in its
    // progress, no node ended.
    let progress = t.flow_progress("g1").expect("g1's progress");
    assert_eq!(progress["nodes"]["0_0"]["state"], "running", "{progress:#}");
    assert!(progress["nodes"].get("0_1").is_none(), "{progress:#}");
    let old: i32 = starts()[0][2].parse().unwrap();

    let engine = t.spawn_engine(&["--drain", "--workers", "2"]);
    wait_for("0_0 to start again", DEADLINE, || starts().len() == 2);
    wait_for("the old run to be killed", DEADLINE, || process_gone(old));
    let new = starts()[1].clone();
    fs::write(t.join(&format!("open-{}", new[2])), "").unwrap();
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");

    let rec = t.must_record("g1");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"trail": "g1/0_1"}));
    let points = t.points("g1");
    let seen = node_points(&points, "0_0");
    assert_eq!(new[0], "0_0");
    assert_eq!(
        recovered_of(&points, "0_0"),
        1,
        "0_0 was running at the kill: it is `recovered` (SPEC 10); its points: {seen}"
    );
    assert_eq!(
        new[1], "2",
        "the run after the crash is a new attempt (SPEC 10); 0_0's points: {seen}"
    );
    let node = rec["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["nid"] == "0_0"))
        .expect("node 0_0 in the record")
        .clone();
    assert_eq!(node["attempts"], 2, "{node}; 0_0's points: {seen}");
}

/// A flow file in `in/<domain>/` is copied into `run/` (it does not name
/// its domain) and removed from `in/` once the copy is durable. The
/// engine dies in between (a failed fsync of `run/` stops it): the next
/// start runs the flow once from `run/`, and takes the copy left in `in/`
/// for what it is, the claim's own original, not a duplicate.
#[test]
fn a_claim_cut_short_leaves_no_duplicate_behind() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "fx",
        "#!/bin/sh\ncat\necho ran >> \"$SPOOLFLOW_ROOT/effects\"\n",
    );
    t.drop_task_in("org", "cut.json", r#"{"id":"cut","flow":{"task":"fx"}}"#);
    // The claim's temporary's fsync, then the fsync of run/ itself.
    let engine = t.spawn_engine_with_fault(Some("fsync:2:eio@/spool/run"), &["--drain"]);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(1), "{err}");
    assert!(t.join("var/spool/run/cut.json").exists(), "{err}");
    assert!(t.join("var/spool/in/org/cut.json").exists(), "{err}");
    t.run_drain(1);
    assert_eq!(t.must_record("cut")["state"], "completed");
    assert_eq!(fs::read_to_string(t.join("effects")).unwrap(), "ran\n");
    assert!(
        t.list("var/spool/rejected").is_empty(),
        "{:?}",
        t.list("var/spool/rejected")
    );
    assert!(!t.join("var/spool/in/org/cut.json").exists());
}

/// Finishing such a claim at the next start removes the original only
/// once `run/` is durable (the copy may be one the dead engine never made
/// durable): a failed fsync of `run/` then stops the start, the original
/// kept in `in/`.
#[test]
fn a_claim_cut_short_is_finished_only_once_run_is_durable() {
    let t = TestRoot::new();
    t.tasker("org", "fx", "#!/bin/sh\ncat\n");
    // A standalone task (a flow's recovery writes its progress into run/
    // at the start, which the fault below would count too).
    t.drop_task_in("org", "cut.json", r#"{"id":"cut","tasker":"fx"}"#);
    let engine = t.spawn_engine_with_fault(Some("fsync:2:eio@/spool/run"), &["--drain"]);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(1), "{err}");
    assert!(t.join("var/spool/run/cut.json").exists(), "{err}");
    // The next start's first fsync of run/ is the one before the original
    // goes: it fails.
    let engine = t.spawn_engine_with_fault(Some("fsync:1:eio@/var/spool/run"), &["--drain"]);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(1), "the start stops on the failed fsync:\n{err}");
    assert!(
        t.join("var/spool/in/org/cut.json").exists(),
        "the original stays while run/ is not known durable:\n{err}"
    );
    t.run_drain(1);
    assert_eq!(t.must_record("cut")["state"], "completed");
    assert!(!t.join("var/spool/in/org/cut.json").exists());
    assert!(t.list("var/spool/rejected").is_empty());
}

/// The same file dropped again while its task waits in `run/` (claimed
/// from `in/<domain>/`, the engine stopped) is a duplicate at the next
/// start, rejected: it is newer than the claim's copy.
#[test]
fn the_same_file_dropped_again_while_its_task_waits_is_a_duplicate() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "held",
        &format!("#!/bin/sh\ncat\n{}\n", wait_file("go")),
    );
    let body = r#"{"id":"second","tasker":"held"}"#;
    t.drop_task_in("org", "first.json", r#"{"id":"first","tasker":"held"}"#);
    let engine = t.spawn_engine(&["--workers", "1", "--grace", "0s"]);
    wait_for("first to start", DEADLINE, || {
        t.point_names("first").iter().any(|n| n == "started")
    });
    t.drop_task_in("org", "second.json", body);
    wait_for("second claimed", DEADLINE, || {
        t.join("var/spool/run/second.json").exists()
            && !t.join("var/spool/in/org/second.json").exists()
    });
    engine.signal(Signal::SIGTERM);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    // Dropped again, identical, while the engine is down.
    t.drop_task_in("org", "second.json", body);
    fs::write(t.join("go"), "").unwrap();
    t.run_drain(1);
    assert_eq!(t.must_record("second")["state"], "completed");
    let why = t
        .rejected_reason("second.json")
        .expect("the second drop rejected");
    assert!(why.contains("duplicate id"), "{why}");
}

/// A flow node whose tasker replied, but whose end was not yet in the
/// flow's durable progress when the engine was killed (the progress write
/// held by the debug fault), is completed at the next start from the
/// reply the engine had journaled: its tasker does not run again, and the
/// flow goes on from its reply.
#[test]
fn a_flow_node_that_replied_before_a_kill_9_does_not_run_again() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "step",
        &format!(
            "#!/bin/sh\nin=$(tr -d ' \\n')\n{STEP}\necho \"$SPOOLFLOW_NID $SPOOLFLOW_ATTEMPT\" >> \"$SPOOLFLOW_ROOT/runs\"\necho \"$out\"\n"
        ),
    );
    t.drop_task(
        "r1.json",
        &json!({"domain": "org", "id": "r1",
            "flow": {"sequence": [{"task": "step"}, {"task": "step"}]},
            "payload": {"trail": "r1"}})
        .to_string(),
    );
    let runs = || fs::read_to_string(t.join("runs")).unwrap_or_default();
    // The flow's start is its journal's first write, 0_0's end the second.
    let engine = t.spawn_engine_with_fault(
        Some("write:2:slow@/spool/run/r1.journal"),
        &["--workers", "1"],
    );
    wait_for("0_0's reply to be journaled", DEADLINE, || {
        fs::read_to_string(t.join("var/run/replies.log"))
            .is_ok_and(|j| j.contains("\"exid\":\"r1\"") && j.contains("\"nid\":\"0_0\""))
    });
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    // The scenario: 0_0 ran and replied, its end is not in the progress.
    assert_eq!(runs(), "0_0 1\n");
    let progress = t.flow_progress("r1").expect("r1's progress");
    assert_eq!(progress["nodes"]["0_0"]["state"], "running", "{progress:#}");

    t.run_drain(1);
    let rec = t.must_record("r1");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"trail": "r1/0_0/0_1"}), "{rec:#}");
    assert_eq!(runs(), "0_0 1\n0_1 1\n", "0_0 ran once, 0_1 after it");
    let points = t.points("r1");
    assert_eq!(
        recovered_of(&points, "0_0"),
        0,
        "0_0 had replied: it is not recovered; its points: {}",
        node_points(&points, "0_0")
    );
    let node = rec["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["nid"] == "0_0"))
        .expect("node 0_0 in the record")
        .clone();
    assert_eq!(node["attempts"], 1, "{node}");
    assert!(
        !t.join("var/run/replies.old.log").exists(),
        "no old journal file is left"
    );
}

/// A node fails in a `concurrence` while its sibling runs: the sibling is
/// asked to stop, and the engine is killed (`kill -9`) before the sibling
/// has ended. At the next start the flow's record lists the sibling
/// `aborted`, with the attempt it ran, as it does after a graceful stop.
#[test]
fn a_sibling_stopped_by_a_failure_is_in_the_record_after_a_kill_9() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "stay",
        "#!/bin/sh\ncat >/dev/null\ntrap 'echo term > \"$SPOOLFLOW_ROOT/term\"' TERM\necho up > \"$SPOOLFLOW_ROOT/up\"\nwhile :; do sleep 0.05; done\n",
    );
    t.tasker(
        "org",
        "boom",
        &format!("#!/bin/sh\ncat >/dev/null\n{}\nexit 3\n", wait_file("up")),
    );
    t.drop_task(
        "sib.json",
        &json!({"domain": "org", "id": "sib",
            "flow": {"concurrence": [{"task": "stay"}, {"task": "boom"}]}})
        .to_string(),
    );
    let engine = t.spawn_engine(&["--workers", "2"]);
    wait_for("the sibling to be asked to stop", DEADLINE, || {
        t.join("term").exists()
    });
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    // The scenario: the failure is durable, the sibling's end is not (its
    // progress says it was stopped, not how it ran).
    let progress = t.flow_progress("sib").expect("sib's progress");
    assert_eq!(progress["nodes"]["0_1"]["state"], "failed", "{progress:#}");
    assert_eq!(progress["nodes"]["0_0"]["kind"], "aborted", "{progress:#}");
    assert!(progress["nodes"]["0_0"]["task"].is_null(), "{progress:#}");

    t.run_drain(1);
    let rec = t.must_record("sib");
    assert_eq!(rec["state"], "failed", "{rec:#}");
    let states: BTreeMap<String, (String, u64)> = rec["nodes"]
        .as_array()
        .expect("the record's nodes")
        .iter()
        .map(|n| {
            let nid = n["nid"].as_str().unwrap_or("?").to_string();
            let st = n["state"].as_str().unwrap_or("?").to_string();
            (nid, (st, n["attempts"].as_u64().unwrap_or(0)))
        })
        .collect();
    assert_eq!(
        states.get("0_0"),
        Some(&("aborted".to_string(), 1)),
        "the stopped sibling ran once; nodes: {states:?}"
    );
    assert_eq!(states.get("0_1"), Some(&("failed".to_string(), 1)));
}

/// Two nodes of a flow replied before a `kill -9`, their ends not yet in
/// the progress; one reply is in the journal's old file (the journal had
/// just turned over). The next start completes both from the journal,
/// each reply kept until the progress write holding its own node's end
/// is durable: killed again once the old file is gone, the flow runs
/// neither node again.
#[test]
fn replies_completed_at_a_start_are_kept_until_their_own_end_is_durable() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "step",
        &format!(
            "#!/bin/sh\nin=$(tr -d ' \\n')\n{BRANCH}\n[ \"$SPOOLFLOW_NID\" = 0_0 ] && {}\necho \"$SPOOLFLOW_NID $SPOOLFLOW_ATTEMPT\" >> \"$SPOOLFLOW_ROOT/runs\"\necho \"$out\"\n",
            wait_file("go")
        ),
    );
    // Earlier replies (their records long durable) fill the journal to
    // just under its 256 KiB: r1's first reply turns it over.
    let mut pad = String::new();
    let mut i = 0;
    while pad.len() < 256 * 1024 - 300 {
        pad.push_str(&format!(
            "{{\"exid\":\"old{i}\",\"nid\":\"0\",\"attempt\":1,\"created\":\"2026-01-01T00:00:00.000001Z\",\"payload\":{{}}}}\n"
        ));
        i += 1;
    }
    while pad.len() < 256 * 1024 - 50 {
        pad.push('\n');
    }
    fs::write(t.join("var/run/replies.log"), pad).unwrap();
    t.drop_task(
        "r1.json",
        &json!({"domain": "org", "id": "r1",
            "flow": {"concurrence": [{"task": "step"}, {"task": "step"}]},
            "payload": {}})
        .to_string(),
    );
    let runs = || fs::read_to_string(t.join("runs")).unwrap_or_default();
    let journaled = |nid: &str| {
        ["var/run/replies.log", "var/run/replies.old.log"]
            .iter()
            .any(|f| {
                fs::read_to_string(t.join(f)).is_ok_and(|j| {
                    j.contains("\"exid\":\"r1\"") && j.contains(&format!("\"nid\":\"{nid}\""))
                })
            })
    };
    // The flow's start is its journal's first write; the second (0_1's
    // end) is held while 0_0 replies too.
    let engine = t.spawn_engine_with_fault(
        Some("write:2:slow@/spool/run/r1.journal"),
        &["--workers", "2"],
    );
    wait_for("0_1's reply journaled", DEADLINE, || journaled("0_1"));
    fs::write(t.join("go"), "").unwrap();
    wait_for("0_0's reply journaled", DEADLINE, || journaled("0_0"));
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    let progress = t.flow_progress("r1").expect("r1's progress");
    assert_eq!(progress["nodes"]["0_0"]["state"], "running", "{progress:#}");
    assert_eq!(progress["nodes"]["0_1"]["state"], "running", "{progress:#}");
    assert!(
        t.join("var/run/replies.old.log").exists(),
        "the journal turned over"
    );

    // Both completed from the journal; the write covering the second
    // node's end is held, and the engine killed once the old file goes.
    let engine = t.spawn_engine_with_fault(
        Some("write:1:slow@/spool/run/r1.journal"),
        &["--workers", "2"],
    );
    wait_for("the old file's removal", DEADLINE, || {
        !t.join("var/run/replies.old.log").exists()
    });
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");

    t.run_drain(2);
    let rec = t.must_record("r1");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    let r = runs();
    assert_eq!(r.lines().count(), 2, "each node ran once; runs: {r:?}");
}

/// A flow's task node replies `uncompleted` with a new payload: the flow
/// keeps it in its progress before the node runs again, so that after a
/// `kill -9` the node runs from that payload, not from its input again.
#[test]
fn an_uncompleted_flow_node_goes_on_from_its_payload_after_a_kill_9() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "again",
        &format!(
            "#!/bin/sh\nin=$(tr -d ' \\n')\necho \"$in\" >> \"$SPOOLFLOW_ROOT/inputs\"\ncase \"$in\" in\n*'\"n\":1'*) {} ; echo '{{\"done\":1}}' ;;\n*) echo '{{\"point\":\"uncompleted\",\"payload\":{{\"n\":1}}}}' ;;\nesac\n",
            wait_file("go")
        ),
    );
    t.drop_task(
        "u1.json",
        &json!({"domain": "org", "id": "u1",
            "flow": {"sequence": [{"task": "again"}]},
            "payload": {"x": 0}})
        .to_string(),
    );
    let inputs = || -> Vec<String> {
        fs::read_to_string(t.join("inputs"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let engine = t.spawn_engine(&["--workers", "1"]);
    wait_for("the run after `uncompleted`", DEADLINE, || {
        inputs().len() == 2
    });
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    let progress = t.flow_progress("u1").expect("u1's progress");
    assert_eq!(
        progress["nodes"]["0_0"]["again"],
        json!({"n": 1}),
        "{progress:#}"
    );

    let engine = t.spawn_engine(&["--drain", "--workers", "1"]);
    wait_for("the run after the restart", DEADLINE, || {
        inputs().len() == 3
    });
    fs::write(t.join("go"), "").unwrap();
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    let seen = inputs();
    assert!(!seen[0].contains("\"n\":1"), "{seen:?}");
    assert!(
        seen[1..].iter().all(|i| i.contains("\"n\":1")),
        "after the restart the node went on from its uncompleted payload: {seen:?}"
    );
    let rec = t.must_record("u1");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"done": 1}), "{rec:#}");
}
