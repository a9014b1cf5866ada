//! Flows against standalone tasks: the per-node overhead of a flow. The
//! same `cat` tasker runs as N task nodes of one flow (a `sequence`, one
//! node at a time, against N standalone tasks with one worker; an `each`
//! over N elements, against N standalone tasks with the same workers),
//! each flow and its standalone run alternated for R rounds, best of each.
//! The standalone tasks carry the payloads the flow's nodes get: a run of
//! an `each` sees the `each`'s input (the whole array) with `item` and
//! `index` set, so each standalone task of that row carries the array too.

use super::*;

/// One row of the flows table.
pub struct FlowRow {
    pub what: String,
    pub nodes: usize,
    pub workers: usize,
    pub flow: Run,
    pub standalone: Run,
}

/// A flow with `n` task nodes, `workers` at a time, against `n`
/// standalone tasks.
#[derive(Clone, Copy)]
pub enum Shape {
    /// `{"sequence": [{"task": "cat"}, …]}`: one node at a time.
    Sequence,
    /// `{"each": "xs", "do": {"task": "cat"}}` over `n` elements.
    Each,
}

impl Shape {
    fn tree(self, n: usize) -> serde_json::Value {
        match self {
            Shape::Sequence => {
                serde_json::json!({ "sequence": vec![serde_json::json!({"task": "cat"}); n] })
            }
            Shape::Each => serde_json::json!({"each": "xs", "do": {"task": "cat"}}),
        }
    }

    fn payload(self, n: usize) -> serde_json::Value {
        match self {
            Shape::Sequence => serde_json::json!({"n": 0}),
            Shape::Each => serde_json::json!({ "xs": (0..n).collect::<Vec<_>>() }),
        }
    }

    /// The payload task node `i` of the flow gets.
    fn node_payload(self, n: usize, i: usize) -> serde_json::Value {
        let mut p = self.payload(n);
        if let Shape::Each = self {
            p["item"] = i.into();
            p["index"] = i.into();
        }
        p
    }

    fn name(self, n: usize) -> String {
        match self {
            Shape::Sequence => format!("a `sequence` of {n} task nodes"),
            Shape::Each => format!("an `each` over {n} elements"),
        }
    }
}

/// Best of `rounds` alternated runs of the flow and of the standalone
/// tasks.
pub fn compare(
    shape: Shape,
    n: usize,
    workers: usize,
    rounds: usize,
    keep: &mut Vec<BenchRoot>,
) -> BenchResult<FlowRow> {
    let (mut flows, mut standalones) = (Vec::new(), Vec::new());
    for r in 1..=rounds {
        eprintln!(
            "flows round {r}/{rounds}: {}, then {n} standalone tasks, {workers} at a time…",
            shape.name(n)
        );
        flows.push(flow_run(shape, n, workers, keep)?);
        standalones.push(standalone_run(shape, n, workers, keep)?);
    }
    let best = |runs: Vec<Run>| {
        runs.into_iter()
            .max_by(|a, b| a.tasks_per_s.total_cmp(&b.tasks_per_s))
            .expect("at least one round")
    };
    Ok(FlowRow {
        what: shape.name(n),
        nodes: n,
        workers,
        flow: best(flows),
        standalone: best(standalones),
    })
}

/// One flow of `n` task nodes, dropped before the engine starts, run
/// with `drain`; its record must say `completed`.
fn flow_run(shape: Shape, n: usize, workers: usize, keep: &mut Vec<BenchRoot>) -> BenchResult<Run> {
    let br = BenchRoot::new()?;
    let task = serde_json::json!({
        "domain": "bench",
        "id": "flow",
        "flow": shape.tree(n),
        "payload": shape.payload(n),
    });
    let dir = br.root.spool_in();
    let tmp = dir.join(".flow.tmp");
    fs::write(&tmp, task.to_string()).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, dir.join("flow.json")).map_err(|e| format!("rename: {e}"))?;
    reset_peak();
    let a = mark();
    let rx = spawn_engine(br.root.clone(), options(workers, true), None);
    join_engine(&rx, Duration::from_secs(120 + n as u64 / 20))?;
    let b = mark();
    let peak = peak_mib();
    let record = fs::read_to_string(br.root.done().join("flow.json")).map_err(|e| {
        let failed = fs::read_to_string(br.root.failed().join("flow.json")).unwrap_or_default();
        format!(
            "{}: no record in done/ ({e}); failed/: {failed}",
            shape.name(n)
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&record).map_err(|e| e.to_string())?;
    let ran = v["nodes"].as_array().map_or(0, Vec::len);
    if v["state"] != "completed" || ran != n {
        return Err(format!(
            "{}: {} with {ran} task nodes run",
            shape.name(n),
            v["state"]
        ));
    }
    keep.push(br);
    Ok(Run::new(n, &a, &b, peak))
}

/// `n` standalone tasks with the payloads of the flow's nodes, dropped
/// before the engine starts, run with `drain`.
fn standalone_run(
    shape: Shape,
    n: usize,
    workers: usize,
    keep: &mut Vec<BenchRoot>,
) -> BenchResult<Run> {
    let br = BenchRoot::new()?;
    let dir = br.root.spool_in();
    for i in 0..n {
        let task = serde_json::json!({
            "domain": "bench",
            "tasker": "cat",
            "payload": shape.node_payload(n, i),
        });
        let tmp = dir.join(format!(".t{i:07}.tmp"));
        fs::write(&tmp, task.to_string()).map_err(|e| format!("write {}: {e}", tmp.display()))?;
        fs::rename(&tmp, dir.join(format!("t{i:07}.json"))).map_err(|e| format!("rename: {e}"))?;
    }
    reset_peak();
    let a = mark();
    let rx = spawn_engine(br.root.clone(), options(workers, true), None);
    join_engine(&rx, Duration::from_secs(120 + n as u64 / 20))?;
    let b = mark();
    let peak = peak_mib();
    br.verify_done(n, "standalone tasks of the flows table")?;
    keep.push(br);
    Ok(Run::new(n, &a, &b, peak))
}

/// Prints the flows table.
pub fn report(rows: &[FlowRow], rounds: usize) {
    println!();
    println!("### Flows against standalone tasks (`cat` tasker)");
    println!();
    println!("| flow | workers | flow nodes/s | standalone tasks/s | ratio | flow CPU µs/node | standalone CPU µs/task | peak RSS MiB flow / standalone |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2}× | {:.0} | {:.0} | {:.1} / {:.1} |",
            r.what,
            r.workers,
            r.flow.tasks_per_s,
            r.standalone.tasks_per_s,
            r.flow.tasks_per_s / r.standalone.tasks_per_s,
            r.flow.own_cpu_us,
            r.standalone.own_cpu_us,
            r.flow.peak_mib,
            r.standalone.peak_mib,
        );
    }
    println!();
    println!(
        "Best of {rounds} alternated rounds each. A flow's task nodes against the same number \
         of standalone tasks with the same payloads ({} in all; a run of an `each` gets the \
         whole array with its `item`), both dropped before the engine starts and run with \
         `drain`; CPU is the engine process's, per node or task.",
        rows.iter().map(|r| r.nodes).sum::<usize>()
    );
}
