//! A flow's ends: errors passed through or failing the flow, cancels,
//! progress across a crash and its JSON, and events that name nothing.

use serde_json::json;

use super::*;

#[test]
fn on_error_continue_passes_the_input_through() {
    let mut f = flow(json!({ "sequence": [
        { "task": "a", "on_error": "continue" },
        { "sequence": [ { "task": "b" }, { "task": "never" } ], "on_error": "continue" },
        { "concurrence": [
            { "task": "c", "on_error": "continue" }, { "task": "d" }
        ] },
        { "each": "k", "do": { "task": "e", "on_error": "continue" } }
    ] }));
    start(&mut f, json!({"x": 0, "k": [1, 2]}));
    let s = fail(&mut f, "0_0", "a broke");
    assert_eq!(tasks(&f, &s)[0].2, json!({"x": 0, "k": [1, 2]}));
    let s = fail(&mut f, "0_1_0", "b broke");
    assert_eq!(state(&f, "0_1_1"), "skipped");
    assert_eq!(state(&f, "0_1"), "failed");
    assert_eq!(tasks(&f, &s).len(), 2);
    done(&mut f, "0_2_1", json!({"x": 0, "k": [1, 2], "d": 1}));
    let s = fail(&mut f, "0_2_0", "c broke");
    assert_eq!(tasks(&f, &s).len(), 2);
    done(&mut f, "0_3_1", json!({"item": 20}));
    let s = fail(&mut f, "0_3_0", "e broke");
    assert_eq!(completed(&s), json!({"x": 0, "k": [1, 20], "d": 1}));
    let errors: Vec<(&str, &str)> = f
        .progress
        .errors
        .iter()
        .map(|e| (e.nid.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            ("0_0", "a broke"),
            ("0_1", "b broke"),
            ("0_2_0", "c broke"),
            ("0_3_0", "e broke")
        ]
    );
    assert!(f.progress.errors.iter().all(|e| e.kind == ErrorKind::User));
    assert_eq!(
        f.progress.nodes["0_0"],
        NodeProgress::Failed {
            kind: ErrorKind::User,
            message: "a broke".into(),
            task: Some(run())
        }
    );
}

#[test]
fn a_failure_cancels_running_siblings() {
    let mut f = flow(json!({ "sequence": [
        { "concurrence": [
            { "task": "a" },
            { "sequence": [ { "task": "b" }, { "task": "b2" } ] },
            { "sleep": "1h" },
            { "concurrence": [ { "task": "c" }, { "task": "d" } ] }
        ] },
        { "task": "never" }
    ] }));
    start(&mut f, json!({}));
    done(&mut f, "0_0_3_0", json!({}));
    let s = fail(&mut f, "0_0_1_0", "b broke");
    assert_eq!(
        failed(&s),
        ("0_0_1_0".into(), ErrorKind::User, "b broke".into())
    );
    assert_eq!(cancels(&s), ["0_0_0", "0_0_3_1"]);
    assert!(tasks(&f, &s).is_empty());
    for n in ["0_0_0", "0_0_2", "0_0_3", "0_0_3_1"] {
        assert_eq!(
            f.progress.nodes[n],
            NodeProgress::Failed {
                kind: ErrorKind::Aborted,
                message: "cancelled because node 0_0_1_0 failed".into(),
                task: None
            },
            "{n}"
        );
    }
    assert_eq!(state(&f, "0_0_1_1"), "skipped");
    assert_eq!(state(&f, "0_1"), "skipped");
    assert_eq!(state(&f, "0"), "failed");
    assert!(f.running_tasks().is_empty());
    assert!(f.progress.cursors.is_empty());
    // Late news of cancelled nodes changes nothing but keeps the run.
    assert_eq!(done(&mut f, "0_0_0", json!({})), Step::default());
    assert!(matches!(
        &f.progress.nodes["0_0_0"],
        NodeProgress::Failed {
            kind: ErrorKind::Aborted,
            task: Some(_),
            ..
        }
    ));
    assert_eq!(fail(&mut f, "0_0_3_1", "x"), Step::default());
    assert_eq!(f.woke(&nid("0_0_2"), i64::MAX, &mut cond), Step::default());
    assert!(matches!(&f.progress.end, Some(Ended::Failed { nid, .. }) if nid == "0_0_1_0"));
}

#[test]
fn a_failing_run_stops_the_each() {
    let mut f = flow(json!({ "each": "k", "do": { "task": "a" }, "concurrency": 2 }));
    let s = start(&mut f, json!({"k": [0, 1, 2, 3]}));
    assert_eq!(tasks(&f, &s).len(), 2);
    let s = fail(&mut f, "0_1", "no");
    assert_eq!(cancels(&s), ["0_0"]);
    assert_eq!(failed(&s).0, "0_1");
    assert_eq!(state(&f, "0_2"), "skipped");
    assert_eq!(state(&f, "0_3"), "skipped");
}

#[test]
fn nesting_three_deep() {
    let mut f = flow(json!({ "sequence": [
        { "task": "fetch" },
        { "concurrence": [
            { "sequence": [
                { "if": "has:big", "then": { "task": "shrink" }, "else": { "set": { "small": true } } },
                { "task": "resize" }
            ] },
            { "each": "tags", "do": { "concurrence": [ { "set": { "t": 1 } }, { "task": "index" } ] } }
        ] },
        { "set": { "status": "done" } }
    ] }));
    let s = start(&mut f, json!({"url": "u"}));
    assert_eq!(
        tasks(&f, &s),
        [("0_0".into(), "fetch".into(), json!({"url": "u"}))]
    );
    let s = done(
        &mut f,
        "0_0",
        json!({"url": "u", "big": true, "tags": ["x", "y"]}),
    );
    let t: Vec<String> = tasks(&f, &s).into_iter().map(|t| t.0).collect();
    assert_eq!(t, ["0_1_0_0_0", "0_1_1_0_1", "0_1_1_1_1"]);
    let s = done(&mut f, "0_1_1_1_1", json!({"item": "Y"}));
    assert!(s.actions.is_empty());
    let s = done(
        &mut f,
        "0_1_0_0_0",
        json!({"url": "u", "big": true, "tags": ["x", "y"], "w": 10}),
    );
    assert_eq!(tasks(&f, &s)[0].0, "0_1_0_1");
    assert_eq!(tasks(&f, &s)[0].2["w"], json!(10));
    done(&mut f, "0_1_1_0_1", json!({"item": "X", "i": 1}));
    let s = done(
        &mut f,
        "0_1_0_1",
        json!({"url": "u", "big": true, "tags": ["x", "y"], "w": 5}),
    );
    assert_eq!(
        completed(&s),
        json!({"url": "u", "big": true, "tags": ["X", "Y"], "w": 5, "status": "done"})
    );
}

#[test]
fn progress_survives_a_crash_mid_flow() {
    let v = json!({ "sequence": [
        { "task": "a" },
        { "concurrence": [ { "task": "b" }, { "each": "k", "do": { "task": "c" }, "concurrency": 2 } ] },
        { "task": "d" }
    ] });
    let mut f = flow(v.clone());
    start(&mut f, json!({"k": [1, 2, 3]}));
    done(&mut f, "0_0", json!({"k": [1, 2, 3]}));
    done(&mut f, "0_1_1_0", json!({"item": 10}));
    // Outstanding now: 0_1_0, 0_1_1_1, 0_1_1_2.
    let json = serde_json::to_value(&f.progress).expect("progress serializes");
    assert_eq!(json["nodes"]["0_1_1_0"]["state"], "done");
    assert_eq!(json["nodes"]["0_1_0"]["state"], "running");
    let progress: Progress = serde_json::from_value(json).expect("progress deserializes");
    assert_eq!(progress, f.progress);
    let mut g = Flow {
        tree: parse(&v).expect("tree"),
        progress,
    };
    let r = g.resume();
    assert_eq!(r.end, None);
    let t: Vec<(String, Value)> = tasks(&g, &r).into_iter().map(|t| (t.0, t.2)).collect();
    assert_eq!(
        t,
        [
            ("0_1_0".into(), json!({"k": [1, 2, 3]})),
            (
                "0_1_1_1".into(),
                json!({"k": [1, 2, 3], "item": 2, "index": 1})
            ),
            (
                "0_1_1_2".into(),
                json!({"k": [1, 2, 3], "item": 3, "index": 2})
            ),
        ]
    );
    assert_eq!(
        g.running_tasks(),
        [nid("0_1_0"), nid("0_1_1_1"), nid("0_1_1_2")]
    );
    // Resume changes nothing.
    assert_eq!(g.progress, f.progress);
    // Going on: the same as without the crash, and without cursors (an
    // older progress) too.
    let mut h = Flow {
        tree: parse(&v).expect("tree"),
        progress: Progress {
            cursors: Default::default(),
            ..g.progress.clone()
        },
    };
    for fl in [&mut f, &mut g, &mut h] {
        assert!(done(fl, "0_1_1_2", json!({"item": 30})).actions.is_empty());
        assert!(done(fl, "0_1_0", json!({"b": 1})).actions.is_empty());
        let s = done(fl, "0_1_1_1", json!({"item": 20}));
        assert_eq!(
            tasks(fl, &s),
            [("0_2".into(), "d".into(), json!({"b": 1, "k": [10, 20, 30]}))]
        );
        assert_eq!(
            completed(&done(fl, "0_2", json!({"z": 1}))),
            json!({"z": 1})
        );
    }
    assert_eq!(f.progress, g.progress);
    assert_eq!(g.progress, h.progress);
    // After the end, resume reports it.
    assert_eq!(g.resume().end, Some(End::Completed(obj(json!({"z": 1})))));
}

#[test]
fn progress_json_shape() {
    let p = Progress {
        nodes: [
            (
                "0".to_string(),
                NodeProgress::Running {
                    input: obj(json!({"a": 1})),
                    again: None,
                },
            ),
            (
                "0_0".to_string(),
                NodeProgress::Sleeping {
                    input: Object::new(),
                    until_ms: 5,
                },
            ),
            (
                "0_1".to_string(),
                NodeProgress::Done {
                    output: Object::new(),
                    task: None,
                },
            ),
            (
                "0_2".to_string(),
                NodeProgress::Failed {
                    kind: ErrorKind::Timeout,
                    message: "m".into(),
                    task: Some(run()),
                },
            ),
            ("0_3".to_string(), NodeProgress::Skipped),
        ]
        .into_iter()
        .collect(),
        ..Progress::default()
    };
    let v = serde_json::to_value(&p).expect("serializes");
    assert_eq!(
        v,
        json!({
            "nodes": {
                "0": {"state": "running", "input": {"a": 1}},
                "0_0": {"state": "sleeping", "input": {}, "until_ms": 5},
                "0_1": {"state": "done", "output": {}},
                "0_2": {"state": "failed", "kind": "timeout", "message": "m",
                        "task": {"taskee": "t", "attempts": 1, "started_at": null, "ended_at": null}},
                "0_3": {"state": "skipped"}
            },
            "errors": [],
            "spawned": 0
        })
    );
    assert_eq!(
        serde_json::from_value::<Progress>(v).expect("deserializes"),
        p
    );
    assert_eq!(
        serde_json::from_value::<Progress>(json!({"nodes": {}})).expect("defaults"),
        Progress::default()
    );
}

#[test]
fn cancel_stops_running_tasks() {
    let mut f = flow(json!({ "concurrence": [
        { "task": "a" }, { "task": "b" }, { "sleep": "1m" }, { "sequence": [ { "task": "c" } ] }
    ] }));
    start(&mut f, json!({}));
    done(&mut f, "0_1", json!({}));
    let s = f.cancel();
    assert_eq!(cancels(&s), ["0_0", "0_3_0"]);
    assert_eq!(s.end, None);
    assert!(f.running_tasks().is_empty());
    assert!(f.is_ended());
    assert_eq!(
        f.end(),
        Some(End::Failed {
            nid: Nid::root(),
            kind: ErrorKind::Aborted,
            message: "cancelled".into()
        })
    );
    assert_eq!(state(&f, "0_1"), "done");
    assert_eq!(state(&f, "0_2"), "failed");
    assert_eq!(done(&mut f, "0_3_0", json!({})), Step::default());
    assert_eq!(f.cancel(), Step::default());
    assert!(f.resume().actions.is_empty());
    // Never started.
    let mut f = flow(json!({ "task": "a" }));
    assert!(f.cancel().actions.is_empty());
    assert!(f.is_ended());
    assert_eq!(start(&mut f, json!({})), Step::default());
}

#[test]
fn events_for_unknown_nodes_are_ignored() {
    let mut f = flow(json!({ "sequence": [ { "task": "a" }, { "set": {} } ] }));
    start(&mut f, json!({}));
    assert_eq!(done(&mut f, "0_1", json!({})), Step::default());
    assert_eq!(done(&mut f, "0_7", json!({})), Step::default());
    assert_eq!(done(&mut f, "0", json!({})), Step::default());
    assert_eq!(f.woke(&nid("0_0"), 0, &mut cond), Step::default());
    assert_eq!(f.running_tasks(), [nid("0_0")]);
}

#[test]
fn the_first_failure_is_named() {
    let mut f = flow(json!({ "concurrence": [
        { "sequence": [ { "task": "a" } ], "on_error": "continue" },
        { "sequence": [ { "set": {} }, { "task": "b" } ] }
    ] }));
    start(&mut f, json!({}));
    let s = fail(&mut f, "0_0_0", "a broke");
    assert_eq!(s, Step::default());
    let s = f.task_failed(
        &nid("0_1_1"),
        ErrorKind::Timeout,
        "too slow".into(),
        run(),
        0,
        &mut cond,
    );
    assert_eq!(
        failed(&s),
        ("0_1_1".into(), ErrorKind::Timeout, "too slow".into())
    );
    for n in ["0_1", "0"] {
        assert!(
            matches!(&f.progress.nodes[n], NodeProgress::Failed { kind: ErrorKind::Timeout, message, .. } if message == "too slow")
        );
    }
    assert_eq!(f.progress.errors.len(), 1);
}

#[test]
fn an_unresolved_stored_flow_fails_config() {
    let mut f = flow(json!({ "sequence": [ { "flow": "x" } ] }));
    let (n, kind, m) = failed(&start(&mut f, json!({})));
    assert_eq!((n.as_str(), kind), ("0_0", ErrorKind::Config));
    assert_eq!(m, "stored flow \"x\" was not resolved");
}

#[test]
fn a_root_that_continues_completes_with_its_input() {
    let mut f = flow(json!({ "sequence": [ { "task": "a" } ], "on_error": "continue" }));
    start(&mut f, json!({"x": 1}));
    let s = fail(&mut f, "0_0", "broke");
    assert_eq!(completed(&s), json!({"x": 1}));
    assert_eq!(state(&f, "0"), "failed");
    assert_eq!(f.end(), s.end);
    assert_eq!(f.resume().end, s.end);
    assert_eq!(f.progress.errors.len(), 1);
    assert_eq!(f.progress.errors[0].nid, "0");
}

#[test]
fn an_uncompleted_payload_is_kept_for_the_next_run_and_after_a_crash() {
    let mut f = flow(json!({ "sequence": [
        { "task": "a", "on_error": "continue" },
        { "task": "b" }
    ]}));
    start(&mut f, json!({"x": 0}));
    let step = f.task_uncompleted(&nid("0_0"), obj(json!({"n": 1})), 250);
    let again = Action::Again {
        nid: nid("0_0"),
        after_ms: 250,
    };
    assert_eq!(step.actions, [again]);
    assert_eq!(step.end, None);
    // After a crash the node runs again from that payload.
    let resumed = Flow {
        tree: f.tree.clone(),
        progress: serde_json::from_value(serde_json::to_value(&f.progress).unwrap()).unwrap(),
    };
    let step = resumed.resume();
    assert_eq!(
        tasks(&resumed, &step),
        [("0_0".into(), "a".into(), json!({"n": 1}))]
    );
    // Its input stays the flow's (what `on_error: continue` passes on).
    let step = fail(&mut f, "0_0", "gave up");
    assert_eq!(
        tasks(&f, &step),
        [("0_1".into(), "b".into(), json!({"x": 0}))]
    );
    // Nothing for a node that does not run, nor once the flow has ended.
    assert!(f
        .task_uncompleted(&nid("0_0"), Object::new(), 0)
        .actions
        .is_empty());
    done(&mut f, "0_1", json!({}));
    assert!(f.is_ended());
    assert!(f
        .task_uncompleted(&nid("0_1"), Object::new(), 0)
        .actions
        .is_empty());
}
