//! `spoolflow flow ID`: a flow's tree with each node's state — from its
//! `run/` file while it runs (its progress), from its record once it ended
//! (its `nodes`). The reading commands of SPEC 11 (`show`) will absorb it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use spoolflow::flow::run::NodeProgress;
use spoolflow::flow::tree::{self, FlowNode, Kind};
use spoolflow::layout::Root;
use spoolflow::model::names::{Nid, TaskId};
use spoolflow::read::{self, Place};
use spoolflow::store::flows::load_progress;

use super::{exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The flow's id (its exid).
    pub id: String,
    /// Print the tree and the states as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What is known of each node, by nid: a state and a few words more.
type States = BTreeMap<String, (String, String)>;

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::existing_root(root)?;
    let id: TaskId = args.id.parse().map_err(|e| Failure::new(exit::USAGE, e))?;
    let shown = load(&root, &id)?;
    if args.json {
        println!("{}", as_json(&id, &shown));
        return Ok(());
    }
    println!("flow {id} ({})", shown.state);
    for l in rows(&shown) {
        let state = if l.state.is_empty() {
            String::new()
        } else {
            format!("[{}] ", l.state)
        };
        println!(
            "{}",
            format!("{}{} {}  {state}{}", l.lead, l.nid, l.label, l.detail).trim_end()
        );
    }
    Ok(())
}

/// A flow as `flow` reads it: its tree, what is known of each node, and
/// the flow's state.
pub(crate) struct Shown {
    pub flow: Value,
    pub tree: FlowNode,
    states: States,
    pub state: String,
}

/// Reads a flow from its `run/` file or its record.
pub(crate) fn load(root: &Root, id: &TaskId) -> Result<Shown, Failure> {
    let place = read::find(root, id).map_err(|e| Failure::new(exit::FAILURE, e))?;
    let (flow, states, state) = match place {
        Some(Place::Run(path)) => from_run_file(root, id, &path)?,
        Some(Place::Ended(record)) => {
            let flow = record
                .flow
                .clone()
                .ok_or_else(|| Failure::new(exit::USAGE, format!("{id} is a task, not a flow")))?;
            (
                flow,
                from_record_nodes(record.nodes.as_deref()),
                record.state.as_str().to_string(),
            )
        }
        Some(Place::Rejected { reason, .. }) => {
            return Err(Failure::new(
                exit::FAILURE,
                format!("{id} was rejected: {}", reason.unwrap_or_default()),
            ))
        }
        Some(Place::In(_)) => {
            return Err(Failure::new(
                exit::FAILURE,
                format!("{id} is not taken yet (in in/)"),
            ))
        }
        None => return Err(Failure::new(exit::NOT_FOUND, format!("unknown id {id}"))),
    };
    let tree = tree::parse(&flow).map_err(|e| Failure::new(exit::FAILURE, e))?;
    Ok(Shown {
        flow,
        tree,
        states,
        state,
    })
}

/// `flow --json`: `{ "id", "state", "flow", "nodes": { nid: { "state", "detail" } } }`.
pub(crate) fn as_json(id: &TaskId, s: &Shown) -> Value {
    let nodes: BTreeMap<&String, Value> = s
        .states
        .iter()
        .map(|(k, (st, d))| (k, serde_json::json!({ "state": st, "detail": d })))
        .collect();
    serde_json::json!({ "id": id.as_str(), "state": s.state, "flow": s.flow, "nodes": nodes })
}

/// One node of the drawn tree.
pub(crate) struct Row {
    /// The tree's lines before the node (`│  ├─ `).
    pub lead: String,
    pub nid: String,
    pub label: String,
    /// The node's state (empty when unknown).
    pub state: String,
    /// Taskee, attempts, duration, a failure's reason.
    pub detail: String,
}

/// The tree's rows, parents before their children.
pub(crate) fn rows(s: &Shown) -> Vec<Row> {
    // A running flow's progress knows every node; a record only its task
    // nodes (the containers are left blank then).
    let unknown = if s.state == "running" { "waiting" } else { "" };
    let mut out = Vec::new();
    draw(
        &s.tree,
        &Nid::root(),
        ("", ""),
        unknown,
        &s.states,
        &mut out,
    );
    out
}

fn from_run_file(
    root: &Root,
    id: &TaskId,
    path: &std::path::Path,
) -> Result<(Value, States, String), Failure> {
    // Never through a link, never waiting on a FIFO, bounded as the
    // engine bounds it.
    let most = spoolflow::engine::recovery::FLOW_RUN_FILE_LIMIT;
    let bytes = spoolflow::store::spool::read_capped(path, most)
        .map_err(|e| Failure::new(exit::FAILURE, e))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| Failure::new(exit::FAILURE, e))?;
    let flow = v
        .get("flow")
        .cloned()
        .ok_or_else(|| Failure::new(exit::USAGE, "a task, not a flow"))?;
    let progress = load_progress(root, id, v.get("progress").cloned())
        .map_err(|e| Failure::new(exit::FAILURE, e))?
        .unwrap_or_default();
    let mut states = States::new();
    for (nid, p) in &progress.nodes {
        let s = match p {
            NodeProgress::Running { .. } => ("running".to_string(), String::new()),
            NodeProgress::Sleeping { until_ms, .. } => {
                let until = chrono::DateTime::from_timestamp_millis(*until_ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_default();
                ("sleeping".to_string(), format!("until {until}"))
            }
            NodeProgress::Done { task, .. } => ("done".to_string(), task_detail(task.as_ref())),
            NodeProgress::Failed {
                kind,
                message,
                task,
            } => (
                "failed".to_string(),
                format!(
                    "{}{}: {message}",
                    task_detail(task.as_ref()),
                    kind_name(kind)
                ),
            ),
            NodeProgress::Skipped => ("skipped".to_string(), String::new()),
        };
        states.insert(nid.clone(), s);
    }
    Ok((flow, states, "running".to_string()))
}

fn kind_name(kind: &spoolflow::model::task::ErrorKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn task_detail(task: Option<&spoolflow::flow::run::TaskRun>) -> String {
    let Some(t) = task else {
        return String::new();
    };
    let taskee = t.taskee.as_deref().unwrap_or("-");
    let took = match (&t.started_at, &t.ended_at) {
        (Some(s), Some(e)) => duration(s, e),
        _ => String::new(),
    };
    format!(
        "{taskee}, {}{took}; ",
        spoolflow::text::count(t.attempts as usize, "attempt")
    )
}

fn duration(start: &str, end: &str) -> String {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    match (parse(start), parse(end)) {
        (Some(s), Some(e)) => format!(", {:.3} s", (e - s).num_milliseconds() as f64 / 1000.0),
        _ => String::new(),
    }
}

fn from_record_nodes(nodes: Option<&[Value]>) -> States {
    let mut states = States::new();
    for n in nodes.unwrap_or_default() {
        let field = |k: &str| {
            n.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let took = duration(&field("started_at"), &field("ended_at"));
        let attempts = n.get("attempts").and_then(Value::as_u64).unwrap_or(0);
        states.insert(
            field("nid"),
            (
                field("state"),
                format!(
                    "{}, {}{took}",
                    field("taskee"),
                    spoolflow::text::count(attempts as usize, "attempt")
                ),
            ),
        );
    }
    states
}

/// One line per node, children indented under their parent; an `each`
/// shows the runs it has (by their nids).
fn draw(
    node: &FlowNode,
    nid: &Nid,
    (lead, child_lead): (&str, &str),
    unknown: &str,
    states: &States,
    out: &mut Vec<Row>,
) {
    let (state, detail) = states
        .get(nid.as_str())
        .cloned()
        .unwrap_or_else(|| (unknown.to_string(), String::new()));
    out.push(Row {
        lead: lead.to_string(),
        nid: nid.to_string(),
        label: label(node),
        state,
        detail,
    });
    let children: Vec<(Nid, &FlowNode)> = match &node.kind {
        Kind::Sequence(c) | Kind::Concurrence { children: c, .. } => c
            .iter()
            .enumerate()
            .map(|(i, n)| (nid.child(i), n))
            .collect(),
        Kind::If {
            then, otherwise, ..
        } => {
            let mut v = vec![(nid.child(0), then.as_ref())];
            if let Some(o) = otherwise {
                v.push((nid.child(1), o.as_ref()));
            }
            v
        }
        Kind::Each { body, .. } => {
            let prefix = format!("{nid}_");
            let runs = states
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix))
                .filter_map(|rest| rest.split('_').next()?.parse::<usize>().ok())
                .collect::<std::collections::BTreeSet<_>>();
            runs.into_iter()
                .map(|i| (nid.child(i), body.as_ref()))
                .collect()
        }
        _ => Vec::new(),
    };
    let n = children.len();
    for (i, (cnid, child)) in children.into_iter().enumerate() {
        let last = i + 1 == n;
        let (l, c) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        let leads = (format!("{child_lead}{l}"), format!("{child_lead}{c}"));
        draw(child, &cnid, (&leads.0, &leads.1), unknown, states, out);
    }
}

/// A `merge` as the flow file spells it.
fn merge_name(merge: spoolflow::flow::tree::Merge) -> &'static str {
    use spoolflow::flow::tree::Merge;
    match merge {
        Merge::Deep => "deep",
        Merge::First => "first",
        Merge::Last => "last",
    }
}

fn label(node: &FlowNode) -> String {
    match &node.kind {
        Kind::Task { taskee, .. } => format!("task {taskee}"),
        Kind::Sequence(_) => "sequence".into(),
        Kind::Concurrence { merge, .. } => format!("concurrence (merge {})", merge_name(*merge)),
        Kind::If { cond, .. } => format!("if {cond}"),
        Kind::Set(o) => format!("set {}", Value::Object(o.clone())),
        Kind::Each {
            key, concurrency, ..
        } => match concurrency {
            Some(c) => format!("each {key} (concurrency {c})"),
            None => format!("each {key}"),
        },
        Kind::Sleep(d) => format!("sleep {d}"),
        Kind::Stored(name) => format!("flow {name}"),
    }
}
