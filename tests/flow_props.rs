//! Property test of flows (SPEC 12): random valid trees run by the
//! [`Flow`] state machine, its task nodes completed in a random order by a
//! fake tasker (and its sleeps woken), sometimes through a crash (the
//! progress through JSON and `resume`), end as a reference interpreter
//! says: a plain recursive evaluation of the flow's JSON, written here
//! independently of `spoolflow::flow`.
//!
//! Where branches run at once, a failure's timing decides which branch
//! fails the flow first, and whether the errors let through (`on_error`
//! `continue`) of the branches it cancels were recorded before: the
//! reference then gives every possible first failure, and only bounds the
//! errors ("racy"); everything else must match exactly.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

use spoolflow::flow::{
    at, parse, to_json, Action, End, Flow, Kind, NodeProgress, Progress, Step, TaskRun,
};
use spoolflow::model::names::Nid;
use spoolflow::model::task::{ErrorKind, Object};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------ the world

const CONDS: &[&str] = &["has:a", "not:a", "has:a", "not:a", "has:b", "not:b", "bad"];

/// The fake tasker: a pure function of the taskee and the payload.
fn tasker(taskee: &str, payload: &Object) -> Result<Object, (ErrorKind, String)> {
    let mut out = payload.clone();
    match taskee {
        // Counts in `a`.
        "ta" => {
            let a = payload.get("a").and_then(Value::as_i64).unwrap_or(0);
            out.insert("a".into(), json!(a + 1));
        }
        // A nested object, for deep merges.
        "tb" => {
            let index = payload.get("index").cloned().unwrap_or(Value::Null);
            out.insert("b".into(), json!({ "index": index, "keys": payload.len() }));
        }
        // A new payload altogether (no `item`).
        "tn" => {
            let mut fresh = Object::new();
            fresh.insert("n".into(), json!({ "k": payload.len() }));
            return Ok(fresh);
        }
        // Its own `item`, from the run's.
        "ti" => {
            let item = payload.get("item").cloned().unwrap_or(Value::Null);
            let index = payload.get("index").cloned().unwrap_or(Value::Null);
            out.insert("item".into(), json!([item, index]));
        }
        "tf" => return Err((ErrorKind::User, "tf failed".into())),
        "tw" => return Err((ErrorKind::Work, "tw: exit status 75".into())),
        other => unreachable!("no taskee {other}"),
    }
    Ok(out)
}

/// `if` expressions: `has:KEY`, `not:KEY`; anything else fails.
fn eval(expr: &str, p: &Object) -> Result<bool, String> {
    if let Some(k) = expr.strip_prefix("has:") {
        Ok(p.contains_key(k))
    } else if let Some(k) = expr.strip_prefix("not:") {
        Ok(!p.contains_key(k))
    } else {
        Err("bad expression".into())
    }
}

fn cond(_: &Nid, expr: &str, p: &Object) -> Result<bool, String> {
    eval(expr, p)
}

// ------------------------------------------------------------ the reference

/// A failure: the nid where it began, its kind and message.
type Origin = (String, ErrorKind, String);

struct Outcome {
    /// The output, or every failure that may come first.
    result: Result<Object, Vec<Origin>>,
    /// The errors let through by `on_error: continue` (every possible
    /// entry, when racy).
    errors: Vec<Origin>,
    /// Whether timing decides which errors are recorded.
    racy: bool,
}

impl Outcome {
    fn ok(o: Object) -> Outcome {
        Outcome {
            result: Ok(o),
            errors: Vec::new(),
            racy: false,
        }
    }
    fn fail(nid: &str, kind: ErrorKind, message: String) -> Outcome {
        Outcome {
            result: Err(vec![(nid.to_string(), kind, message)]),
            errors: Vec::new(),
            racy: false,
        }
    }
}

fn reference(node: &Value, nid: &str, input: Object) -> Outcome {
    let mut out = reference_kind(node, nid, input.clone());
    if node.get("on_error") == Some(&json!("continue")) {
        if let Err(origins) = &out.result {
            out.racy |= origins.len() > 1;
            for (_, kind, message) in origins {
                out.errors.push((nid.to_string(), *kind, message.clone()));
            }
            out.result = Ok(input);
        }
    }
    out
}

fn reference_kind(node: &Value, nid: &str, input: Object) -> Outcome {
    let child = |i: usize| format!("{nid}_{i}");
    if let Some(t) = node.get("task").and_then(Value::as_str) {
        return match tasker(t, &input) {
            Ok(o) => Outcome::ok(o),
            Err((kind, message)) => Outcome::fail(nid, kind, message),
        };
    }
    if let Some(Value::Object(values)) = node.get("set") {
        let mut o = input;
        for (k, v) in values {
            if v.is_null() {
                o.remove(k);
            } else {
                o.insert(k.clone(), v.clone());
            }
        }
        return Outcome::ok(o);
    }
    if node.get("sleep").is_some() {
        return Outcome::ok(input);
    }
    if let Some(Value::Array(children)) = node.get("sequence") {
        let mut cur = Outcome::ok(input);
        for (i, c) in children.iter().enumerate() {
            let Ok(o) = cur.result else { break };
            let next = reference(c, &child(i), o);
            cur.errors.extend(next.errors);
            cur.racy |= next.racy;
            cur.result = next.result;
        }
        return cur;
    }
    if let Some(Value::Array(children)) = node.get("concurrence") {
        let runs: Vec<Outcome> = children
            .iter()
            .enumerate()
            .map(|(i, c)| reference(c, &child(i), input.clone()))
            .collect();
        return together(runs, |outputs| {
            let mode = node.get("merge").and_then(Value::as_str).unwrap_or("deep");
            match mode {
                _ if outputs.is_empty() => input.clone(),
                "first" => outputs[0].clone(),
                "last" => outputs[outputs.len() - 1].clone(),
                _ => {
                    let merged = outputs
                        .iter()
                        .map(|o| Value::Object(o.clone()))
                        .reduce(merge_deep)
                        .expect("not empty");
                    match merged {
                        Value::Object(o) => o,
                        _ => unreachable!("outputs are objects"),
                    }
                }
            }
        });
    }
    if let Some(expr) = node.get("if").and_then(Value::as_str) {
        return match eval(expr, &input) {
            Err(m) => Outcome::fail(
                nid,
                ErrorKind::User,
                format!("`if` expression {expr:?} failed: {m}"),
            ),
            Ok(true) => reference(&node["then"], &child(0), input),
            Ok(false) => match node.get("else") {
                Some(e) => reference(e, &child(1), input),
                None => Outcome::ok(input),
            },
        };
    }
    if let Some(key) = node.get("each").and_then(Value::as_str) {
        let items = match input.get(key) {
            Some(Value::Array(items)) => items.clone(),
            None => {
                let m = format!("`each`: payload.{key} is missing");
                return Outcome::fail(nid, ErrorKind::User, m);
            }
            Some(v) => {
                let what = match v {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    Value::String(_) => "a string",
                    Value::Object(_) => "an object",
                    Value::Array(_) => unreachable!("arrays are taken above"),
                };
                let m = format!("`each`: payload.{key} is {what}, not an array");
                return Outcome::fail(nid, ErrorKind::User, m);
            }
        };
        let runs: Vec<Outcome> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let mut run_input = input.clone();
                run_input.insert("item".into(), item.clone());
                run_input.insert("index".into(), json!(i));
                reference(&node["do"], &child(i), run_input)
            })
            .collect();
        let into = node.get("into").and_then(Value::as_str).unwrap_or(key);
        return together(runs, |outputs| {
            let items: Vec<Value> = outputs
                .iter()
                .map(|o| o.get("item").cloned().unwrap_or(Value::Null))
                .collect();
            let mut o = input.clone();
            o.insert(into.to_string(), Value::Array(items));
            o
        });
    }
    unreachable!("generated node {node}")
}

/// Branches or runs at once: all their outputs, or any of their first
/// failures.
fn together(runs: Vec<Outcome>, combine: impl FnOnce(&[Object]) -> Object) -> Outcome {
    let failing = runs.iter().filter(|r| r.result.is_err()).count();
    let mut racy = runs.iter().any(|r| r.racy);
    if failing == 0 {
        let outputs: Vec<Object> = runs
            .iter()
            .map(|r| r.result.clone().expect("all ok"))
            .collect();
        return Outcome {
            result: Ok(combine(&outputs)),
            errors: runs.into_iter().flat_map(|r| r.errors).collect(),
            racy,
        };
    }
    racy |= failing > 1
        || runs
            .iter()
            .any(|r| r.result.is_ok() && !r.errors.is_empty());
    let mut origins = Vec::new();
    let mut errors = Vec::new();
    for r in runs {
        if let Err(o) = r.result {
            origins.extend(o);
        }
        errors.extend(r.errors);
    }
    Outcome {
        result: Err(origins),
        errors,
        racy,
    }
}

fn merge_deep(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, v) in b {
                let merged = match a.remove(&k) {
                    Some(old) => merge_deep(old, v),
                    None => v,
                };
                a.insert(k, merged);
            }
            Value::Object(a)
        }
        (_, b) => b,
    }
}

// ------------------------------------------------------------ trees

fn with_on_error(mut v: Value, cont: bool) -> Value {
    if cont {
        v["on_error"] = json!("continue");
    }
    v
}

fn leaf() -> impl Strategy<Value = Value> {
    let set_value = prop_oneof![
        Just(Value::Null),
        Just(json!(1)),
        Just(json!("s")),
        Just(json!({"m": {"x": 1}})),
        Just(json!([7, 8])),
    ];
    prop_oneof![
        4 => (
            select(&["ta", "ta", "tb", "tb", "tn", "ti", "ti", "tf", "tw", "ta"][..]),
            prop::option::of(Just(json!({
                "timeout": "1500ms", "start_timeout": 3, "retries": 2,
                "retry_on_timeout": true, "priority": -7, "headers": { "h": [1] }
            })))
        )
            .prop_map(|(t, options)| {
                let mut v = json!({ "task": t });
                if let Some(Value::Object(o)) = options {
                    v.as_object_mut().expect("an object").extend(o);
                }
                v
            }),
        1 => (select(&["a", "b", "item", "x", "list"][..]), set_value)
            .prop_map(|(k, v)| json!({ "set": { k: v } })),
        1 => (0u64..3_000).prop_map(|ms| json!({ "sleep": format!("{ms}ms") })),
    ]
}

/// A tree of at most `depth` levels; containers are likelier near the
/// root.
fn node(depth: u32) -> BoxedStrategy<Value> {
    if depth <= 1 {
        return leaf().boxed();
    }
    let inner = node(depth - 1);
    let containers = prop_oneof![
        prop::collection::vec(inner.clone(), 0..5).prop_map(|c| json!({ "sequence": c })),
        (
            prop::collection::vec(inner.clone(), 0..5),
            select(&[None, Some("deep"), Some("first"), Some("last")][..])
        )
            .prop_map(|(c, m)| {
                let mut v = json!({ "concurrence": c });
                if let Some(m) = m {
                    v["merge"] = json!(m);
                }
                v
            }),
        (
            select(CONDS),
            inner.clone(),
            prop::option::of(inner.clone())
        )
            .prop_map(|(c, t, e)| {
                let mut v = json!({ "if": c, "then": t });
                if let Some(e) = e {
                    v["else"] = e;
                }
                v
            }),
        (
            select(&["list", "list", "list", "list", "list", "list", "nope", "a"][..]),
            inner,
            prop::option::of(1u32..4),
            prop::option::of(Just("out"))
        )
            .prop_map(|(k, body, c, into)| {
                let mut v = json!({ "each": k, "do": body });
                if let Some(c) = c {
                    v["concurrency"] = json!(c);
                }
                if let Some(i) = into {
                    v["into"] = json!(i);
                }
                v
            }),
    ];
    let weight = if depth >= 3 { 10 } else { 2 };
    prop_oneof![2 => leaf(), weight => containers].boxed()
}

/// A random flow, at most 6 levels deep.
fn tree() -> impl Strategy<Value = Value> {
    (node(6), prop::bool::weighted(0.2)).prop_map(|(v, c)| with_on_error(v, c))
}

/// Adds `on_error: continue` to some nodes below the root (the strategy
/// above only decides it for the root).
fn sprinkle(v: &mut Value, seed: &mut u64) {
    if let Value::Object(o) = v {
        for (k, child) in o.iter_mut() {
            match (k.as_str(), child) {
                ("sequence" | "concurrence", Value::Array(c)) => {
                    for n in c {
                        sprinkle(n, seed);
                    }
                }
                ("then" | "else" | "do", n) => sprinkle(n, seed),
                _ => {}
            }
        }
        if next(seed) % 5 == 0 {
            o.insert("on_error".into(), json!("continue"));
        }
    }
}

fn payload() -> impl Strategy<Value = Object> {
    (
        prop::option::of(prop::collection::vec(0i64..5, 0..4)),
        prop::option::of(0i64..3),
    )
        .prop_map(|(list, a)| {
            let mut o = Object::new();
            if let Some(l) = list {
                o.insert("list".into(), json!(l));
            }
            if let Some(a) = a {
                o.insert("a".into(), json!(a));
            }
            o
        })
}

// ------------------------------------------------------------ the driver

/// splitmix64.
fn next(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn run_info() -> TaskRun {
    TaskRun {
        taskee: None,
        attempts: 1,
        started_at: None,
        ended_at: None,
    }
}

fn action_nid(a: &Action) -> &Nid {
    match a {
        Action::Task { nid, .. }
        | Action::Sleep { nid, .. }
        | Action::Cancel { nid }
        | Action::Again { nid, .. } => nid,
    }
}

/// Takes a step's actions in: new work joins `outstanding`, a cancel
/// removes the task it names.
fn absorb(step: Step, outstanding: &mut Vec<Action>) -> Result<Option<End>, TestCaseError> {
    for a in step.actions {
        match &a {
            Action::Cancel { nid } => {
                let pos = outstanding
                    .iter()
                    .position(|o| matches!(o, Action::Task { nid: n, .. } if n == nid));
                prop_assert!(pos.is_some(), "cancel of {nid}, which is not outstanding");
                outstanding.swap_remove(pos.unwrap_or_default());
            }
            _ => {
                prop_assert!(
                    !outstanding.iter().any(|o| action_nid(o) == action_nid(&a)),
                    "{a:?} twice"
                );
                outstanding.push(a);
            }
        }
    }
    Ok(step.end)
}

fn sorted(mut actions: Vec<Action>) -> Vec<String> {
    actions.sort_by(|a, b| action_nid(a).cmp(action_nid(b)));
    actions.iter().map(|a| format!("{a:?}")).collect()
}

/// No `each` has more runs going than its `concurrency`.
fn check_concurrency(flow: &Flow) -> Result<(), TestCaseError> {
    for (key, p) in &flow.progress.nodes {
        if !matches!(p, NodeProgress::Running { .. }) {
            continue;
        }
        let nid: Nid = key.parse().expect("progress keys are nids");
        let Some(Kind::Each {
            concurrency: Some(c),
            ..
        }) = at(&flow.tree, &nid).map(|n| &n.kind)
        else {
            continue;
        };
        let going = (0..)
            .map(|i| flow.progress.nodes.get(nid.child(i).as_str()))
            .take_while(Option::is_some)
            .filter(|p| !p.is_some_and(NodeProgress::is_final))
            .count();
        prop_assert!(
            going <= *c as usize,
            "{nid}: {going} runs going, at most {c}"
        );
    }
    Ok(())
}

/// What the engine would have on disk of a flow's progress: the snapshot
/// in its `run/` file and its journal.
#[derive(Default)]
struct Disk {
    snapshot: String,
    journal: Vec<u8>,
    /// The journal's removal after the last snapshot was not durable: it
    /// is back after a crash (with a torn line), until the next append
    /// makes the directory durable.
    stale: bool,
}

impl Disk {
    /// Writes what changed: mostly a journal line, sometimes a snapshot.
    fn save(&mut self, progress: &mut Progress, seed: &mut u64) {
        match next(seed) % 5 {
            0 => self.snapshot(progress, next(seed) % 2 == 0),
            _ => {
                if std::mem::take(&mut self.stale) {
                    self.journal.clear();
                }
                let delta = progress.take_delta();
                serde_json::to_writer(&mut self.journal, &delta).expect("delta serializes");
                self.journal.push(b'\n');
            }
        }
    }

    fn snapshot(&mut self, progress: &mut Progress, stale: bool) {
        progress.mark_written();
        self.snapshot = serde_json::to_string(progress).expect("progress serializes");
        self.stale = stale;
        if stale {
            self.journal.extend_from_slice(br#"{"seq":"#);
        } else {
            self.journal.clear();
        }
    }

    /// The progress as a restart reads it: the snapshot, then the journal.
    fn read_back(&self) -> Result<Progress, TestCaseError> {
        // No snapshot yet: the `run/` file has no progress.
        let mut progress: Progress = match self.snapshot.as_str() {
            "" => Progress::default(),
            json => serde_json::from_str(json).expect("progress deserializes"),
        };
        let replayed = progress.replay(&self.journal);
        prop_assert_eq!(replayed.problem, None);
        Ok(progress)
    }
}

/// Runs the flow to its end, completing outstanding work in a random
/// order; with `crashes`, sometimes through its snapshot and journal and
/// `resume`.
fn drive(
    tree: &Value,
    input: Object,
    mut seed: u64,
    crashes: bool,
) -> Result<(End, Progress), TestCaseError> {
    let parsed = parse(tree).map_err(|e| TestCaseError::fail(format!("{tree}: {e}")))?;
    let mut flow = Flow::new(parsed.clone());
    let mut now = 1_000i64;
    let mut outstanding = Vec::new();
    let mut end = absorb(flow.start(input, now, &mut cond), &mut outstanding)?;
    let mut disk = Disk::default();
    disk.save(&mut flow.progress, &mut seed);
    let mut steps = 0;
    while end.is_none() {
        steps += 1;
        prop_assert!(steps < 100_000, "runaway flow");
        prop_assert!(
            !outstanding.is_empty(),
            "stuck: no end, nothing outstanding"
        );
        if crashes && next(&mut seed) % 6 == 0 {
            let progress = disk.read_back()?;
            prop_assert_eq!(&progress, &flow.progress);
            flow = Flow {
                tree: parsed.clone(),
                progress,
            };
            let resumed = flow.resume();
            prop_assert_eq!(resumed.end, None);
            // A sleep of a branch cancelled by a failure stays outstanding
            // here (its wake-up changes nothing), but it is no longer
            // sleeping: resume does not arm it again.
            let live: Vec<Action> = outstanding
                .iter()
                .filter(|a| match a {
                    Action::Sleep { nid, .. } => matches!(
                        flow.progress.nodes.get(nid.as_str()),
                        Some(NodeProgress::Sleeping { .. })
                    ),
                    _ => true,
                })
                .cloned()
                .collect();
            prop_assert_eq!(sorted(resumed.actions), sorted(live));
            // The engine folds what it read back into a new snapshot.
            disk.snapshot(&mut flow.progress, false);
        }
        let pick = (next(&mut seed) % outstanding.len() as u64) as usize;
        let step = match outstanding.swap_remove(pick) {
            Action::Task {
                nid,
                taskee,
                payload,
                ..
            } => match tasker(
                taskee.as_str(),
                &payload.unwrap_or_else(|| flow.input_of(&nid)),
            ) {
                Ok(out) => flow.task_completed(&nid, out, run_info(), now, &mut cond),
                Err((kind, message)) => {
                    flow.task_failed(&nid, kind, message, run_info(), now, &mut cond)
                }
            },
            Action::Sleep { nid, until_ms } => {
                let sleeping = matches!(
                    flow.progress.nodes.get(nid.as_str()),
                    Some(NodeProgress::Sleeping { .. })
                );
                if next(&mut seed) % 4 == 0 {
                    // Woken early: the same deadline comes back (nothing,
                    // for a sleep of a branch a failure cancelled).
                    let early = flow.woke(&nid, until_ms - 1, &mut cond);
                    let again = Action::Sleep { nid, until_ms };
                    let want = if sleeping { vec![again] } else { Vec::new() };
                    prop_assert_eq!(&early.actions, &want);
                    prop_assert_eq!(&early.end, &None);
                    early
                } else {
                    now = now.max(until_ms);
                    flow.woke(&nid, now, &mut cond)
                }
            }
            Action::Cancel { .. } => unreachable!("cancels are never outstanding"),
            Action::Again { .. } => unreachable!("no tasker here replies uncompleted"),
        };
        end = absorb(step, &mut outstanding)?;
        disk.save(&mut flow.progress, &mut seed);
        check_concurrency(&flow)?;
    }
    // Only sleeps of cancelled branches may be left, and they change
    // nothing.
    for a in outstanding {
        let Action::Sleep { nid, .. } = a else {
            return Err(TestCaseError::fail(format!("left running: {a:?}")));
        };
        prop_assert_eq!(flow.woke(&nid, i64::MAX, &mut cond), Step::default());
    }
    prop_assert!(flow.running_tasks().is_empty());
    prop_assert_eq!(flow.end(), end.clone());
    prop_assert_eq!(flow.resume().end, end.clone());
    Ok((end.expect("ended"), flow.progress))
}

fn check(tree: &Value, input: Object, seed: u64, crashes: bool) -> Result<(), TestCaseError> {
    let want = reference(tree, "0", input.clone());
    let (end, progress) = drive(tree, input, seed, crashes)?;
    let mut got_errors: Vec<Origin> = progress
        .errors
        .iter()
        .map(|e| (e.nid.clone(), e.kind, e.message.clone()))
        .collect();
    match (&want.result, end) {
        (Ok(w), End::Completed(got)) => prop_assert_eq!(w, &got, "payload of {}", tree),
        (Err(origins), End::Failed { nid, kind, message }) => {
            let got = (nid.to_string(), kind, message);
            prop_assert!(
                origins.contains(&got),
                "{tree}: failed with {got:?}, expected one of {origins:?}"
            );
        }
        (w, got) => {
            return Err(TestCaseError::fail(format!(
                "{tree}: expected {w:?}, got {got:?}"
            )))
        }
    }
    if want.racy {
        for e in &got_errors {
            prop_assert!(
                want.errors.contains(e),
                "{tree}: error {e:?} not among {:?}",
                want.errors
            );
        }
    } else {
        let mut want_errors = want.errors.clone();
        want_errors.sort_by(|a, b| (&a.0, &a.2).cmp(&(&b.0, &b.2)));
        got_errors.sort_by(|a, b| (&a.0, &a.2).cmp(&(&b.0, &b.2)));
        prop_assert_eq!(want_errors, got_errors, "errors of {}", tree);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn flows_end_as_the_reference_says(
        mut tree in tree(),
        input in payload(),
        seed in any::<u64>(),
        sprinkled in any::<bool>(),
        crashes in any::<bool>(),
    ) {
        if sprinkled {
            let mut s = seed ^ 0x5eed;
            sprinkle(&mut tree, &mut s);
        }
        check(&tree, input, seed, crashes)?;
    }

    /// Trees go back to JSON and parse to the same tree.
    #[test]
    fn trees_round_trip_through_json(tree in tree()) {
        let parsed = parse(&tree).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parse(&to_json(&parsed)), Ok(parsed));
    }

    /// The same flow in different completion orders ends the same way
    /// when no timing can tell.
    #[test]
    fn completion_order_does_not_matter(
        tree in tree(),
        input in payload(),
        seeds in prop::collection::vec(any::<u64>(), 2..4),
    ) {
        let want = reference(&tree, "0", input.clone());
        prop_assume!(!want.racy && want.result.is_ok());
        let mut ends = BTreeMap::new();
        for s in seeds {
            let (end, _) = drive(&tree, input.clone(), s, s % 2 == 0)?;
            ends.insert(format!("{end:?}"), s);
        }
        prop_assert_eq!(ends.len(), 1, "{}", tree);
    }
}

/// The reference itself, on a hand-written flow.
#[test]
fn reference_sanity() {
    let tree = json!({ "sequence": [
        { "task": "ta" },
        { "concurrence": [ { "task": "tb" }, { "task": "tf", "on_error": "continue" } ] },
        { "each": "list", "do": { "task": "ti" }, "into": "out" }
    ] });
    let input = match json!({"list": [1, 2]}) {
        Value::Object(o) => o,
        _ => unreachable!(),
    };
    let r = reference(&tree, "0", input.clone());
    let out = r.result.expect("completes");
    assert_eq!(out["a"], json!(1));
    assert_eq!(out["out"], json!([[1, 0], [2, 1]]));
    assert_eq!(
        r.errors,
        [(
            "0_1_1".to_string(),
            ErrorKind::User,
            "tf failed".to_string()
        )]
    );
    check(&tree, input, 7, true).expect("flow matches");
}
