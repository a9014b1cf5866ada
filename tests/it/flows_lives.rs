//! SPEC 12 with SPEC 3, 8 and 9: what a flow's task node counts and when
//! a flow has ended. A task node's `start_timeout` counts from when the
//! flow reaches it; a cancel that arrives once the flow has failed (while
//! a sibling is still being stopped) is rejected and the flow stays
//! failed; a flow run again by `retry` and then crash-recovered counts
//! its nodes' attempts and retries from this life only, and its record
//! counts the lives. Taskers are small `sh` scripts; what must be held
//! open waits on gate files (bounded), never on the test's clock.

use std::fs;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use spoolflow::Options;

use crate::common::*;

/// `quick` replies `{"quick": NID}`; `slow` works 3 s, then replies
/// `{"slow": true}`. Both read their payload first.
fn quick_and_slow(t: &TestRoot) {
    t.tasker(
        "org",
        "quick",
        "#!/bin/sh\ncat >/dev/null\necho \"{\\\"quick\\\":\\\"$SPOOLFLOW_NID\\\"}\"\n",
    );
    t.tasker(
        "org",
        "slow",
        "#!/bin/sh\ncat >/dev/null\nsleep 3\necho '{\"slow\":true}'\n",
    );
}

fn drop_flow(t: &TestRoot, id: &str, file: Value) {
    let mut file = file;
    file["domain"] = json!("org");
    file["id"] = json!(id);
    t.drop_task(&format!("{id}.json"), &file.to_string());
}

/// A node reached after the flow's `start_timeout` has passed since its
/// claim still gets its whole `start_timeout` to start; one that waits
/// for a worker longer than its own fails as `timeout`.
#[test]
fn a_task_nodes_start_timeout_counts_from_when_the_flow_reaches_it() {
    let t = TestRoot::new();
    quick_and_slow(&t);
    // The concurrence's nodes are queued 3 s after the claim, with a 2 s
    // start_timeout (the flow's, its nodes' default); with one worker,
    // the second waits for the first (a few ms), well within its own 2 s.
    drop_flow(
        &t,
        "late",
        json!({"start_timeout": "2s", "payload": {},
        "flow": {"sequence": [
            {"task": "slow"},
            {"concurrence": [{"task": "quick"}, {"task": "quick"}]}
        ]}}),
    );
    t.run_drain(1);
    let rec = t.must_record("late");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"quick": "0_1_1"}));

    // One worker, held 3 s by `slow`: its sibling, 1 s to start, cannot.
    let t = TestRoot::new();
    quick_and_slow(&t);
    drop_flow(
        &t,
        "starved",
        json!({"payload": {}, "flow": {"concurrence": [
            {"task": "slow"}, {"task": "quick", "start_timeout": "1s"}
        ]}}),
    );
    t.run_drain(1);
    let rec = t.must_record("starved");
    assert_eq!(rec["state"], "failed", "{rec:#}");
    assert_eq!(rec["error"]["kind"], "timeout", "{rec:#}");
    let reason = rec["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(reason, "node 0_1: not started within start_timeout 1s");
}

/// `stubborn` notes it runs, and on SIGTERM notes it and holds on until
/// the gate `let-go` opens (at most ~30 s), then exits 1. `failer` waits
/// until `stubborn` runs, then fails (exit 1, a `user` error).
fn stubborn_and_failer(t: &TestRoot) {
    t.tasker(
        "org",
        "stubborn",
        r#"#!/bin/sh
cat >/dev/null
termed=0
trap 'termed=1; touch "$SPOOLFLOW_ROOT/stubborn-termed"' TERM
touch "$SPOOLFLOW_ROOT/stubborn-running"
i=0
while [ $i -lt 600 ]; do
  if [ $termed = 1 ] && [ -e "$SPOOLFLOW_ROOT/let-go" ]; then exit 1; fi
  sleep 0.05
  i=$((i+1))
done
exit 1
"#,
    );
    t.tasker(
        "org",
        "failer",
        r#"#!/bin/sh
cat >/dev/null
i=0
while [ ! -e "$SPOOLFLOW_ROOT/stubborn-running" ] && [ $i -lt 600 ]; do
  sleep 0.05
  i=$((i+1))
done
echo "failer gives up" >&2
exit 1
"#,
    );
}

/// SPEC 8: a cancel for an ended task goes to `rejected/`. A flow whose
/// branch failed has ended, though its record waits for a sibling being
/// stopped; a cancel then must not turn `failed` into `aborted`.
#[test]
fn a_cancel_after_a_flow_failed_is_rejected_and_the_flow_stays_failed() {
    let t = TestRoot::new();
    stubborn_and_failer(&t);
    drop_flow(
        &t,
        "cf",
        json!({"payload": {}, "flow": {"concurrence": [
            {"task": "stubborn"}, {"task": "failer"}
        ]}}),
    );
    let options = Options {
        workers: 2,
        drain: true,
        // Long enough that the sibling's stop is held by its gate only.
        kill_grace: Duration::from_secs(60),
        ..Options::default()
    };
    std::thread::scope(|s| {
        let engine = s.spawn(|| t.run_drain_with(options));
        // The flow failed and is stopping its sibling, which holds on.
        wait_for("stubborn to get SIGTERM", DEADLINE, || {
            t.join("stubborn-termed").exists()
        });
        assert!(t.record("cf").is_none(), "the record waits for stubborn");
        let dir = t.join("var/spool/cancel");
        fs::write(dir.join(".cf.tmp"), "too late").unwrap();
        fs::rename(dir.join(".cf.tmp"), dir.join("cf")).unwrap();
        wait_for("the cancel to be rejected", DEADLINE, || {
            t.rejected_reason("cf").is_some()
        });
        fs::write(t.join("let-go"), "").unwrap();
        engine.join().expect("the engine thread panicked");
    });
    let reason = t.rejected_reason("cf").unwrap_or_default();
    assert!(reason.contains("has ended already"), "{reason}");
    let rec = t.must_record("cf");
    assert_eq!(rec["state"], "failed", "{rec:#}");
    assert_eq!(rec["error"]["kind"], "user", "{rec:#}");
    let message = rec["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("node 0_1: "), "{message}");
    assert!(message.contains("failer gives up"), "{message}");
    assert!(t.list("var/spool/cancel").is_empty());
}

/// `flaky` fails with a `work` error (exit 75) in the flow's first life.
/// In its second (the file `life2` exists) its runs, counted in `runs2`:
/// the first holds on (pid in `held-pid`, at most ~30 s), the second
/// fails with `work`, the third replies. Each run appends its
/// `SPOOLFLOW_ATTEMPT` to `attempts`.
fn flaky(t: &TestRoot) {
    t.tasker(
        "org",
        "flaky",
        r#"#!/bin/sh
cat >/dev/null
r="$SPOOLFLOW_ROOT"
echo "$SPOOLFLOW_ATTEMPT" >> "$r/attempts"
[ -e "$r/life2" ] || exit 75
echo x >> "$r/runs2"
n=$(wc -l < "$r/runs2")
if [ "$n" -eq 1 ]; then
  echo $$ > "$r/held-pid.tmp"; mv "$r/held-pid.tmp" "$r/held-pid"
  i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
  exit 1
fi
[ "$n" -eq 2 ] && exit 75
echo '{"flaky":"ok"}'
"#,
    );
}

fn lines(t: &TestRoot, name: &str) -> Vec<String> {
    fs::read_to_string(t.join(name))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A flow run again by `retry` is a new life: killed while its node runs
/// and recovered, the node's attempts and retries count from this life
/// (the first life's retry does not use up this one's), and the record
/// counts the flow's lives as its attempts. The flow's own options (its
/// nodes' defaults) survive the `retry`.
#[test]
fn a_retried_flow_recovered_after_a_crash_counts_this_life_only() {
    let t = TestRoot::new();
    flaky(&t);
    drop_flow(
        &t,
        "rf",
        json!({"retries": 1, "payload": {},
               "flow": {"sequence": [{"task": "flaky"}]}}),
    );
    // First life: attempt 1 fails, is retried once, attempt 2 fails.
    t.run_drain(1);
    let rec = t.must_record("rf");
    assert_eq!(rec["state"], "failed", "{rec:#}");
    assert_eq!(rec["error"]["kind"], "work", "{rec:#}");
    assert_eq!(rec["attempts"], 1);
    assert_eq!(rec["options"], json!({"retries": 1}), "kept for `retry`");
    assert_eq!(lines(&t, "attempts"), ["1", "2"]);

    let o = t.cmd().args(["retry", "rf"]).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("queued again as attempt 2"), "{said}");
    fs::write(t.join("life2"), "").unwrap();

    // Second life: killed while its first run holds on.
    let engine = t.spawn_engine(&["--workers", "1"]);
    wait_for("the first run to hold on", DEADLINE, || {
        t.join("held-pid").exists()
    });
    let held = fs::read_to_string(t.join("held-pid")).unwrap_or_default();
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    if let Ok(pid) = held.trim().parse::<i32>() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }

    // Recovered: attempt 2 of this life fails with `work` and, with this
    // life's retry unused, attempt 3 completes.
    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "1"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    let rec = t.must_record("rf");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"flaky": "ok"}));
    assert_eq!(rec["attempts"], 2, "the flow's second life");
    assert_eq!(
        rec["options"],
        json!({"retries": 1}),
        "queued again with it"
    );
    let node = rec["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["nid"] == "0_0"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(node["attempts"], 3, "{:#}", rec["nodes"]);
    assert_eq!(lines(&t, "attempts"), ["1", "2", "1", "2", "3"]);
    let recovered = t.points_named("rf", "recovered");
    assert_eq!(recovered.len(), 1, "{recovered:#?}");
    assert_eq!(recovered[0]["nid"], "0_0");
    assert_eq!(recovered[0]["attempt"], 2);
    assert_eq!(
        t.list("var/spool/history/rf"),
        ["1.json"],
        "the first life's record"
    );
}

/// The same for a `start_timeout` that only the node's `tasker.json`
/// sets: it too counts from when the flow reaches the node, so a node
/// reached 3 s after the claim, with a free worker and a 2 s bound, runs.
#[test]
fn a_tasker_json_start_timeout_of_a_later_node_counts_from_when_the_flow_reaches_it() {
    let t = TestRoot::new();
    quick_and_slow(&t);
    t.tasker_dir(
        "org",
        "bounded",
        r#"{"cmd":"cat >/dev/null; echo '{\"bounded\":true}'","start_timeout":"2s"}"#,
        &[],
    );
    drop_flow(
        &t,
        "later",
        json!({"payload": {}, "flow": {"sequence": [
            {"task": "slow"}, {"task": "bounded"}
        ]}}),
    );
    t.run_drain(2);
    let rec = t.must_record("later");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"]["bounded"], true, "{rec:#}");
}

/// SPEC 8 again, in the narrowest window: the flow's last node completed
/// and the progress that says so is being saved (a 15 MiB input makes
/// that write long enough to aim at) when a cancel comes. Whatever the
/// moment the cancel lands, the record agrees with its nodes: a flow all
/// of whose nodes completed is `completed` and the cancel is rejected; an
/// `aborted` flow has a node that did not complete.
#[test]
fn a_cancel_while_the_flows_end_is_being_saved_keeps_that_end() {
    let t = TestRoot::new();
    t.tasker("org", "cat", "#!/bin/sh\nexec cat\n");
    let blob = "y".repeat(15 << 20);
    drop_flow(
        &t,
        "f2",
        json!({"payload": {"blob": blob}, "flow": {"task": "cat"}}),
    );
    let engine = t.spawn_engine(&["--workers", "1"]);
    wait_for("the flow's claim", DEADLINE, || {
        t.join("var/spool/run/f2.json").exists()
    });
    // A progress write under way: the cancel is dropped then.
    wait_for("a progress write, or the record", DEADLINE, || {
        t.list("var/spool/run").iter().any(|n| n.ends_with(".tmp")) || t.record("f2").is_some()
    });
    let dir = t.join("var/spool/cancel");
    fs::write(dir.join(".f2.tmp"), "late cancel").unwrap();
    fs::rename(dir.join(".f2.tmp"), dir.join("f2")).unwrap();
    wait_for("the record, and the cancel taken", DEADLINE, || {
        t.record("f2").is_some() && t.list("var/spool/cancel").is_empty()
    });
    engine.signal(Signal::SIGTERM);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    let rec = t.must_record("f2");
    let nodes = rec["nodes"].as_array().cloned().unwrap_or_default();
    let all_completed = !nodes.is_empty() && nodes.iter().all(|n| n["state"] == "completed");
    if all_completed {
        assert_eq!(rec["state"], "completed", "{}", rec["error"]);
        assert_eq!(
            rec["payload"]["blob"].as_str().map(str::len),
            Some(15 << 20)
        );
        let reason = t.rejected_reason("f2").unwrap_or_default();
        assert!(!reason.is_empty(), "the cancel is rejected");
    } else {
        assert_eq!(rec["state"], "aborted", "{}", rec["nodes"]);
    }
}

/// A node fails in a `concurrence` with one worker: the worker it frees
/// goes to no sibling while the failure's progress is being saved (held
/// 2 s here): the flow has failed, and its waiting nodes end unrun.
#[test]
fn a_failed_flows_waiting_nodes_never_start() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "boom",
        "#!/bin/sh\ncat >/dev/null\necho boom >> \"$SPOOLFLOW_ROOT/effects\"\nexit 3\n",
    );
    t.tasker(
        "org",
        "fx",
        "#!/bin/sh\ncat\necho fx >> \"$SPOOLFLOW_ROOT/effects\"\n",
    );
    drop_flow(
        &t,
        "cf",
        json!({"flow": {"concurrence": [{"task": "boom"}, {"task": "fx"}, {"task": "fx"}]}}),
    );
    // The first append to the flow's journal: the failure of `boom`.
    let fault = "write:1:slow@/spool/run/cf.journal";
    let engine = t.spawn_engine_with_fault(Some(fault), &["--workers", "1"]);
    wait_for("the flow's record", DEADLINE, || t.record("cf").is_some());
    engine.signal(Signal::SIGTERM);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    let rec = t.must_record("cf");
    assert_eq!(rec["state"], "failed", "{rec}");
    assert_eq!(fs::read_to_string(t.join("effects")).unwrap(), "boom\n");
    let points = t.points("cf");
    let started: Vec<&str> = points
        .iter()
        .filter(|p| p["point"] == "started")
        .filter_map(|p| p["nid"].as_str())
        .collect();
    assert_eq!(started, ["0_0"], "only the failing node started");
}

/// SPEC 12 and 10: a flow whose progress outgrew the largest input (each
/// waiting run of an `each` keeps its input, here 40 × 1 MiB) is read back
/// after `kill -9` and goes on; it was moved to `rejected/` as too large.
#[test]
fn a_flow_whose_progress_outgrew_the_largest_input_survives_kill_9() {
    let t = TestRoot::new();
    t.tasker("org", "cat", "#!/bin/sh\nexec cat\n");
    t.tasker(
        "org",
        "hold",
        &format!(
            "#!/bin/sh\ncat >/dev/null\n{}\necho '{{}}'\n",
            wait_file("go")
        ),
    );
    let items: Vec<u32> = (0..40).collect();
    drop_flow(
        &t,
        "big",
        json!({"payload": {"items": items, "blob": "x".repeat(1 << 20)},
               "flow": {"each": "items", "do": {"sequence": [{"task": "cat"}, {"task": "hold"}]}}}),
    );
    // The largest input (16 MiB), a reply (16 MiB) and 64 KiB.
    let input_cap = (32 << 20) + (64 << 10);
    let run_file = t.join("var/spool/run/big.json");
    let engine = t.spawn_engine(&["--workers", "2"]);
    wait_for("the flow's run/ file past the input cap", DEADLINE, || {
        fs::metadata(&run_file).is_ok_and(|m| m.len() > input_cap)
    });
    engine.signal(Signal::SIGKILL);
    let _ = engine.wait(DEADLINE);
    // `list` reads such a file too (as it streams by).
    let listed = json_of(&t, &["list", "--json"]);
    assert_eq!(listed[0]["id"], "big", "{listed:#}");
    assert_eq!(listed[0]["state"], "queued", "{listed:#}");
    fs::write(t.join("go"), "").unwrap();
    let engine = t.spawn_engine(&["--workers", "2", "--drain"]);
    let (code, err) = engine.wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    assert!(t.list("var/spool/rejected").is_empty(), "{err}");
    let rec = t.must_record("big");
    assert_eq!(rec["state"], "completed", "{}", rec["error"]);
    let nodes = rec["nodes"].as_array().map_or(0, Vec::len);
    assert!(nodes >= 80, "{nodes} nodes in the record");
}
