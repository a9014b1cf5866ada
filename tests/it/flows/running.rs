//! SPEC 12 flows: workers and concurrency keys, durability across
//! restarts, `spoolflow check` and `spoolflow flow`.

use super::*;

// ------------------------------------------------------------------ workers

/// A flow's task nodes and standalone tasks share `--workers`: with 2,
/// never more than 2 taskers run at once (and 2 do).
#[test]
fn flow_nodes_and_standalone_tasks_share_the_workers() {
    let t = TestRoot::new();
    taskers::busy(&t);
    drop_flow(
        &t,
        "w1",
        json!({"concurrence": [
            {"task": "busy"}, {"task": "busy"}, {"task": "busy"}, {"task": "busy"}
        ]}),
        json!({}),
    );
    for i in 0..3 {
        t.drop_task(&format!("s{i}.json"), r#"{"domain":"org","tasker":"busy"}"#);
    }
    t.run_drain(2);

    let rec = assert_completed(&t, "w1");
    assert_eq!(
        rec["payload"],
        json!({"busy": "0_3"}),
        "the last branch wins the conflict"
    );
    assert_eq!(node_nids(&rec), set_of(&["0_0", "0_1", "0_2", "0_3"]));
    for i in 0..3 {
        let r = t.must_record(&format!("s{i}"));
        assert_eq!(r["state"], "completed", "{r:#}");
        assert_eq!(r["payload"], json!({"busy": "0"}));
    }
    // Replay the ledger: "start|end <ns> <id> <nid>" lines.
    let log = t.lines_of("workers");
    let mut open: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut intervals = Vec::new();
    for line in &log {
        let w: Vec<&str> = line.split(' ').collect();
        assert_eq!(w.len(), 4, "bad line {line:?}");
        let ns: i64 = w[1].parse().expect("nanoseconds");
        let k = (w[2].to_string(), w[3].to_string());
        match w[0] {
            "start" => {
                assert!(open.insert(k, ns).is_none(), "{line}: started twice");
            }
            "end" => {
                let s = open.remove(&k).expect("an end after its start");
                intervals.push((s, ns));
            }
            other => panic!("bad line {other:?}"),
        }
    }
    assert!(open.is_empty(), "unfinished: {open:?}");
    assert_eq!(intervals.len(), 7, "{log:#?}");
    let most = max_overlap(&intervals);
    assert_eq!(
        most,
        2,
        "taskers at once with --workers 2:\n{}",
        log.join("\n")
    );
}

// ------------------------------------------------------------------ durability

/// `kill -9` while the second node of a sequence runs: at the next start
/// the first node is not run again, the second is `recovered` and runs
/// again (its old process killed), and the flow completes once.
#[test]
fn kill_9_mid_sequence_resumes_without_rerunning_finished_nodes() {
    let t = TestRoot::new();
    taskers::common(&t);
    drop_flow(
        &t,
        "d1",
        json!({"sequence": [{"task": "mark"}, {"task": "held"}, {"task": "mark"}]}),
        json!({}),
    );
    let engine = t.spawn_engine(&["--workers", "2"]);
    wait_for("the second node to run", DEADLINE, || {
        nids_run(&t, "d1") == ["0_0", "0_1"]
    });
    kill_9(engine);
    assert!(t.record("d1").is_none());
    assert!(t.join("var/spool/run/d1.json").exists());
    let old = runs_of(&t, "d1")[1].pid;
    assert!(!process_gone(old), "0_1's tasker died with the engine");

    // The held node's gate is its pid: the old run never gets it.
    let engine = t.spawn_engine(&["--drain", "--workers", "2"]);
    wait_for("the second node to run again", DEADLINE, || {
        nids_run(&t, "d1").iter().filter(|n| *n == "0_1").count() == 2
    });
    // Well before its own ~20 s bound: the start-up killed it.
    wait_for(
        "the old run of 0_1 to be killed",
        Duration::from_secs(10),
        || process_gone(old),
    );
    let new = runs_of(&t, "d1")
        .into_iter()
        .rfind(|r| r.nid == "0_1")
        .expect("a run of 0_1");
    assert_ne!(new.pid, old);
    fs::write(t.join(&format!("open-{}", new.pid)), "").unwrap();
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");

    let rec = assert_completed(&t, "d1");
    assert!(!t.join("var/spool/failed/d1.json").exists());
    assert_eq!(rec["payload"], json!({"trail": ["0_0", "0_1", "0_2"]}));
    let nids = nids_run(&t, "d1");
    let count = |nid: &str| nids.iter().filter(|n| *n == nid).count();
    assert_eq!(count("0_0"), 1, "the finished node ran again: {nids:?}");
    assert_eq!(count("0_1"), 2, "{nids:?}");
    assert_eq!(count("0_2"), 1, "{nids:?}");
    let recovered = t.points_named("d1", "recovered");
    assert!(
        recovered.iter().any(|p| p["nid"] == "0_1"),
        "{recovered:#?}"
    );
    assert!(
        recovered.iter().all(|p| p["nid"] != "0_0"),
        "{recovered:#?}"
    );
    assert_eq!(node(&rec, "0_0")["attempts"], 1);
    assert_eq!(t.points_named("d1", "completed").len(), 1);
    assert!(t.list("var/spool/run").is_empty());
    // SPEC 10: the run after a crash is a new attempt.
    let attempts: Vec<String> = runs_of(&t, "d1")
        .into_iter()
        .filter(|r| r.nid == "0_1")
        .map(|r| r.attempt)
        .collect();
    assert_eq!(attempts, ["1", "2"], "attempts of the recovered node");
    assert_eq!(node(&rec, "0_1")["attempts"], 2, "{:#}", rec["nodes"]);
}

/// A sleep's deadline is durable: `kill -9` while sleeping, the engine
/// down ~1.5 s, and the flow still ends about 3 s after the sleep began
/// (a restarted sleep would end 4.5 s or more after it).
#[test]
fn a_sleep_keeps_its_deadline_across_kill_9() {
    let t = TestRoot::new();
    taskers::common(&t);
    drop_flow(
        &t,
        "z1",
        json!({"sequence": [{"task": "mark"}, {"sleep": "3s"}, {"task": "mark"}]}),
        json!({}),
    );
    let engine = t.spawn_engine(&["--workers", "2"]);
    wait_for("the flow to sleep", DEADLINE, || {
        nids_run(&t, "z1") == ["0_0"] && sleeping(&t, "z1")
    });
    kill_9(engine);
    assert!(t.record("z1").is_none());
    // The scenario, not a synchronisation: the engine stays down a while.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "2"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");

    let rec = assert_completed(&t, "z1");
    assert_eq!(rec["payload"], json!({"trail": ["0_0", "0_2"]}));
    assert_eq!(nids_run(&t, "z1"), ["0_0", "0_2"]);
    let total = at(&rec["ended_at"]) - at(&rec["created_at"]);
    assert!(
        total >= chrono::Duration::seconds(3),
        "the flow took {total:?}, less than its sleep"
    );
    assert!(
        total < chrono::Duration::milliseconds(4300),
        "the flow took {total:?}: the sleep started over"
    );
    let slept = at(&node(&rec, "0_2")["started_at"]) - at(&node(&rec, "0_0")["ended_at"]);
    assert!(
        slept >= chrono::Duration::milliseconds(2990),
        "0_2 started {slept:?} after 0_0 ended"
    );
    assert!(
        slept < chrono::Duration::milliseconds(4300),
        "0_2 started {slept:?} after 0_0 ended: the sleep started over"
    );
}

// ------------------------------------------------------------------ check and flow

/// `spoolflow check` validates every stored flow: its tree, the names it
/// uses (as a task of that domain would resolve them) and its `if`s.
#[test]
fn check_reports_bad_stored_flows() {
    let t = TestRoot::new();
    taskers::common(&t);
    stored_flow(
        &t,
        "org",
        "good",
        json!({"sequence": [{"task": "mark"}, {"flow": "shared"}]}),
    );
    stored_flow(&t, "any", "shared", json!({"task": "mark"}));
    stored_flow(&t, "org", "typo", json!({"sequense": []}));
    stored_flow(&t, "org", "missing", json!({"flow": "nowhere"}));
    stored_flow(&t, "org", "loop", json!({"flow": "loop"}));
    stored_flow(
        &t,
        "org",
        "badif",
        json!({"if": "payload.x >", "then": {"task": "mark"}}),
    );
    let out = t.cmd().arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    for (name, says) in [
        ("typo", "unknown"),
        ("missing", "nowhere"),
        ("loop", "itself"),
        ("badif", "does not compile"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("tsk/org/flows/{name}.json: ")))
            .unwrap_or_else(|| panic!("no problem reported for {name}:\n{stdout}"));
        assert!(line.contains(says), "{line}");
    }
    assert!(!stdout.contains("good.json"), "{stdout}");
    assert!(!stdout.contains("shared.json"), "{stdout}");
}

/// `spoolflow flow ID` draws the tree with each node's state: from the
/// `run/` file while the flow runs, from the record once it ended.
#[test]
fn the_flow_command_draws_a_running_and_an_ended_flow() {
    let t = TestRoot::new();
    taskers::common(&t);
    drop_flow(
        &t,
        "seen",
        json!({"sequence": [{"task": "mark"}, {"task": "held"}, {"set": {"ok": true}}]}),
        json!({}),
    );
    let engine = t.start_in_process(spoolflow::Options {
        workers: 2,
        ..spoolflow::Options::default()
    });
    wait_for("the held node to run", DEADLINE, || {
        t.flow_progress("seen")
            .is_some_and(|p| p["nodes"]["0_0"]["state"] == "done")
            && t.lines_of("ledger").iter().any(|l| l.contains(" 0_1 "))
    });
    let draw = |t: &TestRoot| {
        let out = t.cmd().args(["flow", "seen"]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let running = draw(&t);
    assert!(running.starts_with("flow seen (running)"), "{running}");
    assert!(running.contains("0_0 task mark  [done]"), "{running}");
    assert!(running.contains("0_1 task held  [running]"), "{running}");
    assert!(
        running.contains("0_2 set {\"ok\":true}  [waiting]"),
        "{running}"
    );
    fs::write(t.join("open-seen"), "").unwrap();
    wait_for("the record", DEADLINE, || t.record("seen").is_some());
    engine.stop();
    let ended = draw(&t);
    assert!(ended.starts_with("flow seen (completed)"), "{ended}");
    assert!(
        ended.contains("0_1 task held  [completed] held, 1 attempt"),
        "{ended}"
    );
    let json = t.cmd().args(["flow", "seen", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["state"], "completed");
    assert_eq!(v["nodes"]["0_0"]["state"], "completed");
    let missing = t.cmd().args(["flow", "nope"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(3));
}

/// A flow whose `if` does not compile is rejected with a reason that says
/// it is the flow's, as every flow rejection does.
#[test]
fn an_if_that_does_not_compile_is_rejected_as_the_flows() {
    let t = TestRoot::new();
    taskers::common(&t);
    drop_flow(
        &t,
        "badif",
        json!({"if": "payload.x >", "then": {"task": "mark"}}),
        json!({}),
    );
    t.run_drain(1);
    let why = t.rejected_reason("badif.json").expect("rejected");
    assert!(why.starts_with("flow: "), "{why}");
    assert!(why.contains("does not compile"), "{why}");
}
