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

mod errors;
mod nodes;
mod running;
mod shape;

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

/// The record of a cancelled flow (`reason`, the cancel request's),
/// checked; it is in `failed/`, its `run/` file gone.
fn assert_cancelled(t: &TestRoot, id: &str, reason: &str) -> Value {
    let rec = t.must_cancelled_record(id, reason);
    assert_flow_record(&rec, id);
    rec
}

/// The `nodes` entry of `nid`.
fn node<'a>(rec: &'a Value, nid: &str) -> &'a Value {
    rec["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["nid"] == nid))
        .unwrap_or_else(|| panic!("no node {nid} in {:#}", rec["nodes"]))
}

/// Each of `nids` has its `nodes` entry, `aborted` (a stopped node).
fn assert_aborted(rec: &Value, nids: &[&str]) {
    for nid in nids {
        assert_eq!(
            node(rec, nid)["state"],
            "aborted",
            "{nid}: {:#}",
            rec["nodes"]
        );
    }
}

/// The grandchildren the taskers listed in `grandchildren` are gone.
fn wait_grandchildren_gone(t: &TestRoot) {
    for gc in t.lines_of("grandchildren") {
        let pid: i32 = gc.parse().unwrap();
        wait_for(&format!("grandchild {pid} to be gone"), DEADLINE, || {
            process_gone(pid)
        });
    }
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
