//! SPEC 12: flows. A flow is one task file with a tree of nodes instead of
//! a tasker: its task nodes run real taskers (Python behind `sh`, so that
//! they can read and edit the JSON payload), the engine runs the rest
//! (`sequence`, `concurrence`, `if`, `set`, `each`, `sleep`, stored
//! flows). What the tests check is what the taskers wrote under the root
//! (a ledger of their runs, their pids), the points log, and the one
//! record the flow leaves. Waits are bounded by `DEADLINE`; taskers that
//! must be held open wait on gate files (themselves bounded at ~20 s).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::common::*;

// ------------------------------------------------------------------ taskers

/// The taskers of these tests, all in domain `org` (so that flows of
/// `org` and of `org.example` find them up the branch).
mod taskers {
    use crate::common::TestRoot;

    /// Runs before every Python tasker's body: reads the payload into `p`,
    /// defines small helpers, and appends one line to
    /// `$SPOOLFLOW_ROOT/ledger`: `<ID> <EXID> <NID> <TASKEE> <pid> <ATTEMPT>`
    /// (one short write in append mode). The tasker is `exec`ed by `sh`, so
    /// its pid is the process the engine started (its group's leader).
    const PRELUDE: &str = r#"import json, os, sys, time
env = os.environ
root = env["SPOOLFLOW_ROOT"]
nid = env.get("SPOOLFLOW_NID", "<unset>")
exid = env.get("SPOOLFLOW_EXID", "<unset>")
taskee = env.get("SPOOLFLOW_TASKEE", "<unset>")

def path(name):
    return os.path.join(root, name)

def log(name, line):
    with open(path(name), "a") as f:
        f.write(line + "\n")

def touch(name):
    open(path(name), "a").close()

def lines(name):
    try:
        with open(path(name)) as f:
            return [l for l in f.read().split("\n") if l]
    except FileNotFoundError:
        return []

def wait_file(*names):
    # At most ~20 s, so that a test that fails early leaves nothing behind.
    for _ in range(400):
        if any(os.path.exists(path(n)) for n in names):
            return
        time.sleep(0.05)

raw = sys.stdin.read()
p = json.loads(raw) if raw.strip() else {}
log("ledger", " ".join([
    env.get("SPOOLFLOW_ID", "<unset>"), exid, nid, taskee, str(os.getpid()),
    env.get("SPOOLFLOW_ATTEMPT", "<unset>"),
]))
"#;

    /// Replies with the (edited) payload.
    const EPILOGUE: &str = "\nprint(json.dumps(p))\n";

    /// A Python tasker `tsk/<domain>/<name>/` whose `body` edits `p`, the
    /// payload (or exits on its own). `/usr/bin/python3` when there is one
    /// (a version manager's shim on PATH costs ~100 ms a start).
    pub fn py(t: &TestRoot, domain: &str, name: &str, body: &str) {
        let config = serde_json::json!({
            "cmd": "PY=/usr/bin/python3; [ -x \"$PY\" ] || PY=python3; exec \"$PY\" -S run.py"
        })
        .to_string();
        let source = format!("{PRELUDE}{body}{EPILOGUE}");
        t.tasker_dir(domain, name, &config, &[("run.py", &source)]);
    }

    /// `mark` appends its nid to `trail`; `stamp` sets `at_<nid>`; `inc`
    /// adds 1 to `n`; `double` doubles `n`; `fail` exits 1 (a `user`
    /// error, never retried) after a line on stderr; `held` waits for
    /// `open-<exid>` or `open-<its pid>`, then marks.
    pub fn common(t: &TestRoot) {
        py(
            t,
            "org",
            "mark",
            "p.setdefault(\"trail\", []).append(nid)\n",
        );
        py(t, "org", "stamp", "p[\"at_\" + nid] = True\n");
        py(t, "org", "inc", "p[\"n\"] = p.get(\"n\", 0) + 1\n");
        py(t, "org", "double", "p[\"n\"] = p[\"n\"] * 2\n");
        py(
            t,
            "org",
            "fail",
            r#"p["poison"] = True
sys.stderr.write("fail said no at " + nid + "\n")
sys.exit(1)
"#,
        );
        py(
            t,
            "org",
            "held",
            r#"wait_file("open-" + exid, "open-" + str(os.getpid()))
p.setdefault("trail", []).append(nid)
"#,
        );
    }

    /// `hang` starts a grandchild (`sleep 30`, pid appended to
    /// `grandchildren`), notes its nid in `hung-<exid>`, then waits for a
    /// gate nobody opens. SIGTERM ends both (default action).
    pub fn hang(t: &TestRoot) {
        py(
            t,
            "org",
            "hang",
            r#"import subprocess
child = subprocess.Popen(["sleep", "30"])
log("grandchildren", str(child.pid))
log("hung-" + exid, nid)
wait_file("never-" + exid)
"#,
        );
    }

    /// `ritem` (plain `sh`, fast): replies `{"item":"r<N>"}` for the
    /// integer `item` of its input.
    pub fn ritem(t: &TestRoot) {
        t.tasker(
            "org",
            "ritem",
            "#!/bin/sh\ntr -d ' \\n' | sed -n 's/.*\"item\":\\([0-9][0-9]*\\).*/{\"item\":\"r\\1\"}/p'\n",
        );
    }

    /// `busy` (plain `sh`): appends `start <ns>`, then `end <ns>` to
    /// `$SPOOLFLOW_ROOT/workers` once two have started (a gate, up to
    /// 30 s: the first two hold each other open, so two at once is
    /// reached whatever the load); replies `{"busy": NID}`.
    pub fn busy(t: &TestRoot) {
        t.tasker(
            "org",
            "busy",
            r#"#!/bin/sh
cat >/dev/null
echo "start $(date +%s%N) $SPOOLFLOW_ID $SPOOLFLOW_NID" >> "$SPOOLFLOW_ROOT/workers"
i=0; while [ "$(grep -c '^start' "$SPOOLFLOW_ROOT/workers")" -lt 2 ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done
echo "end $(date +%s%N) $SPOOLFLOW_ID $SPOOLFLOW_NID" >> "$SPOOLFLOW_ROOT/workers"
echo "{\"busy\":\"$SPOOLFLOW_NID\"}"
"#,
        );
    }
}

// ------------------------------------------------------------------ helpers

/// One run of a Python tasker, from the ledger.
#[derive(Debug, Clone)]
struct Run {
    id: String,
    exid: String,
    nid: String,
    taskee: String,
    pid: i32,
    attempt: String,
}

/// Every run of a Python tasker so far, in the order they started.
fn ledger(t: &TestRoot) -> Vec<Run> {
    fs::read_to_string(t.join("ledger"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            assert_eq!(w.len(), 6, "torn ledger line {l:?}");
            Run {
                id: w[0].into(),
                exid: w[1].into(),
                nid: w[2].into(),
                taskee: w[3].into(),
                pid: w[4].parse().expect("a pid"),
                attempt: w[5].into(),
            }
        })
        .collect()
}

/// The runs of flow `id`, in order.
fn runs_of(t: &TestRoot, id: &str) -> Vec<Run> {
    ledger(t).into_iter().filter(|r| r.exid == id).collect()
}

/// Whether a node of flow `id` is sleeping, as its durable progress says.
fn sleeping(t: &TestRoot, id: &str) -> bool {
    t.flow_progress(id).is_some_and(|p| {
        p["nodes"]
            .as_object()
            .is_some_and(|nodes| nodes.values().any(|n| n["state"] == "sleeping"))
    })
}

/// The nids the taskers of flow `id` ran at, in order.
fn nids_run(t: &TestRoot, id: &str) -> Vec<String> {
    runs_of(t, id).into_iter().map(|r| r.nid).collect()
}

/// Lines of a file under the root (empty when absent).
fn lines_of(t: &TestRoot, name: &str) -> Vec<String> {
    fs::read_to_string(t.join(name))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The task file of a flow of domain `org`.
fn flow_file(id: &str, flow: Value, payload: Value) -> String {
    json!({"domain": "org", "id": id, "flow": flow, "payload": payload}).to_string()
}

/// Drops a flow of domain `org` as `in/<id>.json`.
fn drop_flow(t: &TestRoot, id: &str, flow: Value, payload: Value) {
    t.drop_task(&format!("{id}.json"), &flow_file(id, flow, payload));
}

/// Writes the stored flow `tsk/<dir>/flows/<name>.json`.
fn stored_flow(t: &TestRoot, dir: &str, name: &str, flow: Value) {
    let d = t.join(&format!("tsk/{dir}/flows"));
    fs::create_dir_all(&d).unwrap();
    let tmp = d.join(format!(".{name}.tmp"));
    fs::write(&tmp, flow.to_string()).unwrap();
    fs::rename(&tmp, d.join(format!("{name}.json"))).unwrap();
}

/// Drops a cancel request `var/spool/cancel/<name>` the safe way.
fn drop_cancel(t: &TestRoot, name: &str, content: &str) {
    let dir = t.join("var/spool/cancel");
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
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

/// Kills a `spoolflow run` with SIGKILL and waits for it.
fn kill_9(engine: EngineProcess) {
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
}

fn at(v: &Value) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}")))
        .expect("a timestamp is RFC 3339")
}

/// The values of every `"task"` key of a tree, depth first (an object's
/// keys in their order, sorted).
fn tasks_of(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, x) in o {
                    if k == "task" {
                        if let Some(s) = x.as_str() {
                            out.push(s.to_string());
                        }
                    }
                    walk(x, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// Whether `key` is a key of any object in `v`.
fn has_key(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(o) => o.iter().any(|(k, x)| k == key || has_key(x, key)),
        Value::Array(a) => a.iter().any(|x| has_key(x, key)),
        _ => false,
    }
}

/// The most intervals open at once (an interval ending when another
/// starts does not overlap it).
fn max_overlap<T: Ord + Copy>(intervals: &[(T, T)]) -> usize {
    let mut ev: Vec<(T, i32)> = Vec::new();
    for (s, e) in intervals {
        ev.push((*s, 1));
        ev.push((*e, -1));
    }
    ev.sort();
    let (mut inside, mut max) = (0i32, 0i32);
    for (_, d) in ev {
        inside += d;
        max = max.max(inside);
    }
    max as usize
}

/// What every flow record has (SPEC 12): the ids, `tasker` and `taskee`
/// null, the tree, `errors` and `nodes` arrays, each node entry complete.
fn assert_flow_record(rec: &Value, id: &str) {
    assert_eq!(rec["id"], id, "{rec:#}");
    assert_eq!(rec["exid"], id, "{rec:#}");
    assert!(rec["tasker"].is_null(), "{rec:#}");
    assert!(rec["taskee"].is_null(), "{rec:#}");
    assert!(
        rec["flow"].is_object(),
        "a flow's record keeps its tree: {rec:#}"
    );
    assert!(rec["errors"].is_array(), "{rec:#}");
    let nodes = rec["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("a flow's record has nodes: {rec:#}"));
    for n in nodes {
        assert!(n["nid"].is_string(), "{n}");
        assert!(n["taskee"].is_string(), "{n}");
        assert!(n["state"].is_string(), "{n}");
        assert!(n["attempts"].as_u64().is_some_and(|a| a >= 1), "{n}");
        assert!(at(&n["started_at"]) <= at(&n["ended_at"]), "{n}");
    }
}

/// The record of a completed flow, checked.
fn assert_completed(t: &TestRoot, id: &str) -> Value {
    let rec = t.must_record(id);
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert!(rec["error"].is_null(), "{rec:#}");
    assert!(t.join(&format!("var/spool/done/{id}.json")).exists());
    assert!(!t.join(&format!("var/spool/run/{id}.json")).exists());
    assert_flow_record(&rec, id);
    rec
}

/// The record of a flow that failed (`kind`), checked; returns its reason.
fn assert_failed(t: &TestRoot, id: &str, kind: &str) -> (Value, String) {
    let rec = t.must_record(id);
    assert_eq!(rec["state"], "failed", "{rec:#}");
    assert_eq!(rec["error"]["kind"], kind, "{rec:#}");
    assert!(t.join(&format!("var/spool/failed/{id}.json")).exists());
    assert!(!t.join(&format!("var/spool/run/{id}.json")).exists());
    assert_flow_record(&rec, id);
    let reason = rec["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("a failed record has a reason: {rec:#}"))
        .to_string();
    (rec, reason)
}

/// The `nodes` entry of `nid`.
fn node<'a>(rec: &'a Value, nid: &str) -> &'a Value {
    rec["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["nid"] == nid))
        .unwrap_or_else(|| panic!("no node {nid} in {:#}", rec["nodes"]))
}

/// The nids of the record's `nodes` entries.
fn node_nids(rec: &Value) -> BTreeSet<String> {
    rec["nodes"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .map(|n| n["nid"].as_str().expect("a node's nid").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn set_of(nids: &[&str]) -> BTreeSet<String> {
    nids.iter().map(|s| s.to_string()).collect()
}

/// Every point of flow `id` carries the flow's id and exid and a nid of
/// the tree; taskers started at exactly `task_nids`; the last point is the
/// flow's own final point (`last`, nid `0`).
fn assert_points_tagged(t: &TestRoot, id: &str, task_nids: &[&str], last: &str) {
    let points = t.points(id);
    assert!(!points.is_empty(), "{id} has no points");
    for p in &points {
        assert_eq!(p["id"], id, "{p}");
        assert_eq!(p["exid"], id, "{p}");
        let nid = p["nid"]
            .as_str()
            .unwrap_or_else(|| panic!("a point without a nid: {p}"));
        assert!(nid == "0" || nid.starts_with("0_"), "{p}");
    }
    let started: BTreeSet<String> = points
        .iter()
        .filter(|p| p["point"] == "started" && !p["pid"].is_null())
        .map(|p| p["nid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        started,
        set_of(task_nids),
        "the nids of {id}'s started points: {:#?}",
        names_of(&points)
    );
    let final_point = points.last().unwrap();
    assert_eq!(final_point["point"], last, "{final_point}");
    assert_eq!(final_point["nid"], "0", "{final_point}");
}

// ------------------------------------------------------------------ basics

/// A sequence passes each child's output to the next; `set` sets and
/// (with null) removes keys; taskers see the flow's id as ID and EXID and
/// their node's nid; the record has one `nodes` entry per task node.
#[test]
fn a_sequence_passes_each_output_to_the_next() {
    let t = TestRoot::new();
    taskers::common(&t);
    drop_flow(
        &t,
        "f1",
        json!({"sequence": [
            {"task": "mark"},
            {"task": "inc"},
            {"task": "double"},
            {"set": {"k": 1, "gone": null, "obj": {"a": [1, 2]}}},
            {"task": "mark"}
        ]}),
        json!({"n": 1, "gone": true, "kept": "yes"}),
    );
    t.run_drain(2);

    let rec = assert_completed(&t, "f1");
    assert_eq!(
        rec["payload"],
        json!({"n": 4, "k": 1, "obj": {"a": [1, 2]}, "kept": "yes", "trail": ["0_0", "0_4"]}),
        "(1 + 1) * 2, set applied after double, mark saw mark's trail"
    );
    assert_eq!(rec["errors"], json!([]));
    assert_eq!(rec["domain"], "org");
    assert_eq!(tasks_of(&rec["flow"]), ["mark", "inc", "double", "mark"]);

    let nids = ["0_0", "0_1", "0_2", "0_4"];
    assert_eq!(node_nids(&rec), set_of(&nids), "{:#}", rec["nodes"]);
    for (nid, taskee) in nids.iter().zip(["mark", "inc", "double", "mark"]) {
        let n = node(&rec, nid);
        assert_eq!(n["taskee"], taskee, "{n}");
        assert_eq!(n["state"], "completed", "{n}");
        assert_eq!(n["attempts"], 1, "{n}");
    }
    for w in nids.windows(2) {
        let (a, b) = (node(&rec, w[0]), node(&rec, w[1]));
        assert!(
            at(&a["ended_at"]) <= at(&b["started_at"]),
            "{} ran before {} ended: {a} {b}",
            w[1],
            w[0]
        );
    }

    let runs = ledger(&t);
    assert_eq!(
        runs.iter().map(|r| r.nid.as_str()).collect::<Vec<_>>(),
        nids
    );
    for r in &runs {
        assert_eq!(r.id, "f1", "SPOOLFLOW_ID of {r:?}");
        assert_eq!(r.exid, "f1", "SPOOLFLOW_EXID of {r:?}");
        assert_eq!(r.attempt, "1", "{r:?}");
    }
    assert_eq!(
        runs.iter().map(|r| r.taskee.as_str()).collect::<Vec<_>>(),
        ["mark", "inc", "double", "mark"]
    );
    assert_points_tagged(&t, "f1", &nids, "completed");
    assert!(t.list("var/spool/run").is_empty());
    assert!(t.list("var/spool/rejected").is_empty());
}

/// A flow dropped into `in/<domain>/` takes its domain from there; a
/// tree that is one task node runs it at nid `0`.
#[test]
fn a_flow_in_a_domain_spool_with_a_lone_task_node() {
    let t = TestRoot::new();
    taskers::common(&t);
    t.drop_task_in(
        "org",
        "g1.json",
        &json!({"flow": {"task": "stamp"}, "payload": {"x": 1}}).to_string(),
    );
    t.run_drain(2);
    let rec = assert_completed(&t, "g1");
    assert_eq!(rec["domain"], "org");
    assert_eq!(rec["payload"], json!({"x": 1, "at_0": true}));
    assert_eq!(node_nids(&rec), set_of(&["0"]));
    assert_eq!(node(&rec, "0")["taskee"], "stamp");
    assert_eq!(nids_run(&t, "g1"), ["0"]);
    assert_points_tagged(&t, "g1", &["0"], "completed");
}

// ------------------------------------------------------------------ stored flows

/// `"flow": NAME` runs a stored flow found up the domain's branch, then in
/// `tsk/any/flows/`, never in a sibling; `{ "flow": NAME }` nodes are
/// inlined; the tree is resolved at the claim, so editing or removing a
/// stored flow later changes nothing for a flow already running.
#[test]
fn a_stored_flow_runs_by_name_resolved_once_at_the_claim() {
    let t = TestRoot::new();
    taskers::common(&t);
    stored_flow(
        &t,
        "org",
        "main",
        json!({"sequence": [{"task": "held"}, {"flow": "tail"}]}),
    );
    // Shadowed by org's main (the branch comes first).
    stored_flow(&t, "any", "main", json!({"set": {"wrong": "any/main"}}));
    stored_flow(
        &t,
        "any",
        "tail",
        json!({"sequence": [{"task": "inc"}, {"flow": "last"}]}),
    );
    stored_flow(&t, "org.example", "last", json!({"task": "mark"}));
    // A sibling's stored flow of the same name is never reached.
    stored_flow(
        &t,
        "org.other",
        "tail",
        json!({"set": {"wrong": "sibling"}}),
    );
    t.drop_task(
        "s1.json",
        r#"{"domain":"org.example","flow":"main","id":"s1","payload":{"n":1}}"#,
    );

    while_draining(&t, 2, || {
        wait_for("the held node to run", DEADLINE, || {
            nids_run(&t, "s1").contains(&"0_0".to_string())
        });
        // Claimed and running: change what its names would resolve to now.
        stored_flow(&t, "any", "tail", json!({"set": {"wrong": "edited"}}));
        fs::remove_file(t.join("tsk/org.example/flows/last.json")).unwrap();
        fs::write(t.join("open-s1"), "").unwrap();
    });

    let rec = assert_completed(&t, "s1");
    assert_eq!(rec["domain"], "org.example");
    assert_eq!(
        rec["payload"],
        json!({"n": 2, "trail": ["0_0", "0_1_1"]}),
        "the tree as resolved at the claim ran"
    );
    assert!(
        !has_key(&rec["flow"], "flow"),
        "the record keeps the resolved tree, no stored name left: {:#}",
        rec["flow"]
    );
    assert_eq!(tasks_of(&rec["flow"]), ["held", "inc", "mark"]);
    assert_eq!(nids_run(&t, "s1"), ["0_0", "0_1_0", "0_1_1"]);
    assert_eq!(node_nids(&rec), set_of(&["0_0", "0_1_0", "0_1_1"]));
    assert_points_tagged(&t, "s1", &["0_0", "0_1_0", "0_1_1"], "completed");
}

/// A stored flow name that resolves to nothing (also a sibling's, also
/// nested), a stored flow that includes itself (directly or through
/// another), and a name that is no name reject the task file with the
/// reason; the same stored flow used twice is no cycle.
#[test]
fn stored_flow_names_that_resolve_to_nothing_or_include_themselves_are_rejected() {
    let t = TestRoot::new();
    taskers::common(&t);
    stored_flow(
        &t,
        "org",
        "loop",
        json!({"sequence": [{"task": "mark"}, {"flow": "loop"}]}),
    );
    stored_flow(
        &t,
        "org",
        "ping",
        json!({"sequence": [{"task": "mark"}, {"flow": "pong"}]}),
    );
    stored_flow(
        &t,
        "any",
        "pong",
        json!({"concurrence": [{"task": "stamp"}, {"flow": "ping"}]}),
    );
    stored_flow(&t, "org.other", "sib", json!({"task": "mark"}));
    stored_flow(&t, "org", "ok", json!({"task": "stamp"}));

    let bad = [
        (
            "unknown.json",
            r#"{"domain":"org.example","flow":"nosuch"}"#.to_string(),
            vec!["unknown stored flow", "nosuch"],
        ),
        (
            "nested.json",
            r#"{"domain":"org.example","flow":{"sequence":[{"task":"mark"},{"flow":"nosuch"}]}}"#
                .to_string(),
            vec!["unknown stored flow", "nosuch"],
        ),
        (
            "sibling.json",
            r#"{"domain":"org.example","flow":"sib"}"#.to_string(),
            vec!["unknown stored flow", "sib"],
        ),
        (
            "self.json",
            r#"{"domain":"org","flow":"loop"}"#.to_string(),
            vec!["includes itself", "loop"],
        ),
        (
            "cycle.json",
            r#"{"domain":"org","flow":{"sequence":[{"flow":"ping"}]}}"#.to_string(),
            vec!["includes itself"],
        ),
        (
            "badname.json",
            r#"{"domain":"org","flow":"../org/flows/ok"}"#.to_string(),
            vec![],
        ),
    ];
    for (name, body, _) in &bad {
        t.drop_task(name, body);
    }
    t.drop_task(
        "good.json",
        r#"{"domain":"org","flow":{"sequence":[{"flow":"ok"},{"flow":"ok"}]}}"#,
    );
    t.run_drain(2);

    for (name, body, words) in &bad {
        let reason = t.reason(name);
        for w in words {
            assert!(reason.contains(w), "{name}: {reason:?} lacks {w:?}");
        }
        assert_eq!(
            fs::read_to_string(t.join(&format!("var/spool/rejected/{name}"))).unwrap(),
            *body,
            "{name} keeps its bytes"
        );
        let stem = name.trim_end_matches(".json");
        assert!(t.record(stem).is_none(), "{name} has a record");
    }
    let rec = assert_completed(&t, "good");
    assert_eq!(rec["payload"], json!({"at_0_0": true, "at_0_1": true}));
    assert!(
        ledger(&t).iter().all(|r| r.exid == "good"),
        "a rejected flow ran a tasker: {:?}",
        ledger(&t)
    );
    assert_eq!(nids_run(&t, "good"), ["0_0", "0_1"]);
    assert!(t.list("var/spool/run").is_empty());
    assert!(t.list("var/spool/failed").is_empty());
}

// ------------------------------------------------------------------ limits and shape

/// A chain of `levels` nodes: `if "true"` nodes, each holding the next in
/// `then`, the last a `stamp` task (one JSON level per node, far from the
/// parser's own nesting limit).
fn if_chain(levels: usize) -> Value {
    let mut node = json!({"task": "stamp"});
    for _ in 1..levels {
        node = json!({"if": "true", "then": node});
    }
    node
}

/// A sequence of `children` `set` nodes (`children + 1` nodes in all).
fn wide(children: usize) -> Value {
    let sets: Vec<Value> = (0..children).map(|i| json!({"set": {"k": i}})).collect();
    json!({ "sequence": sets })
}

/// Depth 64 and 10 000 nodes run; one more level or node rejects the file
/// with the reason; so do an unknown node key, an `if` that does not
/// compile and other malformed nodes. The engine goes on.
#[test]
fn trees_too_deep_too_big_or_malformed_are_rejected() {
    let t = TestRoot::new();
    taskers::common(&t);
    let bad: Vec<(&str, Value, Vec<&str>)> = vec![
        ("deep65", if_chain(65), vec!["deeper than 64"]),
        ("big", wide(10_000), vec![]),
        (
            "key",
            json!({"sequence": [{"task": "mark", "colour": "red"}]}),
            vec!["unknown key", "colour"],
        ),
        (
            "ifbad",
            json!({"if": "payload.size >", "then": {"task": "mark"}}),
            vec!["compile"],
        ),
        ("twokinds", json!({"task": "mark", "sequence": []}), vec![]),
        (
            "merge",
            json!({"concurrence": [{"task": "mark"}], "merge": "zip"}),
            vec![],
        ),
        (
            "onerror",
            json!({"task": "mark", "on_error": "ignore"}),
            vec![],
        ),
        ("number", json!(42), vec![]),
    ];
    let mut bodies = BTreeMap::new();
    for (id, flow, _) in &bad {
        let body = flow_file(id, flow.clone(), json!({}));
        t.drop_task(&format!("{id}.json"), &body);
        bodies.insert(*id, body);
    }
    drop_flow(&t, "deep64", if_chain(64), json!({}));
    drop_flow(&t, "big10000", wide(9_999), json!({}));
    t.run_drain(2);

    for (id, _, words) in &bad {
        let name = format!("{id}.json");
        let reason = t.reason(&name);
        for w in words {
            assert!(reason.contains(w), "{name}: {reason:?} lacks {w:?}");
        }
        assert_eq!(
            fs::read_to_string(t.join(&format!("var/spool/rejected/{name}"))).unwrap(),
            bodies[id]
        );
        assert!(t.record(id).is_none(), "{id} has a record");
    }
    let big = t.reason("big.json");
    assert!(
        big.contains("10001 nodes") || big.contains("10000"),
        "the reason of a flow of 10 001 nodes: {big:?}"
    );

    // The limits themselves are allowed.
    let deepest = format!("0{}", "_0".repeat(63));
    let rec = assert_completed(&t, "deep64");
    assert_eq!(rec["payload"], json!({ format!("at_{deepest}"): true }));
    assert_eq!(nids_run(&t, "deep64"), std::slice::from_ref(&deepest));
    let rec = assert_completed(&t, "big10000");
    assert_eq!(rec["payload"], json!({"k": 9998}), "the sets ran in order");
    assert_eq!(rec["nodes"], json!([]));
    assert!(
        ledger(&t).iter().all(|r| r.exid == "deep64"),
        "{:?}",
        ledger(&t)
    );
    assert!(t.list("var/spool/run").is_empty());
}

// ------------------------------------------------------------------ if

/// `if` evaluates a Rhai expression over its own input (`then` = `_0`,
/// `else` = `_1`); without `else` a false condition passes the input
/// through.
#[test]
fn if_takes_then_or_else_by_a_rhai_expression_over_its_input() {
    let t = TestRoot::new();
    taskers::common(&t);
    let branchy = json!({
        "if": "payload.size > 1000",
        "then": {"task": "stamp"},
        "else": {"sequence": [{"task": "mark"}]}
    });
    drop_flow(&t, "big", branchy.clone(), json!({"size": 5000}));
    drop_flow(&t, "small", branchy.clone(), json!({"size": 10}));
    drop_flow(&t, "edge", branchy, json!({"size": 1000}));
    drop_flow(
        &t,
        "noelse",
        json!({"if": "payload.size > 1000", "then": {"task": "stamp"}}),
        json!({"size": 3}),
    );
    drop_flow(
        &t,
        "after",
        json!({"sequence": [
            {"set": {"size": 2000}},
            {"if": "payload.size > 1000", "then": {"set": {"seen": "big"}}, "else": {"set": {"seen": "small"}}}
        ]}),
        json!({"size": 1}),
    );
    t.run_drain(4);

    let rec = assert_completed(&t, "big");
    assert_eq!(rec["payload"], json!({"size": 5000, "at_0_0": true}));
    assert_eq!(nids_run(&t, "big"), ["0_0"]);
    for id in ["small", "edge"] {
        let rec = assert_completed(&t, id);
        assert_eq!(rec["payload"]["trail"], json!(["0_1_0"]), "{id}: {rec:#}");
        assert_eq!(nids_run(&t, id), ["0_1_0"], "{id}");
        assert_eq!(node_nids(&rec), set_of(&["0_1_0"]), "{id}");
    }
    let rec = assert_completed(&t, "noelse");
    assert_eq!(rec["payload"], json!({"size": 3}));
    assert_eq!(rec["nodes"], json!([]));
    assert!(nids_run(&t, "noelse").is_empty());
    let rec = assert_completed(&t, "after");
    assert_eq!(
        rec["payload"],
        json!({"size": 2000, "seen": "big"}),
        "the if saw the set's output, not the flow's input"
    );
}

// ------------------------------------------------------------------ concurrence

/// Branch 0: waits until branch 1 has (nearly) replied, then 300 ms more
/// (so that it ends last), and writes its side of every conflict.
const WAITS: &str = r#"wait_file("opened-" + exid)
time.sleep(0.3)
p["x"] = "waits"
p["waits"] = True
p["obj"]["a"] = 1
p["obj"]["shared"] = "waits"
p["arr"] = [1, 2, 3]
p["mix"] = {"deep": True}
p["mix2"] = 5
"#;

/// Branch 1: writes its side, and opens branch 0's gate just before it
/// replies.
const OPENS: &str = r#"p["x"] = "opens"
p["opens"] = True
p["obj"]["b"] = 2
p["obj"]["shared"] = "opens"
p["arr"] = [9]
p["mix"] = 5
p["mix2"] = {"d": 1}
touch("opened-" + exid)
"#;

/// A concurrence merges in branch order, not completion order: `deep` by
/// default (objects key by key, recursively, the later branch winning;
/// anything else replaced), `first`, `last`. Branch 1 ends first in each.
#[test]
fn a_concurrence_merges_in_branch_order_not_completion_order() {
    let t = TestRoot::new();
    taskers::py(&t, "org", "waits", WAITS);
    taskers::py(&t, "org", "opens", OPENS);
    let input = json!({"base": true, "obj": {"keep": 1}});
    let branches = json!([{"task": "waits"}, {"task": "opens"}]);
    drop_flow(
        &t,
        "m-deep",
        json!({ "concurrence": branches.clone() }),
        input.clone(),
    );
    drop_flow(
        &t,
        "m-first",
        json!({"concurrence": branches.clone(), "merge": "first"}),
        input.clone(),
    );
    drop_flow(
        &t,
        "m-last",
        json!({"concurrence": branches, "merge": "last"}),
        input,
    );
    t.run_drain(6);

    let expected = [
        (
            "m-deep",
            json!({
                "base": true, "obj": {"keep": 1, "a": 1, "b": 2, "shared": "opens"},
                "x": "opens", "waits": true, "opens": true,
                "arr": [9], "mix": 5, "mix2": {"d": 1}
            }),
        ),
        (
            "m-first",
            json!({
                "base": true, "obj": {"keep": 1, "a": 1, "shared": "waits"},
                "x": "waits", "waits": true,
                "arr": [1, 2, 3], "mix": {"deep": true}, "mix2": 5
            }),
        ),
        (
            "m-last",
            json!({
                "base": true, "obj": {"keep": 1, "b": 2, "shared": "opens"},
                "x": "opens", "opens": true,
                "arr": [9], "mix": 5, "mix2": {"d": 1}
            }),
        ),
    ];
    for (id, want) in expected {
        let rec = assert_completed(&t, id);
        // The premise: both ran at once, and branch 1 ended first.
        let (b0, b1) = (node(&rec, "0_0"), node(&rec, "0_1"));
        assert!(
            at(&b1["ended_at"]) < at(&b0["ended_at"]),
            "{id}: branch 1 did not end first: {b0} {b1}"
        );
        assert!(
            at(&b0["started_at"]) < at(&b1["ended_at"]),
            "{id}: the branches did not run at once: {b0} {b1}"
        );
        assert_eq!(rec["payload"], want, "{id}");
        assert_eq!(
            nids_run(&t, id).into_iter().collect::<BTreeSet<_>>(),
            set_of(&["0_0", "0_1"])
        );
        assert_points_tagged(&t, id, &["0_0", "0_1"], "completed");
    }
}

/// A sequence holding a concurrence holding `if`s holding a task (and,
/// in one branch, another concurrence): nids follow the positions, the
/// untaken `if`s run nothing, the merged output reaches the next node.
#[test]
fn flows_nest_sequence_concurrence_if_task() {
    let t = TestRoot::new();
    taskers::common(&t);
    taskers::py(&t, "org", "keys", "p[\"seen\"] = sorted(p.keys())\n");
    drop_flow(
        &t,
        "n1",
        json!({"sequence": [
            {"task": "stamp"},
            {"concurrence": [
                {"if": "payload.n > 0", "then": {"task": "stamp"}, "else": {"task": "mark"}},
                {"if": "payload.n < 0", "then": {"task": "mark"}},
                {"if": "payload.n > 0", "then": {"concurrence": [{"task": "stamp"}, {"set": {"deep": true}}]}}
            ]},
            {"task": "keys"}
        ]}),
        json!({"n": 1}),
    );
    t.run_drain(4);

    let rec = assert_completed(&t, "n1");
    let seen = ["at_0_0", "at_0_1_0_0", "at_0_1_2_0_0", "deep", "n"];
    assert_eq!(
        rec["payload"],
        json!({
            "n": 1, "at_0_0": true, "at_0_1_0_0": true, "at_0_1_2_0_0": true,
            "deep": true, "seen": seen
        })
    );
    let nids = ["0_0", "0_1_0_0", "0_1_2_0_0", "0_2"];
    assert_eq!(
        nids_run(&t, "n1").into_iter().collect::<BTreeSet<_>>(),
        set_of(&nids)
    );
    assert!(
        runs_of(&t, "n1").iter().all(|r| r.taskee != "mark"),
        "an untaken branch ran"
    );
    assert_eq!(nids_run(&t, "n1").last().map(String::as_str), Some("0_2"));
    assert_eq!(node_nids(&rec), set_of(&nids));
    assert_points_tagged(&t, "n1", &nids, "completed");
}

// ------------------------------------------------------------------ each

/// Each run sees the node's input with `item` and `index`; outputs are
/// collected into `into` in element order although the runs end in
/// (nearly) reverse order; `concurrency` bounds the runs at once.
#[test]
fn each_collects_outputs_in_element_order_within_its_concurrency() {
    let t = TestRoot::new();
    taskers::common(&t);
    taskers::py(
        &t,
        "org",
        "rev",
        r#"time.sleep((20 - p["index"]) * 0.02)
p["item"] = {
    "i": p["index"], "sq": p["item"] * p["item"], "nid": nid,
    "saw": sorted(k for k in p if k not in ("item", "index")),
}
"#,
    );
    let files: Vec<i64> = (0..20).map(|i| i + 100).collect();
    drop_flow(
        &t,
        "e1",
        json!({"sequence": [
            {"task": "stamp"},
            {"each": "files", "do": {"task": "rev"}, "concurrency": 4, "into": "sums"}
        ]}),
        json!({"files": files, "other": "o"}),
    );
    t.run_drain(8);

    let rec = assert_completed(&t, "e1");
    let sums: Vec<Value> = (0..20)
        .map(|i| {
            json!({
                "i": i, "sq": (i + 100) * (i + 100), "nid": format!("0_1_{i}"),
                "saw": ["at_0_0", "files", "other"]
            })
        })
        .collect();
    assert_eq!(
        rec["payload"],
        json!({"files": files, "other": "o", "at_0_0": true, "sums": sums})
    );
    let run_nids: Vec<String> = (0..20).map(|i| format!("0_1_{i}")).collect();
    let mut want: BTreeSet<String> = run_nids.iter().cloned().collect();
    want.insert("0_0".into());
    assert_eq!(node_nids(&rec), want);

    // The premise: the runs did not end in element order …
    let mut by_end: Vec<(DateTime<FixedOffset>, String)> = run_nids
        .iter()
        .map(|nid| (at(&node(&rec, nid)["ended_at"]), nid.clone()))
        .collect();
    by_end.sort();
    let end_order: Vec<String> = by_end.into_iter().map(|(_, n)| n).collect();
    assert_ne!(end_order, run_nids, "the runs ended in element order");
    // … and ran several at once, never more than 4.
    let intervals: Vec<(DateTime<FixedOffset>, DateTime<FixedOffset>)> = run_nids
        .iter()
        .map(|nid| {
            let n = node(&rec, nid);
            (at(&n["started_at"]), at(&n["ended_at"]))
        })
        .collect();
    let most = max_overlap(&intervals);
    assert!(most <= 4, "{most} runs at once with concurrency 4");
    assert!(most >= 2, "the runs never overlapped: {intervals:?}");
    for r in runs_of(&t, "e1") {
        assert_eq!(r.id, "e1");
    }
}

/// An `each` over 0, 1 and 500 elements; outputs without `item` give
/// null.
#[test]
fn each_over_zero_one_and_five_hundred_elements() {
    let t = TestRoot::new();
    taskers::ritem(&t);
    let each = |into: Option<&str>| {
        let mut e = json!({"each": "xs", "do": {"task": "ritem"}});
        if let Some(k) = into {
            e["into"] = json!(k);
        }
        e
    };
    drop_flow(&t, "e0", each(None), json!({"xs": [], "k": 1}));
    drop_flow(&t, "e0into", each(Some("out")), json!({"xs": []}));
    drop_flow(&t, "e1", each(None), json!({"xs": [7]}));
    let xs: Vec<u64> = (0..500).map(|i| i * 3).collect();
    drop_flow(&t, "e500", each(Some("out")), json!({ "xs": xs }));
    drop_flow(
        &t,
        "enull",
        json!({"each": "xs", "do": {"set": {"item": null}}, "into": "out"}),
        json!({"xs": [1, 2]}),
    );
    let started = Instant::now();
    t.run_drain(4);
    eprintln!(
        "the each flows (500 runs in all) took {:?}",
        started.elapsed()
    );

    let rec = assert_completed(&t, "e0");
    assert_eq!(rec["payload"], json!({"xs": [], "k": 1}));
    assert_eq!(rec["nodes"], json!([]));
    let rec = assert_completed(&t, "e0into");
    assert_eq!(rec["payload"], json!({"xs": [], "out": []}));
    let rec = assert_completed(&t, "e1");
    assert_eq!(
        rec["payload"],
        json!({"xs": ["r7"]}),
        "into defaults to the key"
    );
    assert_eq!(node_nids(&rec), set_of(&["0_0"]));
    let rec = assert_completed(&t, "enull");
    assert_eq!(rec["payload"], json!({"xs": [1, 2], "out": [null, null]}));

    let rec = assert_completed(&t, "e500");
    let out: Vec<String> = xs.iter().map(|x| format!("r{x}")).collect();
    assert_eq!(rec["payload"], json!({"xs": xs, "out": out}));
    let nodes = rec["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 500);
    assert!(nodes.iter().all(|n| n["state"] == "completed"));
    let want: BTreeSet<String> = (0..500).map(|i| format!("0_{i}")).collect();
    assert_eq!(node_nids(&rec), want);
    let started: Vec<Value> = t.points_named("e500", "started");
    assert_eq!(started.len(), 500, "one tasker per element");
}

/// An `each` whose key is missing or not an array, or whose runs would
/// take the flow past 10 000 nodes, fails the flow (`user`) with a reason
/// naming the node; no run starts.
#[test]
fn each_without_an_array_or_beyond_10000_nodes_fails_the_flow() {
    let t = TestRoot::new();
    taskers::common(&t);
    let flow = |key: &str| {
        json!({"sequence": [
            {"task": "stamp"},
            {"each": key, "do": {"task": "mark"}}
        ]})
    };
    drop_flow(&t, "missing", flow("nope"), json!({"files": [1]}));
    drop_flow(&t, "notarray", flow("files"), json!({"files": "a"}));
    let many: Vec<u32> = (0..10_001).collect();
    drop_flow(&t, "toomany", flow("files"), json!({ "files": many }));
    t.run_drain(2);
    for id in ["missing", "notarray", "toomany"] {
        let (rec, reason) = assert_failed(&t, id, "user");
        assert!(
            reason.starts_with("node 0_1: "),
            "{id}: the reason names the each: {reason:?}"
        );
        assert_eq!(rec["error"]["message"], reason.as_str(), "{rec:#}");
        assert_eq!(nids_run(&t, id), ["0_0"], "{id}: only the stamp ran");
        assert_eq!(node_nids(&rec), set_of(&["0_0"]), "{id}");
        assert_points_tagged(&t, id, &["0_0"], "failed");
    }
}

// ------------------------------------------------------------------ errors

/// `on_error: "continue"`: the failing node's input passes through as its
/// output, `{nid, kind, message}` goes to `errors`, the flow completes —
/// for a task node (exit 1, a `failed` reply) and an `each` without its
/// array, in a sequence and in a concurrence.
#[test]
fn on_error_continue_passes_the_input_through_and_records_the_error() {
    let t = TestRoot::new();
    taskers::common(&t);
    taskers::py(
        &t,
        "org",
        "nope",
        r#"print(json.dumps({"point": "failed", "reason": "not today at " + nid}))
sys.exit(0)
"#,
    );
    drop_flow(
        &t,
        "c1",
        json!({"sequence": [
            {"task": "mark"},
            {"task": "fail", "on_error": "continue"},
            {"each": "nope", "do": {"task": "mark"}, "on_error": "continue"},
            {"task": "mark"}
        ]}),
        json!({"n": 1}),
    );
    drop_flow(
        &t,
        "c2",
        json!({"concurrence": [
            {"task": "nope", "on_error": "continue"},
            {"task": "stamp"}
        ]}),
        json!({"n": 1}),
    );
    t.run_drain(4);

    let rec = assert_completed(&t, "c1");
    assert_eq!(
        rec["payload"],
        json!({"n": 1, "trail": ["0_0", "0_3"]}),
        "the failed nodes passed their input through"
    );
    let errors = rec["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(errors[0]["nid"], "0_1", "{errors:#?}");
    assert_eq!(errors[0]["kind"], "user", "{errors:#?}");
    let m = errors[0]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("fail said no at 0_1"),
        "stderr in the message: {m:?}"
    );
    assert_eq!(errors[1]["nid"], "0_2", "{errors:#?}");
    assert_eq!(errors[1]["kind"], "user", "{errors:#?}");
    assert!(errors[1]["message"].is_string(), "{errors:#?}");
    assert_eq!(node(&rec, "0_1")["state"], "failed");
    assert_eq!(
        node(&rec, "0_1")["attempts"],
        1,
        "user errors are not retried"
    );
    assert_eq!(node(&rec, "0_3")["state"], "completed");
    assert_eq!(node_nids(&rec), set_of(&["0_0", "0_1", "0_3"]));
    assert_eq!(nids_run(&t, "c1"), ["0_0", "0_1", "0_3"]);

    let rec = assert_completed(&t, "c2");
    assert_eq!(rec["payload"], json!({"n": 1, "at_0_1": true}));
    let errors = rec["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0]["nid"], "0_0");
    assert_eq!(errors[0]["kind"], "user");
    let m = errors[0]["message"].as_str().unwrap_or_default();
    assert!(m.contains("not today at 0_0"), "{m:?}");
}

/// A task node that fails for good fails the flow: `error.kind` of the
/// node, a reason naming it; later nodes never run.
#[test]
fn a_failing_task_node_fails_the_flow_and_later_nodes_never_run() {
    let t = TestRoot::new();
    taskers::common(&t);
    drop_flow(
        &t,
        "x1",
        json!({"sequence": [{"task": "mark"}, {"task": "fail"}, {"task": "mark"}]}),
        json!({"n": 1}),
    );
    t.run_drain(2);
    let (rec, reason) = assert_failed(&t, "x1", "user");
    assert!(reason.starts_with("node 0_1: "), "{reason:?}");
    assert!(reason.contains("fail said no at 0_1"), "{reason:?}");
    assert_eq!(rec["error"]["message"], reason.as_str());
    assert_eq!(rec["errors"], json!([]));
    assert_eq!(nids_run(&t, "x1"), ["0_0", "0_1"]);
    assert_eq!(node(&rec, "0_0")["state"], "completed");
    assert_eq!(node(&rec, "0_1")["state"], "failed");
    assert_eq!(node(&rec, "0_1")["attempts"], 1);
    assert_eq!(node_nids(&rec), set_of(&["0_0", "0_1"]));
    assert_points_tagged(&t, "x1", &["0_0", "0_1"], "failed");
}

/// A branch of a concurrence fails for good while its siblings run: their
/// process groups are stopped before the record is written, and the node
/// after the concurrence never runs.
#[test]
fn a_failing_branch_stops_its_running_siblings_before_the_record() {
    let t = TestRoot::new();
    taskers::common(&t);
    taskers::hang(&t);
    taskers::py(
        &t,
        "org",
        "fail_late",
        r#"for _ in range(400):
    if len(lines("hung-" + exid)) >= p["hangers"]:
        break
    time.sleep(0.05)
sys.stderr.write("fail_late gives up\n")
sys.exit(1)
"#,
    );
    drop_flow(
        &t,
        "x2",
        json!({"sequence": [
            {"concurrence": [
                {"task": "hang"},
                {"sequence": [{"task": "hang"}]},
                {"task": "fail_late"}
            ]},
            {"task": "mark"}
        ]}),
        json!({"hangers": 2}),
    );
    while_draining(&t, 4, || {
        wait_for("x2's record", DEADLINE, || t.record("x2").is_some());
        // Read at once: the record is written once no tasker of it runs.
        let hangers: Vec<Run> = runs_of(&t, "x2")
            .into_iter()
            .filter(|r| r.taskee == "hang")
            .collect();
        assert_eq!(hangers.len(), 2, "{hangers:?}");
        for r in &hangers {
            assert!(
                process_gone(r.pid),
                "{} (pid {}) still runs after the flow's record",
                r.nid,
                r.pid
            );
        }
    });
    let (rec, reason) = assert_failed(&t, "x2", "user");
    assert!(reason.starts_with("node 0_0_2: "), "{reason:?}");
    assert!(reason.contains("fail_late gives up"), "{reason:?}");
    assert_eq!(
        nids_run(&t, "x2").into_iter().collect::<BTreeSet<_>>(),
        set_of(&["0_0_0", "0_0_1_0", "0_0_2"]),
        "the node after the concurrence never ran"
    );
    for gc in lines_of(&t, "grandchildren") {
        let pid: i32 = gc.parse().unwrap();
        wait_for(&format!("grandchild {pid} to be gone"), DEADLINE, || {
            process_gone(pid)
        });
    }
    assert_points_tagged(&t, "x2", &["0_0_0", "0_0_1_0", "0_0_2"], "failed");
    assert_eq!(node(&rec, "0_0_2")["state"], "failed");
    // The stopped siblings ran: they have their entries, not completed.
    for nid in ["0_0_0", "0_0_1_0"] {
        assert_eq!(
            node(&rec, nid)["state"],
            "aborted",
            "{nid}: {:#}",
            rec["nodes"]
        );
    }
}

/// Task nodes retry and time out as standalone tasks do, with options of
/// their own or the flow's.
#[test]
fn task_nodes_retry_and_time_out_like_standalone_tasks() {
    let t = TestRoot::new();
    taskers::common(&t);
    taskers::hang(&t);
    taskers::py(
        &t,
        "org",
        "flaky",
        r#"if env["SPOOLFLOW_ATTEMPT"] == "1":
    sys.exit(75)
p["flaky"] = env["SPOOLFLOW_ATTEMPT"]
"#,
    );
    drop_flow(
        &t,
        "r1",
        json!({"sequence": [{"task": "flaky", "retries": 2}, {"task": "mark"}]}),
        json!({}),
    );
    // The flow's retries 0 is its nodes' default: the work error is final.
    t.drop_task(
        "r2.json",
        &json!({"domain": "org", "id": "r2", "retries": 0, "flow": {"task": "flaky"}}).to_string(),
    );
    drop_flow(
        &t,
        "r3",
        json!({"sequence": [{"task": "hang", "timeout": "300ms"}, {"task": "mark"}]}),
        json!({}),
    );
    t.run_drain(4);

    let rec = assert_completed(&t, "r1");
    assert_eq!(rec["payload"], json!({"flaky": "2", "trail": ["0_1"]}));
    assert_eq!(node(&rec, "0_0")["attempts"], 2);
    let attempts: Vec<String> = runs_of(&t, "r1")
        .into_iter()
        .filter(|r| r.nid == "0_0")
        .map(|r| r.attempt)
        .collect();
    assert_eq!(attempts, ["1", "2"]);
    let retried = t.points_named("r1", "retried");
    assert_eq!(retried.len(), 1, "{retried:#?}");
    assert_eq!(retried[0]["nid"], "0_0");

    let (_, reason) = assert_failed(&t, "r2", "work");
    assert!(reason.starts_with("node 0: "), "{reason:?}");
    assert_eq!(nids_run(&t, "r2"), ["0"]);

    let (rec, reason) = assert_failed(&t, "r3", "timeout");
    assert!(reason.starts_with("node 0_0: "), "{reason:?}");
    assert_eq!(nids_run(&t, "r3"), ["0_0"]);
    assert_eq!(node_nids(&rec), set_of(&["0_0"]));
}

// ------------------------------------------------------------------ cancel

/// Cancelling a flow stops every running branch (its process group) and
/// aborts the flow; nothing after runs.
#[test]
fn cancelling_a_flow_stops_every_running_branch() {
    let t = TestRoot::new();
    taskers::common(&t);
    taskers::hang(&t);
    drop_flow(
        &t,
        "k1",
        json!({"sequence": [
            {"concurrence": [
                {"task": "hang"},
                {"sequence": [{"task": "hang"}]},
                {"each": "xs", "do": {"task": "hang"}, "concurrency": 2}
            ]},
            {"task": "mark"}
        ]}),
        json!({"xs": [1, 2]}),
    );
    let hung = ["0_0_0", "0_0_1_0", "0_0_2_0", "0_0_2_1"];
    while_draining(&t, 4, || {
        wait_for("the four branches to run", DEADLINE, || {
            lines_of(&t, "hung-k1").len() == 4
        });
        let runs = runs_of(&t, "k1");
        assert_eq!(runs.len(), 4, "{runs:?}");
        for r in &runs {
            assert!(!process_gone(r.pid), "{r:?} is not running");
        }
        let asked = Instant::now();
        drop_cancel(&t, "k1", "enough");
        wait_for("k1's record", DEADLINE, || t.record("k1").is_some());
        for r in &runs {
            assert!(
                process_gone(r.pid),
                "{} (pid {}) still runs after the flow's record",
                r.nid,
                r.pid
            );
        }
        // SIGTERM did it, not the SIGKILL that follows 5 s later.
        assert!(
            asked.elapsed() < Duration::from_secs(4),
            "{:?}",
            asked.elapsed()
        );
    });

    let rec = t.must_record("k1");
    assert_eq!(rec["state"], "aborted", "{rec:#}");
    assert_eq!(rec["error"]["kind"], "aborted", "{rec:#}");
    assert_eq!(rec["reason"], "enough", "{rec:#}");
    assert!(t.join("var/spool/failed/k1.json").exists());
    assert!(!t.join("var/spool/run/k1.json").exists());
    assert_flow_record(&rec, "k1");
    assert_eq!(
        nids_run(&t, "k1").into_iter().collect::<BTreeSet<_>>(),
        set_of(&hung),
        "the node after the concurrence never ran"
    );
    for gc in lines_of(&t, "grandchildren") {
        let pid: i32 = gc.parse().unwrap();
        wait_for(&format!("grandchild {pid} to be gone"), DEADLINE, || {
            process_gone(pid)
        });
    }
    assert_points_tagged(&t, "k1", &hung, "aborted");
    assert!(t.list("var/spool/cancel").is_empty());
    assert!(t.list("var/spool/rejected").is_empty());
    // The stopped nodes ran: each has its entry, aborted.
    for nid in hung {
        assert_eq!(
            node(&rec, nid)["state"],
            "aborted",
            "{nid}: {:#}",
            rec["nodes"]
        );
    }
}

/// A sleeping flow is cancelled at once.
#[test]
fn cancelling_a_sleeping_flow_aborts_it_at_once() {
    let t = TestRoot::new();
    taskers::common(&t);
    drop_flow(
        &t,
        "k2",
        json!({"sequence": [{"task": "stamp"}, {"sleep": "60s"}, {"task": "mark"}]}),
        json!({}),
    );
    while_draining(&t, 2, || {
        wait_for("k2 to sleep", DEADLINE, || {
            nids_run(&t, "k2") == ["0_0"] && sleeping(&t, "k2")
        });
        let asked = Instant::now();
        drop_cancel(&t, "k2", "wake up");
        wait_for("k2's record", DEADLINE, || t.record("k2").is_some());
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{:?}",
            asked.elapsed()
        );
    });
    let rec = t.must_record("k2");
    assert_eq!(rec["state"], "aborted", "{rec:#}");
    assert_eq!(rec["error"]["kind"], "aborted", "{rec:#}");
    assert_eq!(rec["reason"], "wake up", "{rec:#}");
    assert_flow_record(&rec, "k2");
    assert_eq!(nids_run(&t, "k2"), ["0_0"]);
    assert_eq!(node(&rec, "0_0")["state"], "completed");
    assert_points_tagged(&t, "k2", &["0_0"], "aborted");
}

// ------------------------------------------------------------------ workers

/// A flow's task nodes and standalone tasks share `--workers`: with 2,
/// never more than 2 taskers run at once (and 2 do).
#[test]
fn flow_nodes_and_standalone_tasks_share_the_workers() {
    let t = TestRoot::new();
    taskers::busy(&t);
    drop_flow(
        &t,
        "w1",
        json!({"concurrence": [
            {"task": "busy"}, {"task": "busy"}, {"task": "busy"}, {"task": "busy"}
        ]}),
        json!({}),
    );
    for i in 0..3 {
        t.drop_task(&format!("s{i}.json"), r#"{"domain":"org","tasker":"busy"}"#);
    }
    t.run_drain(2);

    let rec = assert_completed(&t, "w1");
    assert_eq!(
        rec["payload"],
        json!({"busy": "0_3"}),
        "the last branch wins the conflict"
    );
    assert_eq!(node_nids(&rec), set_of(&["0_0", "0_1", "0_2", "0_3"]));
    for i in 0..3 {
        let r = t.must_record(&format!("s{i}"));
        assert_eq!(r["state"], "completed", "{r:#}");
        assert_eq!(r["payload"], json!({"busy": "0"}));
    }
    // Replay the ledger: "start|end <ns> <id> <nid>" lines.
    let log = lines_of(&t, "workers");
    let mut open: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut intervals = Vec::new();
    for line in &log {
        let w: Vec<&str> = line.split(' ').collect();
        assert_eq!(w.len(), 4, "bad line {line:?}");
        let ns: i64 = w[1].parse().expect("nanoseconds");
        let k = (w[2].to_string(), w[3].to_string());
        match w[0] {
            "start" => {
                assert!(open.insert(k, ns).is_none(), "{line}: started twice");
            }
            "end" => {
                let s = open.remove(&k).expect("an end after its start");
                intervals.push((s, ns));
            }
            other => panic!("bad line {other:?}"),
        }
    }
    assert!(open.is_empty(), "unfinished: {open:?}");
    assert_eq!(intervals.len(), 7, "{log:#?}");
    let most = max_overlap(&intervals);
    assert_eq!(
        most,
        2,
        "taskers at once with --workers 2:\n{}",
        log.join("\n")
    );
}

// ------------------------------------------------------------------ durability

/// `kill -9` while the second node of a sequence runs: at the next start
/// the first node is not run again, the second is `recovered` and runs
/// again (its old process killed), and the flow completes once.
#[test]
fn kill_9_mid_sequence_resumes_without_rerunning_finished_nodes() {
    let t = TestRoot::new();
    taskers::common(&t);
    drop_flow(
        &t,
        "d1",
        json!({"sequence": [{"task": "mark"}, {"task": "held"}, {"task": "mark"}]}),
        json!({}),
    );
    let engine = t.spawn_engine(&["--workers", "2"]);
    wait_for("the second node to run", DEADLINE, || {
        nids_run(&t, "d1") == ["0_0", "0_1"]
    });
    kill_9(engine);
    assert!(t.record("d1").is_none());
    assert!(t.join("var/spool/run/d1.json").exists());
    let old = runs_of(&t, "d1")[1].pid;
    assert!(!process_gone(old), "0_1's tasker died with the engine");

    // The held node's gate is its pid: the old run never gets it.
    let engine = t.spawn_engine(&["--drain", "--workers", "2"]);
    wait_for("the second node to run again", DEADLINE, || {
        nids_run(&t, "d1").iter().filter(|n| *n == "0_1").count() == 2
    });
    // Well before its own ~20 s bound: the start-up killed it.
    wait_for(
        "the old run of 0_1 to be killed",
        Duration::from_secs(10),
        || process_gone(old),
    );
    let new = runs_of(&t, "d1")
        .into_iter()
        .rfind(|r| r.nid == "0_1")
        .expect("a run of 0_1");
    assert_ne!(new.pid, old);
    fs::write(t.join(&format!("open-{}", new.pid)), "").unwrap();
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");

    let rec = assert_completed(&t, "d1");
    assert!(!t.join("var/spool/failed/d1.json").exists());
    assert_eq!(rec["payload"], json!({"trail": ["0_0", "0_1", "0_2"]}));
    let nids = nids_run(&t, "d1");
    let count = |nid: &str| nids.iter().filter(|n| *n == nid).count();
    assert_eq!(count("0_0"), 1, "the finished node ran again: {nids:?}");
    assert_eq!(count("0_1"), 2, "{nids:?}");
    assert_eq!(count("0_2"), 1, "{nids:?}");
    let recovered = t.points_named("d1", "recovered");
    assert!(
        recovered.iter().any(|p| p["nid"] == "0_1"),
        "{recovered:#?}"
    );
    assert!(
        recovered.iter().all(|p| p["nid"] != "0_0"),
        "{recovered:#?}"
    );
    assert_eq!(node(&rec, "0_0")["attempts"], 1);
    assert_eq!(t.points_named("d1", "completed").len(), 1);
    assert!(t.list("var/spool/run").is_empty());
    // SPEC 10: the run after a crash is a new attempt.
    let attempts: Vec<String> = runs_of(&t, "d1")
        .into_iter()
        .filter(|r| r.nid == "0_1")
        .map(|r| r.attempt)
        .collect();
    assert_eq!(attempts, ["1", "2"], "attempts of the recovered node");
    assert_eq!(node(&rec, "0_1")["attempts"], 2, "{:#}", rec["nodes"]);
}

/// A sleep's deadline is durable: `kill -9` while sleeping, the engine
/// down ~1.5 s, and the flow still ends about 3 s after the sleep began
/// (a restarted sleep would end 4.5 s or more after it).
#[test]
fn a_sleep_keeps_its_deadline_across_kill_9() {
    let t = TestRoot::new();
    taskers::common(&t);
    drop_flow(
        &t,
        "z1",
        json!({"sequence": [{"task": "mark"}, {"sleep": "3s"}, {"task": "mark"}]}),
        json!({}),
    );
    let engine = t.spawn_engine(&["--workers", "2"]);
    wait_for("the flow to sleep", DEADLINE, || {
        nids_run(&t, "z1") == ["0_0"] && sleeping(&t, "z1")
    });
    kill_9(engine);
    assert!(t.record("z1").is_none());
    // The scenario, not a synchronisation: the engine stays down a while.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "2"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");

    let rec = assert_completed(&t, "z1");
    assert_eq!(rec["payload"], json!({"trail": ["0_0", "0_2"]}));
    assert_eq!(nids_run(&t, "z1"), ["0_0", "0_2"]);
    let total = at(&rec["ended_at"]) - at(&rec["created_at"]);
    assert!(
        total >= chrono::Duration::seconds(3),
        "the flow took {total:?}, less than its sleep"
    );
    assert!(
        total < chrono::Duration::milliseconds(4300),
        "the flow took {total:?}: the sleep started over"
    );
    let slept = at(&node(&rec, "0_2")["started_at"]) - at(&node(&rec, "0_0")["ended_at"]);
    assert!(
        slept >= chrono::Duration::milliseconds(2990),
        "0_2 started {slept:?} after 0_0 ended"
    );
    assert!(
        slept < chrono::Duration::milliseconds(4300),
        "0_2 started {slept:?} after 0_0 ended: the sleep started over"
    );
}

// ------------------------------------------------------------------ check and flow

/// `spoolflow check` validates every stored flow: its tree, the names it
/// uses (as a task of that domain would resolve them) and its `if`s.
#[test]
fn check_reports_bad_stored_flows() {
    let t = TestRoot::new();
    taskers::common(&t);
    stored_flow(
        &t,
        "org",
        "good",
        json!({"sequence": [{"task": "mark"}, {"flow": "shared"}]}),
    );
    stored_flow(&t, "any", "shared", json!({"task": "mark"}));
    stored_flow(&t, "org", "typo", json!({"sequense": []}));
    stored_flow(&t, "org", "missing", json!({"flow": "nowhere"}));
    stored_flow(&t, "org", "loop", json!({"flow": "loop"}));
    stored_flow(
        &t,
        "org",
        "badif",
        json!({"if": "payload.x >", "then": {"task": "mark"}}),
    );
    let out = t.cmd().arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    for (name, says) in [
        ("typo", "unknown"),
        ("missing", "nowhere"),
        ("loop", "itself"),
        ("badif", "does not compile"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("tsk/org/flows/{name}.json: ")))
            .unwrap_or_else(|| panic!("no problem reported for {name}:\n{stdout}"));
        assert!(line.contains(says), "{line}");
    }
    assert!(!stdout.contains("good.json"), "{stdout}");
    assert!(!stdout.contains("shared.json"), "{stdout}");
}

/// `spoolflow flow ID` draws the tree with each node's state: from the
/// `run/` file while the flow runs, from the record once it ended.
#[test]
fn the_flow_command_draws_a_running_and_an_ended_flow() {
    let t = TestRoot::new();
    taskers::common(&t);
    drop_flow(
        &t,
        "seen",
        json!({"sequence": [{"task": "mark"}, {"task": "held"}, {"set": {"ok": true}}]}),
        json!({}),
    );
    let engine = t.start_in_process(spoolflow::Options {
        workers: 2,
        ..spoolflow::Options::default()
    });
    wait_for("the held node to run", DEADLINE, || {
        t.flow_progress("seen")
            .is_some_and(|p| p["nodes"]["0_0"]["state"] == "done")
            && lines_of(&t, "ledger").iter().any(|l| l.contains(" 0_1 "))
    });
    let draw = |t: &TestRoot| {
        let out = t.cmd().args(["flow", "seen"]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let running = draw(&t);
    assert!(running.starts_with("flow seen (running)"), "{running}");
    assert!(running.contains("0_0 task mark  [done]"), "{running}");
    assert!(running.contains("0_1 task held  [running]"), "{running}");
    assert!(
        running.contains("0_2 set {\"ok\":true}  [waiting]"),
        "{running}"
    );
    fs::write(t.join("open-seen"), "").unwrap();
    wait_for("the record", DEADLINE, || t.record("seen").is_some());
    engine.stop();
    let ended = draw(&t);
    assert!(ended.starts_with("flow seen (completed)"), "{ended}");
    assert!(
        ended.contains("0_1 task held  [completed] held, 1 attempt"),
        "{ended}"
    );
    let json = t.cmd().args(["flow", "seen", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["state"], "completed");
    assert_eq!(v["nodes"]["0_0"]["state"], "completed");
    let missing = t.cmd().args(["flow", "nope"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(3));
}

/// A flow whose `if` does not compile is rejected with a reason that says
/// it is the flow's, as every flow rejection does.
#[test]
fn an_if_that_does_not_compile_is_rejected_as_the_flows() {
    let t = TestRoot::new();
    taskers::common(&t);
    drop_flow(
        &t,
        "badif",
        json!({"if": "payload.x >", "then": {"task": "mark"}}),
        json!({}),
    );
    t.run_drain(1);
    let why = t.rejected_reason("badif.json").expect("rejected");
    assert!(why.starts_with("flow: "), "{why}");
    assert!(why.contains("does not compile"), "{why}");
}
