//! SPEC 12 flows: `if`, `concurrence` and `each` nodes.

use super::*;

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
