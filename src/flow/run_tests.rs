//! Tests of the flow state machine: every kind of node, merges,
//! `each` and its limits, and sleeps; failures, cancels and going on
//! after a crash are in `run_tests_ends.rs`.

use serde_json::{json, Value};

use super::*;
use crate::flow::tree::parse;

fn obj(v: Value) -> Object {
    match v {
        Value::Object(o) => o,
        _ => unreachable!("test values are objects"),
    }
}

fn nid(s: &str) -> Nid {
    s.parse().expect("test nid")
}

fn flow(v: Value) -> Flow {
    Flow::new(parse(&v).unwrap_or_else(|e| panic!("{v}: {e}")))
}

fn run() -> TaskRun {
    TaskRun {
        taskee: Some("t".into()),
        attempts: 1,
        started_at: None,
        ended_at: None,
    }
}

/// `if` expressions of these tests: `has:KEY`, `not:KEY`, anything else
/// is an error.
fn cond(_: &Nid, expr: &str, p: &Object) -> Result<bool, String> {
    if let Some(k) = expr.strip_prefix("has:") {
        Ok(p.contains_key(k))
    } else if let Some(k) = expr.strip_prefix("not:") {
        Ok(!p.contains_key(k))
    } else {
        Err(format!("cannot evaluate {expr:?}"))
    }
}

fn start(f: &mut Flow, input: Value) -> Step {
    f.start(obj(input), 0, &mut cond)
}

fn done(f: &mut Flow, n: &str, output: Value) -> Step {
    f.task_completed(&nid(n), obj(output), run(), 0, &mut cond)
}

fn fail(f: &mut Flow, n: &str, message: &str) -> Step {
    f.task_failed(
        &nid(n),
        ErrorKind::User,
        message.into(),
        run(),
        0,
        &mut cond,
    )
}

/// The task actions of a step of flow `f`: (nid, taskee, payload), a
/// derived payload built as the engine does.
fn tasks(f: &Flow, s: &Step) -> Vec<(String, String, Value)> {
    s.actions
        .iter()
        .filter_map(|a| match a {
            Action::Task {
                nid,
                taskee,
                payload,
                ..
            } => Some((
                nid.to_string(),
                taskee.to_string(),
                Value::Object(payload.clone().unwrap_or_else(|| f.input_of(nid))),
            )),
            _ => None,
        })
        .collect()
}

fn cancels(s: &Step) -> Vec<String> {
    s.actions
        .iter()
        .filter_map(|a| match a {
            Action::Cancel { nid } => Some(nid.to_string()),
            _ => None,
        })
        .collect()
}

fn completed(s: &Step) -> Value {
    match &s.end {
        Some(End::Completed(o)) => Value::Object(o.clone()),
        other => panic!("not completed: {other:?}"),
    }
}

fn failed(s: &Step) -> (String, ErrorKind, String) {
    match &s.end {
        Some(End::Failed { nid, kind, message }) => (nid.to_string(), *kind, message.clone()),
        other => panic!("not failed: {other:?}"),
    }
}

fn state(f: &Flow, n: &str) -> &'static str {
    match f.progress.nodes.get(n) {
        None => "none",
        Some(NodeProgress::Running { .. }) => "running",
        Some(NodeProgress::Sleeping { .. }) => "sleeping",
        Some(NodeProgress::Done { .. }) => "done",
        Some(NodeProgress::Failed { .. }) => "failed",
        Some(NodeProgress::Skipped) => "skipped",
    }
}

#[test]
fn a_task_node() {
    let mut f = flow(json!({ "task": "stamp", "timeout": "2s", "priority": 5 }));
    let s = start(&mut f, json!({"a": 1}));
    assert_eq!(s.end, None);
    let [Action::Task {
        nid,
        taskee,
        payload,
        options,
        priority,
        headers,
    }] = &s.actions[..]
    else {
        panic!("{s:?}")
    };
    assert_eq!((nid.as_str(), taskee.as_str()), ("0", "stamp"));
    assert_eq!(payload, &Some(obj(json!({"a": 1}))));
    assert_eq!(options.timeout.map(|d| d.0.as_secs()), Some(2));
    assert_eq!((*priority, headers), (Some(5), &None));
    assert_eq!(f.running_tasks(), std::slice::from_ref(nid));
    // Started once only.
    assert_eq!(start(&mut f, json!({})), Step::default());
    let s = done(&mut f, "0", json!({"a": 2}));
    assert_eq!(completed(&s), json!({"a": 2}));
    assert_eq!(
        f.progress.nodes["0"],
        NodeProgress::Done {
            output: obj(json!({"a": 2})),
            task: Some(run())
        }
    );
    assert!(f.running_tasks().is_empty());
    // After the end nothing happens.
    assert_eq!(done(&mut f, "0", json!({})), Step::default());
    assert_eq!(f.end(), s.end);
}

#[test]
fn a_failing_task_fails_the_flow() {
    let mut f = flow(json!({ "task": "stamp" }));
    start(&mut f, json!({}));
    let s = f.task_failed(
        &nid("0"),
        ErrorKind::Work,
        "exit 75".into(),
        run(),
        0,
        &mut cond,
    );
    assert_eq!(failed(&s), ("0".into(), ErrorKind::Work, "exit 75".into()));
    assert_eq!(f.end(), s.end);
}

#[test]
fn sequence_passes_each_output_on() {
    let mut f = flow(json!({ "sequence": [
        { "task": "a" }, { "set": { "s": 1 } }, { "task": "b" }
    ] }));
    let s = start(&mut f, json!({"x": 0}));
    assert_eq!(tasks(&f, &s), [("0_0".into(), "a".into(), json!({"x": 0}))]);
    let s = done(&mut f, "0_0", json!({"x": 1}));
    assert_eq!(
        tasks(&f, &s),
        [("0_2".into(), "b".into(), json!({"x": 1, "s": 1}))]
    );
    assert_eq!(state(&f, "0_1"), "done");
    let s = done(&mut f, "0_2", json!({"x": 2}));
    assert_eq!(completed(&s), json!({"x": 2}));
    // Empty: the input passes through, at once.
    let mut f = flow(json!({ "sequence": [] }));
    assert_eq!(
        completed(&start(&mut f, json!({"k": true}))),
        json!({"k": true})
    );
}

#[test]
fn set_nodes_finish_at_once() {
    let mut f = flow(json!({ "sequence": [
        { "set": { "a": 1, "b": { "c": 2 } } }, { "set": { "a": null, "d": [1] } }
    ] }));
    let s = start(&mut f, json!({"a": 0, "z": 1}));
    assert!(s.actions.is_empty());
    assert_eq!(completed(&s), json!({"z": 1, "b": {"c": 2}, "d": [1]}));
}

/// A concurrence of three branches finishing 2, 1, 0: the merge follows
/// branch order.
fn merged(mode: &str) -> Value {
    let mut f = flow(json!({ "concurrence": [
        { "task": "a" }, { "task": "b" }, { "task": "c" }
    ], "merge": mode }));
    let s = start(&mut f, json!({"in": 1}));
    assert_eq!(tasks(&f, &s).len(), 3);
    assert!(tasks(&f, &s).iter().all(|t| t.2 == json!({"in": 1})));
    assert_eq!(
        done(&mut f, "0_2", json!({"k": "c", "c": 1, "n": {"c": 1}})).end,
        None
    );
    assert_eq!(
        done(&mut f, "0_1", json!({"k": "b", "b": 1, "n": {"b": 1}})).end,
        None
    );
    completed(&done(
        &mut f,
        "0_0",
        json!({"k": "a", "a": 1, "n": {"a": 1, "b": 0}}),
    ))
}

#[test]
fn concurrence_merges_in_branch_order() {
    assert_eq!(
        merged("deep"),
        json!({"k": "c", "a": 1, "b": 1, "c": 1, "n": {"a": 1, "b": 1, "c": 1}})
    );
    assert_eq!(
        merged("first"),
        json!({"k": "a", "a": 1, "n": {"a": 1, "b": 0}})
    );
    assert_eq!(merged("last"), json!({"k": "c", "c": 1, "n": {"c": 1}}));
    let mut f = flow(json!({ "concurrence": [] }));
    assert_eq!(completed(&start(&mut f, json!({"k": 1}))), json!({"k": 1}));
    // Branches that finish at once.
    let mut f = flow(json!({ "concurrence": [ { "set": { "a": 1 } }, { "set": { "b": 2 } } ] }));
    assert_eq!(
        completed(&start(&mut f, json!({"k": 1}))),
        json!({"k": 1, "a": 1, "b": 2})
    );
}

#[test]
fn if_takes_one_branch() {
    let v = json!({ "if": "has:big", "then": { "task": "archive" }, "else": { "task": "notify" } });
    let mut f = flow(v.clone());
    let s = start(&mut f, json!({"big": 1}));
    assert_eq!(
        tasks(&f, &s),
        [("0_0".into(), "archive".into(), json!({"big": 1}))]
    );
    assert_eq!(state(&f, "0_1"), "skipped");
    assert_eq!(
        completed(&done(&mut f, "0_0", json!({"r": 1}))),
        json!({"r": 1})
    );
    let mut f = flow(v);
    let s = start(&mut f, json!({}));
    assert_eq!(tasks(&f, &s), [("0_1".into(), "notify".into(), json!({}))]);
    assert_eq!(state(&f, "0_0"), "skipped");
    assert_eq!(
        completed(&done(&mut f, "0_1", json!({"r": 2}))),
        json!({"r": 2})
    );
    // No else: the input passes through.
    let mut f = flow(json!({ "if": "has:big", "then": { "task": "archive" } }));
    assert_eq!(completed(&start(&mut f, json!({"x": 1}))), json!({"x": 1}));
    assert_eq!(state(&f, "0_0"), "skipped");
    // An expression that fails to evaluate fails the node, kind user.
    let mut f = flow(json!({ "sequence": [ { "if": "oops", "then": { "task": "a" } } ] }));
    let (n, kind, message) = failed(&start(&mut f, json!({})));
    assert_eq!((n.as_str(), kind), ("0_0", ErrorKind::User));
    assert_eq!(
        message,
        "`if` expression \"oops\" failed: cannot evaluate \"oops\""
    );
}

#[test]
fn each_over_zero_one_and_many() {
    let v = json!({ "each": "pages", "do": { "task": "ocr" }, "into": "texts" });
    let mut f = flow(v.clone());
    let s = start(&mut f, json!({"pages": []}));
    assert_eq!(completed(&s), json!({"pages": [], "texts": []}));
    let mut f = flow(v.clone());
    let s = start(&mut f, json!({"pages": ["p0"], "x": 1}));
    assert_eq!(
        tasks(&f, &s),
        [(
            "0_0".into(),
            "ocr".into(),
            json!({"pages": ["p0"], "x": 1, "item": "p0", "index": 0})
        )]
    );
    let s = done(&mut f, "0_0", json!({"item": "text0", "other": 1}));
    assert_eq!(
        completed(&s),
        json!({"pages": ["p0"], "x": 1, "texts": ["text0"]})
    );
    // 500 elements, no limit of its own: all at once; completed in
    // reverse, one output without `item`.
    let mut f = flow(json!({ "each": "n", "do": { "task": "sq" } }));
    let n: Vec<u64> = (0..500).collect();
    let s = start(&mut f, json!({ "n": n }));
    assert_eq!(tasks(&f, &s).len(), 500);
    for i in (1..500u64).rev() {
        let s = done(&mut f, &format!("0_{i}"), json!({"item": i * i}));
        assert_eq!(s, Step::default());
    }
    let out = completed(&done(&mut f, "0_0", json!({})));
    let mut want: Vec<Value> = (0..500u64).map(|i| json!(i * i)).collect();
    want[0] = Value::Null;
    assert_eq!(out, json!({ "n": want }));
    assert_eq!(f.progress.spawned, 500);
    assert!(f.progress.cursors.is_empty());
}

#[test]
fn each_keeps_to_its_concurrency() {
    let mut f = flow(json!({ "each": "n", "do": { "sequence": [
        { "task": "a" }, { "set": { "seen": true } }
    ] }, "concurrency": 4 }));
    let n: Vec<u64> = (0..50).collect();
    let s = start(&mut f, json!({ "n": n }));
    let mut outstanding: Vec<String> = tasks(&f, &s).into_iter().map(|t| t.0).collect();
    assert_eq!(outstanding, ["0_0_0", "0_1_0", "0_2_0", "0_3_0"]);
    let mut order = 0u64;
    let end = loop {
        assert!(outstanding.len() <= 4, "{outstanding:?}");
        // Complete in a scrambled order.
        order = order
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pick = (order >> 33) as usize % outstanding.len();
        let n = outstanding.swap_remove(pick);
        let i: u64 = n
            .split('_')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("run nid");
        let s = done(&mut f, &n, json!({ "item": i + 100 }));
        outstanding.extend(tasks(&f, &s).into_iter().map(|t| t.0));
        if let Some(e) = s.end {
            break e;
        }
    };
    assert!(outstanding.is_empty());
    let want: Vec<u64> = (100..150).collect();
    assert_eq!(
        Value::Object(match end {
            End::Completed(o) => o,
            e => panic!("{e:?}"),
        }),
        json!({ "n": want })
    );
}

#[test]
fn each_needs_an_array() {
    let mut f = flow(json!({ "each": "k", "do": { "task": "a" } }));
    let (n, kind, m) = failed(&start(&mut f, json!({})));
    assert_eq!((n.as_str(), kind), ("0", ErrorKind::User));
    assert_eq!(m, "`each`: payload.k is missing");
    let mut f = flow(json!({ "each": "k", "do": { "task": "a" } }));
    let (_, _, m) = failed(&start(&mut f, json!({"k": "abc"})));
    assert_eq!(m, "`each`: payload.k is a string, not an array");
}

/// A sequence of `n` set nodes: `n + 1` nodes.
fn sets(n: usize) -> Value {
    json!({ "sequence": vec![json!({"set": {"s": 1}}); n] })
}

#[test]
fn each_past_the_node_limit_fails() {
    // Tree: 102 nodes (sequence, each, a body of 100); 99 runs of the
    // body would make 10 002.
    let v = json!({ "sequence": [ { "each": "k", "do": sets(99) } ] });
    let mut f = flow(v.clone());
    let (n, kind, m) = failed(&start(&mut f, json!({ "k": vec![0; 99] })));
    assert_eq!((n.as_str(), kind), ("0_0", ErrorKind::User));
    assert_eq!(
        m,
        "`each`: 99 runs of 100 nodes would take the flow to 10002 nodes (at most 10000)"
    );
    let mut f = flow(v);
    let out = completed(&start(&mut f, json!({ "k": vec![0; 98] })));
    assert_eq!(out["k"], json!(vec![0; 98]));
    assert_eq!(f.progress.spawned, 9_800);
    // Nested: each run of the outer each expands the inner one, and the
    // nodes spawned add up. Tree: 53 nodes; the outer runs add 3 × 52;
    // each inner expansion 80 × 51: the third reaches 12 449.
    let mut f = flow(json!({ "each": "outer", "do": { "each": "inner", "do": sets(50) } }));
    let s = start(&mut f, json!({ "outer": [1, 2, 3], "inner": vec![0; 80] }));
    let (n, _, m) = failed(&s);
    assert_eq!(n, "0_2");
    assert!(
        m.ends_with("would take the flow to 12449 nodes (at most 10000)"),
        "{m}"
    );
    assert_eq!(state(&f, "0_0"), "done");
    // Runs of a concurrency-limited each that fails are cancelled.
    let mut f = flow(json!({ "concurrence": [
        { "each": "k", "do": { "task": "a" } },
        { "each": "big", "do": { "task": "b" } }
    ] }));
    let s = start(&mut f, json!({ "k": [1, 2], "big": vec![0; 10_000] }));
    assert_eq!(failed(&s).0, "0_1");
    assert_eq!(cancels(&s), ["0_0_0", "0_0_1"]);
}

#[test]
fn sleep_is_durable() {
    let mut f = flow(json!({ "sequence": [ { "sleep": "2s" }, { "task": "a" } ] }));
    let s = f.start(obj(json!({"x": 1})), 1_000, &mut cond);
    assert_eq!(
        s.actions,
        [Action::Sleep {
            nid: nid("0_0"),
            until_ms: 3_000
        }]
    );
    // Early: the same deadline again.
    assert_eq!(f.woke(&nid("0_0"), 2_999, &mut cond).actions, s.actions);
    // A restart: the deadline is in the progress.
    let json = serde_json::to_string(&f.progress).expect("progress serializes");
    let mut f = Flow {
        tree: f.tree,
        progress: serde_json::from_str(&json).expect("progress deserializes"),
    };
    assert_eq!(f.resume().actions, s.actions);
    let s = f.woke(&nid("0_0"), 3_000, &mut cond);
    assert_eq!(tasks(&f, &s), [("0_1".into(), "a".into(), json!({"x": 1}))]);
    // Woken twice: nothing.
    assert_eq!(f.woke(&nid("0_0"), 3_001, &mut cond), Step::default());
    assert_eq!(
        completed(&done(&mut f, "0_1", json!({"y": 1}))),
        json!({"y": 1})
    );
}

#[path = "run_tests_ends.rs"]
mod ends;
