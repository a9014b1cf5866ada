//! SPEC 12 flows: sequences and `set`, stored flows, and the limits of
//! a tree's shape.

use super::*;

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
