//! The crash test proper: 50 flows through repeated `kill -9` of the
//! engine at chosen moments, then every node's runs checked against
//! what was durable at each kill.

use super::*;

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

// ------------------------------------------------------------------ the test

/// When the engines are killed: soon after a start (with recovery and
/// intake under way, or recovered runs in flight), and at rising counts
/// of finished task nodes.
const PLAN: [Moment; 11] = [
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

    let started = Instant::now();
    let kills = kill_at_moments(&t, &flows);
    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "4"])
        .wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "the draining engine failed: {err}");
    eprintln!(
        "{} kills and the drain took {:?}",
        kills.len(),
        started.elapsed()
    );
    assert_taskers_gone(t.path());
    assert_one_completed_record_each(&t, &flows);

    // The ledger: one line per finished tasker run.
    let runs = ledger(&t, true);
    let mut by_node: BTreeMap<Key, Vec<(usize, u32)>> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        assert!(
            all_nodes.contains(&r.key),
            "the ledger names an unknown node {:?}",
            r.key
        );
        by_node
            .entry(r.key.clone())
            .or_default()
            .push((i, r.attempt));
    }
    let missing: Vec<&Key> = all_nodes
        .iter()
        .filter(|k| !by_node.contains_key(k))
        .collect();
    assert!(missing.is_empty(), "task nodes that never ran: {missing:?}");

    let mut check = Check {
        kills: &kills,
        by_node: &by_node,
        problems: Vec::new(),
        rerun_nodes: 0,
        silent_reruns: 0,
    };
    for f in &flows {
        check.flow(&t, f);
    }
    report(&kills, runs.len(), total, &check);
    assert!(
        check.problems.is_empty(),
        "{} problems:\n{}",
        check.problems.len(),
        check.problems.join("\n")
    );
}

/// Starts an engine for each moment of [`PLAN`] and kills it with SIGKILL
/// at that moment (stopping early once every flow has its record);
/// returns what the files said after each kill.
fn kill_at_moments(t: &TestRoot, flows: &[FlowCase]) -> Vec<Kill> {
    let mut kills: Vec<Kill> = Vec::new();
    for moment in PLAN {
        let logs_at_spawn = log_lengths(t, flows);
        let mut engine = t.spawn_engine(&["--workers", "4"]);
        wait_for_moment(t, &mut engine, moment, kills.last(), &logs_at_spawn);
        let kill = kill_9(t, flows, engine, moment);
        eprintln!(
            "kill -9 #{} at {moment:?}: ledger {} lines, {} task nodes durably \
             finished, {} queued or running, {} records",
            kills.len() + 1,
            kill.ledger_len,
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
    kills
}

/// Waits until `engine` reaches `moment` (or exits).
fn wait_for_moment(
    t: &TestRoot,
    engine: &mut EngineProcess,
    moment: Moment,
    last_kill: Option<&Kill>,
    logs_at_spawn: &BTreeMap<String, usize>,
) {
    let lock = t.join("var/run/engine.lock");
    let pid = engine.pid().to_string();
    let locked = || fs::read_to_string(&lock).is_ok_and(|s| s.lines().next() == Some(pid.as_str()));
    match moment {
        Moment::Locked => wait_for("the new engine to hold the lock", DEADLINE, || {
            engine.exited() || locked()
        }),
        Moment::Rerun => {
            // The flows that had a node to recover (running in their
            // progress).
            let recovering: BTreeSet<&String> = last_kill
                .map(|k| k.running.iter().map(|(exid, _)| exid).collect())
                .unwrap_or_default();
            wait_for("a recovered node to start again", DEADLINE, || {
                engine.exited()
                    || if recovering.is_empty() {
                        locked()
                    } else {
                        recovering
                            .iter()
                            .any(|id| rerun_since(t, id, logs_at_spawn[*id]))
                    }
            })
        }
        Moment::Finished(n) => wait_for(&format!("{n} finished task nodes"), DEADLINE, || {
            engine.exited() || finished_nodes(t) >= n
        }),
    }
}

/// Kills `engine` (which must still run) with SIGKILL and reads what the
/// files say once it is dead.
fn kill_9(t: &TestRoot, flows: &[FlowCase], mut engine: EngineProcess, moment: Moment) -> Kill {
    if engine.exited() {
        let (code, err) = engine.wait(DEADLINE);
        panic!("the engine exited on its own ({code:?}): {err}");
    }
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    Kill {
        moment,
        ledger_len: ledger(t, false).len(),
        ..durable_state(t, flows)
    }
}

/// One record per flow, completed, and nothing anywhere else.
fn assert_one_completed_record_each(t: &TestRoot, flows: &[FlowCase]) {
    let expected: Vec<String> = flows.iter().map(|f| format!("{}.json", f.id)).collect();
    assert_eq!(t.list("var/spool/done"), expected);
    for dir in ["failed", "rejected", "run", "in"] {
        let left = t.list(&format!("var/spool/{dir}"));
        assert!(left.is_empty(), "{dir}/: {left:?}");
    }
}

/// The checks of every flow's record and every node's runs against the
/// kills, gathered so that one run of the test names every problem.
struct Check<'a> {
    kills: &'a [Kill],
    /// Each node's runs: (ledger line, attempt).
    by_node: &'a BTreeMap<Key, Vec<(usize, u32)>>,
    problems: Vec<String>,
    rerun_nodes: usize,
    silent_reruns: usize,
}

impl Check<'_> {
    /// The flow's record and points, then each of its task nodes.
    fn flow(&mut self, t: &TestRoot, f: &FlowCase) {
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
        let mut nids = f.task_nids();
        nids.sort();
        assert_eq!(
            recorded.keys().cloned().collect::<Vec<_>>(),
            nids,
            "{id}: the record's nodes"
        );
        for nid in f.task_nids() {
            self.node(&f.id, &nid, recorded[&nid], &points);
        }
    }

    /// One task node: its runs in the ledger against the kills, its
    /// record entry and its `recovered` points.
    fn node(&mut self, id: &str, nid: &str, node: &Value, points: &[Value]) {
        let key = (id.to_string(), nid.to_string());
        let ran = &self.by_node[&key];
        let kills = self.kills;
        assert_eq!(node["state"], "completed", "{id} {nid}: {node}");
        let attempts = node["attempts"].as_u64().expect("attempts") as u32;

        // Kills at which the node was running (so may run again), and the
        // first at which its end was durable.
        let running_at: Vec<usize> = (0..kills.len())
            .filter(|j| kills[*j].running.contains(&key))
            .collect();
        let first_done = kills.iter().position(|k| k.done.contains(&key));
        let who = format!(
            "{id} {nid}: ledger (line, attempt) {ran:?}, running at kills {running_at:?}, \
             durably done from kill {first_done:?}, record attempts {attempts}; \
             its points: {}",
            node_points(points, nid)
        );
        let mut problem = |what: String| self.problems.push(format!("{what}: {who}"));

        // Only a node running at a kill runs again, once per kill at most.
        if ran.len() > 1 + running_at.len() {
            problem(format!("ran {} times", ran.len()));
        }
        // A node durably finished at a kill never runs after it: all its
        // ledger lines were written before that kill.
        if let Some(j) = first_done {
            if ran.iter().any(|(line, _)| *line >= kills[j].ledger_len) {
                problem("ran after its durable end".into());
            }
            let running_before = running_at.iter().filter(|r| **r < j).count();
            if ran.len() > 1 + running_before {
                problem("finished before a kill, ran again".into());
            }
        }
        // A node whose reply was journaled at a kill never runs after it
        // (the next start completes it from the journal).
        if let Some(j) = kills.iter().position(|k| k.replied.contains(&key)) {
            if ran.iter().any(|(line, _)| *line >= kills[j].ledger_len) {
                problem(format!("replied before kill {j}, ran again"));
            }
        }
        // Each run after a crash is a new attempt; the record's is the last.
        let distinct: BTreeSet<u32> = ran.iter().map(|r| r.1).collect();
        if distinct.len() != ran.len() {
            problem("an attempt number ran twice".into());
        }
        if !distinct.contains(&attempts) || distinct.iter().any(|a| *a > attempts) {
            problem("the record's attempt is not the last run".into());
        }
        // `recovered` points only for nodes running at a kill.
        let recovered = recovered_of(points, nid);
        if recovered > running_at.len() {
            problem(format!("recovered {recovered} times"));
        }
        if ran.len() > 1 {
            self.rerun_nodes += 1;
            self.silent_reruns += (ran.len() - 1).saturating_sub(recovered);
        }
    }
}

/// The test's figures, on stderr.
fn report(kills: &[Kill], lines: usize, total: usize, check: &Check<'_>) {
    let live_kills = kills.iter().filter(|k| k.records < FLOWS).count();
    let nodes_running_at_kills: usize = kills.iter().map(|k| k.running.len()).sum();
    let replied_not_durable: usize = kills
        .iter()
        .map(|k| k.replied.intersection(&k.running).count())
        .sum();
    eprintln!(
        "flows crash test: {FLOWS} flows, {total} task nodes, {} kill -9 ({live_kills} with \
         flows running), {lines} ledger lines: duplicate rate {:.3} ({} extra runs of {} \
         nodes; {nodes_running_at_kills} task nodes were queued or running across the \
         kills); {} extra runs without a `recovered` point; {replied_not_durable} running \
         nodes had replied at a kill",
        kills.len(),
        lines as f64 / total as f64,
        lines - total,
        check.rerun_nodes,
        check.silent_reruns,
    );
}
