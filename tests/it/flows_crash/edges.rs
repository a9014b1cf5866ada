//! Crash edges of flows: a kill before the first progress, a claim cut
//! short, a node that replied or was stopped before a kill, replies
//! journaled at a start, an `uncompleted` node.

use super::*;

/// SPEC 10 and 12: a flow killed while its first task node runs, before
/// any node ended: that node was running, so at the next start it is
/// `recovered` and runs again as a new attempt (the flow's start makes the
/// progress naming its first nodes durable before they run, so a restart
/// does not start the flow over as if nothing had run).
#[test]
fn a_flow_killed_before_its_first_progress_recovers_its_running_node() {
    let t = TestRoot::new();
    t.tasker("org", "step", &tasker(STEP));
    // Notes "<nid> <attempt> <pid>" when it starts, waits for
    // `open-<its pid>`, passes its payload through.
    t.tasker(
        "org",
        "gated",
        &format!(
            "#!/bin/sh\nin=$(cat)\necho \"$SPOOLFLOW_NID $SPOOLFLOW_ATTEMPT $$\" >> \"$SPOOLFLOW_ROOT/starts\"\n{}\nprintf '%s\\n' \"$in\"\n",
            wait_file("open-$$")
        ),
    );
    t.drop_task(
        "g1.json",
        &json!({"domain": "org", "id": "g1",
            "flow": {"sequence": [{"task": "gated"}, {"task": "step"}]},
            "payload": {"trail": "g1"}})
        .to_string(),
    );
    let starts = || -> Vec<Vec<String>> {
        fs::read_to_string(t.join("starts"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').map(str::to_string).collect())
            .collect()
    };

    let engine = t.spawn_engine(&["--workers", "2"]);
    wait_for("0_0 to start", DEADLINE, || starts().len() == 1);
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    // The scenario: the flow is in run/, its first node running in its
    // progress, no node ended.
    let progress = t.flow_progress("g1").expect("g1's progress");
    assert_eq!(progress["nodes"]["0_0"]["state"], "running", "{progress:#}");
    assert!(progress["nodes"].get("0_1").is_none(), "{progress:#}");
    let old: i32 = starts()[0][2].parse().unwrap();

    let engine = t.spawn_engine(&["--drain", "--workers", "2"]);
    wait_for("0_0 to start again", DEADLINE, || starts().len() == 2);
    wait_for("the old run to be killed", DEADLINE, || process_gone(old));
    let new = starts()[1].clone();
    fs::write(t.join(&format!("open-{}", new[2])), "").unwrap();
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");

    let rec = t.must_record("g1");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"trail": "g1/0_1"}));
    let points = t.points("g1");
    let seen = node_points(&points, "0_0");
    assert_eq!(new[0], "0_0");
    assert_eq!(
        recovered_of(&points, "0_0"),
        1,
        "0_0 was running at the kill: it is `recovered` (SPEC 10); its points: {seen}"
    );
    assert_eq!(
        new[1], "2",
        "the run after the crash is a new attempt (SPEC 10); 0_0's points: {seen}"
    );
    let node = rec["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["nid"] == "0_0"))
        .expect("node 0_0 in the record")
        .clone();
    assert_eq!(node["attempts"], 2, "{node}; 0_0's points: {seen}");
}

/// A flow file in `in/<domain>/` is copied into `run/` (it does not name
/// its domain) and removed from `in/` once the copy is durable. The
/// engine dies in between (a failed fsync of `run/` stops it): the next
/// start runs the flow once from `run/`, and takes the copy left in `in/`
/// for what it is, the claim's own original, not a duplicate.
#[test]
fn a_claim_cut_short_leaves_no_duplicate_behind() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "fx",
        "#!/bin/sh\ncat\necho ran >> \"$SPOOLFLOW_ROOT/effects\"\n",
    );
    t.drop_task_in("org", "cut.json", r#"{"id":"cut","flow":{"task":"fx"}}"#);
    // The claim's temporary's fsync, then the fsync of run/ itself.
    let engine = t.spawn_engine_with_fault(Some("fsync:2:eio@/spool/run"), &["--drain"]);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(1), "{err}");
    assert!(t.join("var/spool/run/cut.json").exists(), "{err}");
    assert!(t.join("var/spool/in/org/cut.json").exists(), "{err}");
    t.run_drain(1);
    assert_eq!(t.must_record("cut")["state"], "completed");
    assert_eq!(fs::read_to_string(t.join("effects")).unwrap(), "ran\n");
    assert!(
        t.list("var/spool/rejected").is_empty(),
        "{:?}",
        t.list("var/spool/rejected")
    );
    assert!(!t.join("var/spool/in/org/cut.json").exists());
}

/// Finishing such a claim at the next start removes the original only
/// once `run/` is durable (the copy may be one the dead engine never made
/// durable): a failed fsync of `run/` then stops the start, the original
/// kept in `in/`.
#[test]
fn a_claim_cut_short_is_finished_only_once_run_is_durable() {
    let t = TestRoot::new();
    t.tasker("org", "fx", "#!/bin/sh\ncat\n");
    // A standalone task (a flow's recovery writes its progress into run/
    // at the start, which the fault below would count too).
    t.drop_task_in("org", "cut.json", r#"{"id":"cut","tasker":"fx"}"#);
    let engine = t.spawn_engine_with_fault(Some("fsync:2:eio@/spool/run"), &["--drain"]);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(1), "{err}");
    assert!(t.join("var/spool/run/cut.json").exists(), "{err}");
    // The next start's first fsync of run/ is the one before the original
    // goes: it fails.
    let engine = t.spawn_engine_with_fault(Some("fsync:1:eio@/var/spool/run"), &["--drain"]);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(1), "the start stops on the failed fsync:\n{err}");
    assert!(
        t.join("var/spool/in/org/cut.json").exists(),
        "the original stays while run/ is not known durable:\n{err}"
    );
    t.run_drain(1);
    assert_eq!(t.must_record("cut")["state"], "completed");
    assert!(!t.join("var/spool/in/org/cut.json").exists());
    assert!(t.list("var/spool/rejected").is_empty());
}

/// The same file dropped again while its task waits in `run/` (claimed
/// from `in/<domain>/`, the engine stopped) is a duplicate at the next
/// start, rejected: it is newer than the claim's copy.
#[test]
fn the_same_file_dropped_again_while_its_task_waits_is_a_duplicate() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "held",
        &format!("#!/bin/sh\ncat\n{}\n", wait_file("go")),
    );
    let body = r#"{"id":"second","tasker":"held"}"#;
    t.drop_task_in("org", "first.json", r#"{"id":"first","tasker":"held"}"#);
    let engine = t.spawn_engine(&["--workers", "1", "--grace", "0s"]);
    wait_for("first to start", DEADLINE, || {
        t.point_names("first").iter().any(|n| n == "started")
    });
    t.drop_task_in("org", "second.json", body);
    wait_for("second claimed", DEADLINE, || {
        t.join("var/spool/run/second.json").exists()
            && !t.join("var/spool/in/org/second.json").exists()
    });
    engine.signal(Signal::SIGTERM);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    // Dropped again, identical, while the engine is down.
    t.drop_task_in("org", "second.json", body);
    fs::write(t.join("go"), "").unwrap();
    t.run_drain(1);
    assert_eq!(t.must_record("second")["state"], "completed");
    let why = t
        .rejected_reason("second.json")
        .expect("the second drop rejected");
    assert!(why.contains("duplicate id"), "{why}");
}

/// A flow node whose tasker replied, but whose end was not yet in the
/// flow's durable progress when the engine was killed (the progress write
/// held by the debug fault), is completed at the next start from the
/// reply the engine had journaled: its tasker does not run again, and the
/// flow goes on from its reply.
#[test]
fn a_flow_node_that_replied_before_a_kill_9_does_not_run_again() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "step",
        &format!(
            "#!/bin/sh\nin=$(tr -d ' \\n')\n{STEP}\necho \"$SPOOLFLOW_NID $SPOOLFLOW_ATTEMPT\" >> \"$SPOOLFLOW_ROOT/runs\"\necho \"$out\"\n"
        ),
    );
    t.drop_task(
        "r1.json",
        &json!({"domain": "org", "id": "r1",
            "flow": {"sequence": [{"task": "step"}, {"task": "step"}]},
            "payload": {"trail": "r1"}})
        .to_string(),
    );
    let runs = || fs::read_to_string(t.join("runs")).unwrap_or_default();
    // The flow's start is its journal's first write, 0_0's end the second.
    let engine = t.spawn_engine_with_fault(
        Some("write:2:slow@/spool/run/r1.journal"),
        &["--workers", "1"],
    );
    wait_for("0_0's reply to be journaled", DEADLINE, || {
        fs::read_to_string(t.join("var/run/replies.log"))
            .is_ok_and(|j| j.contains("\"exid\":\"r1\"") && j.contains("\"nid\":\"0_0\""))
    });
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    // The scenario: 0_0 ran and replied, its end is not in the progress.
    assert_eq!(runs(), "0_0 1\n");
    let progress = t.flow_progress("r1").expect("r1's progress");
    assert_eq!(progress["nodes"]["0_0"]["state"], "running", "{progress:#}");

    t.run_drain(1);
    let rec = t.must_record("r1");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"trail": "r1/0_0/0_1"}), "{rec:#}");
    assert_eq!(runs(), "0_0 1\n0_1 1\n", "0_0 ran once, 0_1 after it");
    let points = t.points("r1");
    assert_eq!(
        recovered_of(&points, "0_0"),
        0,
        "0_0 had replied: it is not recovered; its points: {}",
        node_points(&points, "0_0")
    );
    let node = rec["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["nid"] == "0_0"))
        .expect("node 0_0 in the record")
        .clone();
    assert_eq!(node["attempts"], 1, "{node}");
    assert!(
        !t.join("var/run/replies.old.log").exists(),
        "no old journal file is left"
    );
}

/// A node fails in a `concurrence` while its sibling runs: the sibling is
/// asked to stop, and the engine is killed (`kill -9`) before the sibling
/// has ended. At the next start the flow's record lists the sibling
/// `aborted`, with the attempt it ran, as it does after a graceful stop.
#[test]
fn a_sibling_stopped_by_a_failure_is_in_the_record_after_a_kill_9() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "stay",
        "#!/bin/sh\ncat >/dev/null\ntrap 'echo term > \"$SPOOLFLOW_ROOT/term\"' TERM\necho up > \"$SPOOLFLOW_ROOT/up\"\nwhile :; do sleep 0.05; done\n",
    );
    t.tasker(
        "org",
        "boom",
        &format!("#!/bin/sh\ncat >/dev/null\n{}\nexit 3\n", wait_file("up")),
    );
    t.drop_task(
        "sib.json",
        &json!({"domain": "org", "id": "sib",
            "flow": {"concurrence": [{"task": "stay"}, {"task": "boom"}]}})
        .to_string(),
    );
    let engine = t.spawn_engine(&["--workers", "2"]);
    wait_for("the sibling to be asked to stop", DEADLINE, || {
        t.join("term").exists()
    });
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    // The scenario: the failure is durable, the sibling's end is not (its
    // progress says it was stopped, not how it ran).
    let progress = t.flow_progress("sib").expect("sib's progress");
    assert_eq!(progress["nodes"]["0_1"]["state"], "failed", "{progress:#}");
    assert_eq!(progress["nodes"]["0_0"]["kind"], "aborted", "{progress:#}");
    assert!(progress["nodes"]["0_0"]["task"].is_null(), "{progress:#}");

    t.run_drain(1);
    let rec = t.must_record("sib");
    assert_eq!(rec["state"], "failed", "{rec:#}");
    let states: BTreeMap<String, (String, u64)> = rec["nodes"]
        .as_array()
        .expect("the record's nodes")
        .iter()
        .map(|n| {
            let nid = n["nid"].as_str().unwrap_or("?").to_string();
            let st = n["state"].as_str().unwrap_or("?").to_string();
            (nid, (st, n["attempts"].as_u64().unwrap_or(0)))
        })
        .collect();
    assert_eq!(
        states.get("0_0"),
        Some(&("aborted".to_string(), 1)),
        "the stopped sibling ran once; nodes: {states:?}"
    );
    assert_eq!(states.get("0_1"), Some(&("failed".to_string(), 1)));
}

/// Two nodes of a flow replied before a `kill -9`, their ends not yet in
/// the progress; one reply is in the journal's old file (the journal had
/// just turned over). The next start completes both from the journal,
/// each reply kept until the progress write holding its own node's end
/// is durable: killed again once the old file is gone, the flow runs
/// neither node again.
#[test]
fn replies_completed_at_a_start_are_kept_until_their_own_end_is_durable() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "step",
        &format!(
            "#!/bin/sh\nin=$(tr -d ' \\n')\n{BRANCH}\n[ \"$SPOOLFLOW_NID\" = 0_0 ] && {}\necho \"$SPOOLFLOW_NID $SPOOLFLOW_ATTEMPT\" >> \"$SPOOLFLOW_ROOT/runs\"\necho \"$out\"\n",
            wait_file("go")
        ),
    );
    // Earlier replies (their records long durable) fill the journal to
    // just under its 256 KiB: r1's first reply turns it over.
    let mut pad = String::new();
    let mut i = 0;
    while pad.len() < 256 * 1024 - 300 {
        pad.push_str(&format!(
            "{{\"exid\":\"old{i}\",\"nid\":\"0\",\"attempt\":1,\"created\":\"2026-01-01T00:00:00.000001Z\",\"payload\":{{}}}}\n"
        ));
        i += 1;
    }
    while pad.len() < 256 * 1024 - 50 {
        pad.push('\n');
    }
    fs::write(t.join("var/run/replies.log"), pad).unwrap();
    t.drop_task(
        "r1.json",
        &json!({"domain": "org", "id": "r1",
            "flow": {"concurrence": [{"task": "step"}, {"task": "step"}]},
            "payload": {}})
        .to_string(),
    );
    let runs = || fs::read_to_string(t.join("runs")).unwrap_or_default();
    let journaled = |nid: &str| {
        ["var/run/replies.log", "var/run/replies.old.log"]
            .iter()
            .any(|f| {
                fs::read_to_string(t.join(f)).is_ok_and(|j| {
                    j.contains("\"exid\":\"r1\"") && j.contains(&format!("\"nid\":\"{nid}\""))
                })
            })
    };
    // The flow's start is its journal's first write; the second (0_1's
    // end) is held while 0_0 replies too.
    let engine = t.spawn_engine_with_fault(
        Some("write:2:slow@/spool/run/r1.journal"),
        &["--workers", "2"],
    );
    wait_for("0_1's reply journaled", DEADLINE, || journaled("0_1"));
    fs::write(t.join("go"), "").unwrap();
    wait_for("0_0's reply journaled", DEADLINE, || journaled("0_0"));
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    let progress = t.flow_progress("r1").expect("r1's progress");
    assert_eq!(progress["nodes"]["0_0"]["state"], "running", "{progress:#}");
    assert_eq!(progress["nodes"]["0_1"]["state"], "running", "{progress:#}");
    assert!(
        t.join("var/run/replies.old.log").exists(),
        "the journal turned over"
    );

    // Both completed from the journal; the write covering the second
    // node's end is held, and the engine killed once the old file goes.
    let engine = t.spawn_engine_with_fault(
        Some("write:1:slow@/spool/run/r1.journal"),
        &["--workers", "2"],
    );
    wait_for("the old file's removal", DEADLINE, || {
        !t.join("var/run/replies.old.log").exists()
    });
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");

    t.run_drain(2);
    let rec = t.must_record("r1");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    let r = runs();
    assert_eq!(r.lines().count(), 2, "each node ran once; runs: {r:?}");
}

/// A flow's task node replies `uncompleted` with a new payload: the flow
/// keeps it in its progress before the node runs again, so that after a
/// `kill -9` the node runs from that payload, not from its input again.
#[test]
fn an_uncompleted_flow_node_goes_on_from_its_payload_after_a_kill_9() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "again",
        &format!(
            "#!/bin/sh\nin=$(tr -d ' \\n')\necho \"$in\" >> \"$SPOOLFLOW_ROOT/inputs\"\ncase \"$in\" in\n*'\"n\":1'*) {} ; echo '{{\"done\":1}}' ;;\n*) echo '{{\"point\":\"uncompleted\",\"payload\":{{\"n\":1}}}}' ;;\nesac\n",
            wait_file("go")
        ),
    );
    t.drop_task(
        "u1.json",
        &json!({"domain": "org", "id": "u1",
            "flow": {"sequence": [{"task": "again"}]},
            "payload": {"x": 0}})
        .to_string(),
    );
    let inputs = || -> Vec<String> {
        fs::read_to_string(t.join("inputs"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let engine = t.spawn_engine(&["--workers", "1"]);
    wait_for("the run after `uncompleted`", DEADLINE, || {
        inputs().len() == 2
    });
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    let progress = t.flow_progress("u1").expect("u1's progress");
    assert_eq!(
        progress["nodes"]["0_0"]["again"],
        json!({"n": 1}),
        "{progress:#}"
    );

    let engine = t.spawn_engine(&["--drain", "--workers", "1"]);
    wait_for("the run after the restart", DEADLINE, || {
        inputs().len() == 3
    });
    fs::write(t.join("go"), "").unwrap();
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    let seen = inputs();
    assert!(!seen[0].contains("\"n\":1"), "{seen:?}");
    assert!(
        seen[1..].iter().all(|i| i.contains("\"n\":1")),
        "after the restart the node went on from its uncompleted payload: {seen:?}"
    );
    let rec = t.must_record("u1");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"done": 1}), "{rec:#}");
}
