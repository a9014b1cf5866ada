//! SPEC 12 flows: a failing node (`on_error`, retries, the flow's
//! failure) and cancelling a flow.

use super::*;

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
    wait_grandchildren_gone(&t);
    assert_points_tagged(&t, "x2", &["0_0_0", "0_0_1_0", "0_0_2"], "failed");
    assert_eq!(node(&rec, "0_0_2")["state"], "failed");
    // The stopped siblings ran: they have their entries, not completed.
    assert_aborted(&rec, &["0_0_0", "0_0_1_0"]);
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
            t.lines_of("hung-k1").len() == 4
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

    let rec = assert_cancelled(&t, "k1", "enough");
    assert_eq!(
        nids_run(&t, "k1").into_iter().collect::<BTreeSet<_>>(),
        set_of(&hung),
        "the node after the concurrence never ran"
    );
    wait_grandchildren_gone(&t);
    assert_points_tagged(&t, "k1", &hung, "aborted");
    assert!(t.list("var/spool/cancel").is_empty());
    assert!(t.list("var/spool/rejected").is_empty());
    // The stopped nodes ran: each has its entry, aborted.
    assert_aborted(&rec, &hung);
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
    let rec = assert_cancelled(&t, "k2", "wake up");
    assert_eq!(nids_run(&t, "k2"), ["0_0"]);
    assert_eq!(node(&rec, "0_0")["state"], "completed");
    assert_points_tagged(&t, "k2", &["0_0"], "aborted");
}
