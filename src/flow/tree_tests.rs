//! Tests of the flow tree: parsing every kind, refusals with their
//! messages, the limits, nids, and stored flows.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;

fn p(v: Value) -> FlowNode {
    parse(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn err(v: Value) -> String {
    match parse(&v) {
        Ok(n) => panic!("{v} parsed as {n:?}"),
        Err(e) => e.to_string(),
    }
}

fn task(name: &str) -> FlowNode {
    FlowNode::new(Kind::Task {
        taskee: name.parse().expect("test taskee"),
        options: TaskOptions::default(),
        priority: None,
        headers: None,
    })
}

fn obj(v: Value) -> Object {
    match v {
        Value::Object(o) => o,
        _ => unreachable!("test values are objects"),
    }
}

#[test]
fn parses_every_kind() {
    let v = json!({ "sequence": [
        { "task": "fetch", "timeout": "30s", "start_timeout": 600, "retries": 2,
          "retry_on_timeout": true, "priority": -3, "headers": {"h": 1}, "on_error": "continue" },
        { "concurrence": [ { "task": "resize" }, { "task": "index" } ], "merge": "last" },
        { "if": "payload.size > 1000", "then": { "task": "archive" }, "else": { "task": "notify" } },
        { "if": "true", "then": { "set": {} } },
        { "set": { "status": "done", "gone": null } },
        { "each": "pages", "do": { "task": "ocr" }, "concurrency": 4, "into": "texts" },
        { "sleep": "250ms" },
        { "flow": "thumbnails", "on_error": "fail" }
    ] });
    let n = p(v.clone());
    let Kind::Sequence(c) = &n.kind else {
        panic!("{n:?}")
    };
    assert_eq!(c.len(), 8);
    let Kind::Task {
        taskee,
        options,
        priority,
        headers,
    } = &c[0].kind
    else {
        panic!("{:?}", c[0])
    };
    assert_eq!(taskee.as_str(), "fetch");
    assert_eq!(options.timeout.map(|d| d.0.as_secs()), Some(30));
    assert_eq!(options.start_timeout.map(|d| d.0.as_secs()), Some(600));
    assert_eq!(options.retries, Some(2));
    assert_eq!(options.retry_on_timeout, Some(true));
    assert_eq!(*priority, Some(-3));
    assert_eq!(headers.as_ref(), Some(&obj(json!({"h": 1}))));
    assert_eq!(c[0].on_error, OnError::Continue);
    assert!(
        matches!(&c[1].kind, Kind::Concurrence { children, merge: Merge::Last } if children.len() == 2)
    );
    assert!(
        matches!(&c[2].kind, Kind::If { cond, otherwise: Some(_), .. } if cond == "payload.size > 1000")
    );
    assert!(matches!(
        &c[3].kind,
        Kind::If {
            otherwise: None,
            ..
        }
    ));
    assert_eq!(
        c[4].kind,
        Kind::Set(obj(json!({"status": "done", "gone": null})))
    );
    assert!(
        matches!(&c[5].kind, Kind::Each { key, concurrency: Some(4), into: Some(i), .. }
        if key == "pages" && i == "texts")
    );
    assert!(matches!(&c[6].kind, Kind::Sleep(d) if d.0.as_millis() == 250));
    assert_eq!(c[7], FlowNode::new(Kind::Stored("thumbnails".into())));
    // Back to JSON and again: the same tree.
    assert_eq!(p(to_json(&n)), n);
    // The root, its 8 children, 2 branches, then and else, then, do.
    assert_eq!(count(&n), 1 + 8 + 2 + 2 + 1 + 1);
    assert_eq!(depth(&n), 3);
    assert_eq!(conditions(&n), ["payload.size > 1000", "true"]);
}

#[test]
fn to_json_leaves_defaults_out() {
    let n = p(json!({ "concurrence": [], "merge": "deep", "on_error": "fail" }));
    assert_eq!(to_json(&n), json!({ "concurrence": [] }));
    let n = p(json!({ "sleep": 1.5 }));
    assert_eq!(to_json(&n), json!({ "sleep": "1500ms" }));
    let n = p(json!({ "task": "t", "timeout": null, "on_error": null }));
    assert_eq!(n, task("t"));
}

#[test]
fn a_name_at_the_root_is_a_stored_flow() {
    assert_eq!(
        p(json!("thumbnails")),
        FlowNode::new(Kind::Stored("thumbnails".into()))
    );
    assert!(err(json!("../etc")).starts_with("invalid stored flow name \"../etc\""));
    assert!(err(json!({"flow": "a.b"})).starts_with("invalid stored flow name"));
}

/// Each case's refusal, word for word (the node's address first).
fn assert_refusals(cases: &[(Value, &str)]) {
    for (v, want) in cases {
        assert_eq!(err(v.clone()), *want, "{v}");
    }
}

/// A node that is not one node of one kind, or has keys of another kind.
#[test]
fn refusals_of_a_nodes_shape_name_the_node() {
    let cases = [
        (
            json!({"sequence": [{"task": "a"}, {"tsak": "b"}]}),
            "node 0_1: unknown key \"tsak\"",
        ),
        (
            json!({"task": "a", "sequence": []}),
            "node 0: two kind keys \"task\" and \"sequence\" (a node has exactly one)",
        ),
        (
            json!({"on_error": "continue"}),
            "node 0: no kind key (give one of task, sequence, concurrence, if, set, each, sleep, flow)",
        ),
        (json!([]), "node 0: a node must be a JSON object, not an array"),
        (
            json!({"sequence": [1]}),
            "node 0_0: a node must be a JSON object, not a number",
        ),
        (
            json!({"sequence": [], "timeout": "1s"}),
            "node 0: \"timeout\" belongs on task nodes, not on sequence nodes",
        ),
        (
            json!({"task": "a", "merge": "deep"}),
            "node 0: \"merge\" belongs on concurrence nodes, not on task nodes",
        ),
        (
            json!({"flow": {"task": "a"}}),
            "node 0: `flow` must be the name of a stored flow (a string)",
        ),
    ];
    assert_refusals(&cases);
}

/// The keys of `sequence`, `concurrence`, `if`, `set`, `each` and `sleep`.
#[test]
fn refusals_of_a_kinds_own_keys_name_the_node() {
    let cases = [
        (
            json!({"sequence": [{"task": "a"}, {"task": "b"}, {"if": 3, "then": {"task": "c"}}]}),
            "node 0_2: `if` must be a string",
        ),
        (
            json!({"sequence": {}}),
            "node 0: `sequence` must be an array of nodes",
        ),
        (
            json!({"concurrence": [], "merge": "mixed"}),
            "node 0: `merge` must be \"deep\", \"first\" or \"last\"",
        ),
        (json!({"if": "x"}), "node 0: `if` needs `then`"),
        (
            json!({"if": "x", "then": {"task": "a"}, "else": {"task": "b", "x": 1}}),
            "node 0_1: unknown key \"x\"",
        ),
        (
            json!({"set": [1]}),
            "node 0: `set` must be an object of payload keys and values",
        ),
        (json!({"each": "k"}), "node 0: `each` needs `do`"),
        (
            json!({"each": "", "do": {"task": "a"}}),
            "node 0: `each` must be a payload key (a non-empty string)",
        ),
        (
            json!({"each": "k", "do": {"task": "a"}, "concurrency": 0}),
            "node 0: `concurrency` must be an integer of at least 1",
        ),
        (
            json!({"each": "k", "do": {"task": "a"}, "concurrency": 1.5}),
            "node 0: `concurrency` must be an integer of at least 1",
        ),
        (
            json!({"each": "k", "do": {"task": "a"}, "into": 3}),
            "node 0: `into` must be a payload key (a non-empty string)",
        ),
        (
            json!({"each": "k", "do": {"sequence": [{"tasc": 1}]}}),
            "node 0_*_0: unknown key \"tasc\"",
        ),
    ];
    assert_refusals(&cases);
    assert!(err(json!({"sleep": "5x"})).starts_with("node 0: invalid duration for `sleep`"));
}

/// A task node's taskee and options.
#[test]
fn refusals_of_a_task_nodes_options_name_the_node() {
    let cases = [
        (
            json!({"task": 7}),
            "node 0: `task` must be a taskee (a string)",
        ),
        (
            json!({"task": "a", "retries": -1}),
            "node 0: `retries` must be a non-negative integer (at most 4294967295)",
        ),
        (
            json!({"task": "a", "retry_on_timeout": "yes"}),
            "node 0: `retry_on_timeout` must be true or false",
        ),
        (
            json!({"task": "a", "priority": 1e10}),
            "node 0: `priority` must be an integer (i32)",
        ),
        (
            json!({"task": "a", "headers": []}),
            "node 0: `headers` must be a JSON object",
        ),
        (
            json!({"task": "a", "on_error": "ignore"}),
            "node 0: `on_error` must be \"fail\" or \"continue\"",
        ),
    ];
    assert_refusals(&cases);
    assert!(err(json!({"task": "../bin/sh"})).starts_with("node 0: invalid taskee"));
    assert!(err(json!({"task": "a", "timeout": -1}))
        .starts_with("node 0: invalid duration for `timeout`"));
}

/// A chain of `depth` nodes: sequences around one task.
fn nested(depth: usize) -> Value {
    let mut v = json!({"task": "t"});
    for _ in 1..depth {
        v = json!({ "sequence": [v] });
    }
    v
}

#[test]
fn depth_limit() {
    let n = p(nested(64));
    assert_eq!(depth(&n), 64);
    assert_eq!(err(nested(65)), "flow is deeper than 64 levels");
    // Far deeper input is refused without running out of stack.
    let mut v = json!({"task": "t"});
    for _ in 0..100_000 {
        // Not `json!`, which copies its values recursively.
        let mut o = Object::new();
        o.insert("sequence".into(), Value::Array(vec![v]));
        v = Value::Object(o);
    }
    let e = parse(&v).map(|_| ()).unwrap_err();
    assert_eq!(e.to_string(), "flow is deeper than 64 levels");
    // Values this deep must not be dropped recursively either.
    std::mem::forget(v);
}

#[test]
fn node_limit() {
    let tasks = |n: usize| json!({ "sequence": vec![json!({"task": "t"}); n] });
    assert_eq!(count(&p(tasks(9_999))), 10_000);
    assert_eq!(err(tasks(10_000)), "flow has 10001 nodes (at most 10000)");
}

#[test]
fn nids_address_nodes() {
    let n = p(json!({ "sequence": [
        { "task": "a" },
        { "concurrence": [ { "task": "b" }, { "if": "x", "then": { "task": "c" } } ] },
        { "each": "k", "do": { "sequence": [ { "task": "d" } ] } }
    ] }));
    let at_ = |s: &str| at(&n, &s.parse().expect("test nid"));
    assert_eq!(at_("0"), Some(&n));
    assert_eq!(at_("0_0"), Some(&task("a")));
    assert_eq!(at_("0_1_0"), Some(&task("b")));
    assert_eq!(at_("0_1_1_0"), Some(&task("c")));
    assert_eq!(at_("0_1_1_1"), None);
    assert_eq!(at_("0_1_2"), None);
    assert_eq!(at_("0_2_0_0"), Some(&task("d")));
    assert_eq!(at_("0_2_417_0"), Some(&task("d")));
    assert_eq!(at_("0_2_417_1"), None);
    assert_eq!(at_("0_0_0"), None);
    assert_eq!(at_("0_3"), None);
}

/// A lookup over a map of stored flows, counting calls.
fn store(flows: &[(&str, Value)]) -> (HashMap<String, Value>, usize) {
    (
        flows
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        0,
    )
}

fn resolve_with(
    node: FlowNode,
    s: &mut (HashMap<String, Value>, usize),
) -> Result<FlowNode, FlowError> {
    resolve(node, &mut |name: &str| {
        s.1 += 1;
        if name == "broken" {
            return Err("permission denied".into());
        }
        Ok(s.0.get(name).cloned())
    })
}

#[test]
fn stored_flows_are_inlined() {
    let mut s = store(&[
        (
            "thumbs",
            json!({ "sequence": [ { "task": "resize" }, { "flow": "small" } ] }),
        ),
        ("small", json!({ "task": "shrink", "on_error": "continue" })),
    ]);
    let n = p(json!({ "concurrence": [
        { "flow": "thumbs" }, { "flow": "small" }, { "flow": "thumbs", "on_error": "continue" }
    ] }));
    let r = resolve_with(n, &mut s).unwrap();
    let thumbs = p(json!({ "sequence": [
        { "task": "resize" }, { "task": "shrink", "on_error": "continue" }
    ] }));
    let mut thumbs_c = thumbs.clone();
    thumbs_c.on_error = OnError::Continue;
    let small = p(json!({ "task": "shrink", "on_error": "continue" }));
    assert_eq!(
        r,
        FlowNode::new(Kind::Concurrence {
            children: vec![thumbs, small, thumbs_c],
            merge: Merge::Deep
        })
    );
    assert_eq!(s.1, 2, "each stored flow is looked up once");
    // A task file's `"flow": "NAME"`.
    let r = resolve_with(p(json!("thumbs")), &mut s).unwrap();
    assert_eq!(count(&r), 3);
    // A tree without stored flows is unchanged, and nothing is looked up.
    let mut empty = store(&[]);
    let t = p(json!({"sequence": [{"task": "a"}]}));
    assert_eq!(resolve_with(t.clone(), &mut empty).unwrap(), t);
    assert_eq!(empty.1, 0);
}

#[test]
fn stored_flow_refusals() {
    let mut s = store(&[
        (
            "a",
            json!({ "sequence": [ { "task": "x" }, { "flow": "b" } ] }),
        ),
        ("b", json!({ "if": "c", "then": { "flow": "a" } })),
        ("self", json!({ "flow": "self" })),
        ("bad", json!({ "sequence": [ { "tsak": "x" } ] })),
        ("uses-missing", json!({ "flow": "nope" })),
        ("uses-broken", json!({ "flow": "broken" })),
    ]);
    let stored = |name: &str| FlowNode::new(Kind::Stored(name.into()));
    let e = |name: &str, s: &mut _| resolve_with(stored(name), s).unwrap_err().to_string();
    assert_eq!(
        e("a", &mut s),
        "stored flow \"a\" includes itself (a -> b -> a)"
    );
    assert_eq!(
        e("b", &mut s),
        "stored flow \"b\" includes itself (b -> a -> b)"
    );
    assert_eq!(
        e("self", &mut s),
        "stored flow \"self\" includes itself (self -> self)"
    );
    assert_eq!(e("nope", &mut s), "unknown stored flow \"nope\"");
    assert_eq!(e("uses-missing", &mut s), "unknown stored flow \"nope\"");
    assert_eq!(
        e("uses-broken", &mut s),
        "stored flow \"broken\": permission denied"
    );
    assert_eq!(
        e("bad", &mut s),
        "stored flow \"bad\": node 0_0: unknown key \"tsak\""
    );
    assert!(e("../x", &mut s).starts_with("invalid stored flow name \"../x\""));
}

#[test]
fn limits_hold_after_inlining() {
    // Depth: 40 + 40 levels.
    let mut s = store(&[("deep", nested(40))]);
    let mut v = json!({"flow": "deep"});
    for _ in 1..40 {
        v = json!({ "sequence": [v] });
    }
    let e = resolve_with(p(v), &mut s).unwrap_err();
    assert_eq!(e, FlowError::TooDeep);
    // Count: 2 × 5 001 + 1 nodes.
    let mut s = store(&[(
        "big",
        json!({ "sequence": vec![json!({"task": "t"}); 5_000] }),
    )]);
    let two = p(json!({ "sequence": [ {"flow": "big"}, {"flow": "big"} ] }));
    let e = resolve_with(two, &mut s).unwrap_err();
    assert_eq!(e.to_string(), "flow has 10003 nodes (at most 10000)");
    // Exponential: f0 uses f1 twice, which uses f2 twice, … (2^40 nodes):
    // refused by measure, without building anything.
    let flows: Vec<(String, Value)> = (0..40)
        .map(|i| {
            let inner = json!({ "flow": format!("f{}", i + 1) });
            (
                format!("f{i}"),
                json!({ "sequence": [inner.clone(), inner] }),
            )
        })
        .chain([("f40".to_string(), json!({"task": "t"}))])
        .collect();
    let mut s = (flows.into_iter().collect::<HashMap<_, _>>(), 0);
    let e = resolve_with(FlowNode::new(Kind::Stored("f0".into())), &mut s).unwrap_err();
    assert!(
        matches!(e, FlowError::TooDeep | FlowError::TooMany(_)),
        "{e}"
    );
    // Only sequences one level each: 41 levels deep, far too many nodes.
    let flows: Vec<(String, Value)> = (0..20)
        .map(|i| {
            let inner = json!({ "flow": format!("g{}", i + 1) });
            (
                format!("g{i}"),
                json!({ "sequence": [inner.clone(), inner] }),
            )
        })
        .chain([("g20".to_string(), json!({"task": "t"}))])
        .collect();
    let mut s = (flows.into_iter().collect::<HashMap<_, _>>(), 0);
    let e = resolve_with(FlowNode::new(Kind::Stored("g0".into())), &mut s).unwrap_err();
    assert_eq!(e, FlowError::TooMany((1 << 21) - 1));
    // A chain of stored flows that only name the next one.
    let flows: Vec<(String, Value)> = (0..100)
        .map(|i| (format!("h{i}"), json!({ "flow": format!("h{}", i + 1) })))
        .collect();
    let mut s = (flows.into_iter().collect::<HashMap<_, _>>(), 0);
    let e = resolve_with(FlowNode::new(Kind::Stored("h0".into())), &mut s).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("stored flows nest more than 64 deep (h0 -> h1"),
        "{e}"
    );
}
