//! SPEC 10 (durability) through the built binary: two rewrites of one
//! task's `run/` file in the writer at once (a priority change's and an
//! `uncompleted` payload's) are told apart. The task goes on only once
//! the rewrite that holds its new payload is durable, never on the end of
//! the one before it. The debug build's `SPOOLFLOW_FAULT` KIND `slow`
//! holds each rewrite for 2 s, which makes that window one a test can
//! hit. The same hold on a cancelled task's record shows that a
//! taskmaster's answer landing then offers nothing.

use std::fs;

use nix::sys::signal::Signal;

use crate::common::*;

/// Notes each payload it is given (in `seen`); replies `uncompleted` with
/// the next `n` once, then done.
const STEP: &str = r#"#!/bin/sh
n=$(sed -n 's/.*"n":\([0-9]*\).*/\1/p')
echo "$n" >> "$SPOOLFLOW_ROOT/seen"
if [ "$n" -lt 1 ]; then
  echo "{\"point\":\"uncompleted\",\"payload\":{\"n\":$((n+1))}}"
else
  echo "{\"n\":$n,\"done\":true}"
fi
"#;

#[test]
fn a_task_goes_on_from_its_new_payload_not_from_an_earlier_rewrite() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "block",
        &format!(
            "#!/bin/sh\ncat >/dev/null\n: > \"$SPOOLFLOW_ROOT/blocking\"\n{}\necho '{{}}'\n",
            wait_file("go")
        ),
    );
    t.tasker("org", "step", STEP);
    t.drop_task(
        "a.json",
        r#"{"id":"blk","domain":"org","tasker":"block","priority":10}"#,
    );
    t.drop_task(
        "b.json",
        r#"{"id":"s1","domain":"org","tasker":"step","payload":{"n":0}}"#,
    );
    // The renames into run/s1.json: the claim, then the priority
    // change's rewrite and the `uncompleted` payload's, each held 2 s.
    let fault = "rename:2:slow@/spool/run/s1.json,rename:3:slow@/spool/run/s1.json";
    let engine = t.spawn_engine_with_fault(Some(fault), &["--workers", "1"]);
    wait_for("the blocker to run", DEADLINE, || {
        t.join("blocking").exists()
    });
    let dir = t.join("var/spool/priority");
    fs::write(dir.join(".s1.tmp"), "5").unwrap();
    fs::rename(dir.join(".s1.tmp"), dir.join("s1")).unwrap();
    // The priority change's rewrite is held: its temporary is in run/.
    wait_for("the priority rewrite to be under way", DEADLINE, || {
        t.list("var/spool/run").iter().any(|n| n.ends_with(".tmp"))
    });
    // s1 runs now, replies `uncompleted` while that rewrite is held, and
    // its payload's rewrite queues behind it.
    fs::write(t.join("go"), "").unwrap();
    let err = s1_completes_at_priority_5(&t, engine);
    let seen = fs::read_to_string(t.join("seen")).unwrap_or_default();
    assert_eq!(seen, "0\n1\n", "the payloads the tasker was given\n{err}");
    assert!(t.list("var/spool/priority").is_empty());
}

/// A priority request applied while an `uncompleted` payload's rewrite is
/// held stays in `priority/` until its own rewrite is durable, not only
/// the earlier one: a crash in between applies it again at the next start.
#[test]
fn a_priority_request_stays_until_its_own_rewrite_is_durable() {
    let t = TestRoot::new();
    t.tasker("org", "step", STEP);
    t.drop_task(
        "b.json",
        r#"{"id":"s1","domain":"org","tasker":"step","payload":{"n":0}}"#,
    );
    // The claim, then the `uncompleted` payload's rewrite and the
    // priority change's, each held 2 s.
    let fault = "rename:2:slow@/spool/run/s1.json,rename:3:slow@/spool/run/s1.json";
    let engine = t.spawn_engine_with_fault(Some(fault), &["--workers", "1"]);
    let temps = || -> Vec<String> {
        t.list("var/spool/run")
            .into_iter()
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    };
    wait_for("the payload's rewrite to be under way", DEADLINE, || {
        !temps().is_empty()
    });
    let first = temps();
    let request = t.join("var/spool/priority/s1");
    let dir = t.join("var/spool/priority");
    fs::write(dir.join(".s1.tmp"), "5").unwrap();
    fs::rename(dir.join(".s1.tmp"), &request).unwrap();
    // Once the first rewrite is done, the second (the priority's) is held
    // in its turn: its request must still be there all that time.
    wait_for("the priority's rewrite to be under way", DEADLINE, || {
        let now = temps();
        !now.is_empty() && now != first
    });
    while temps().iter().any(|n| !first.contains(n)) {
        assert!(
            request.exists(),
            "the request went before its rewrite was durable"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    s1_completes_at_priority_5(&t, engine);
    assert!(t.list("var/spool/priority").is_empty());
}

/// Waits for s1's record, stops the engine, and checks that s1 completed
/// at its new priority; gives the engine's log.
fn s1_completes_at_priority_5(t: &TestRoot, engine: EngineProcess) -> String {
    wait_for("s1's record", DEADLINE, || t.record("s1").is_some());
    engine.signal(Signal::SIGTERM);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    let rec = t.must_record("s1");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["priority"], 5, "{rec:#}");
    err
}

/// A cancel of a task whose taskmaster is still choosing: the aborted
/// record is being written (held 2 s) when the taskmaster's answer lands.
/// The answer is dropped: no offer is made and no tasker runs after the
/// cancel. (That the node keeps its state meanwhile, rather than being
/// marked queued, shows only through a second request in that window;
/// this test does not reach it.)
#[test]
fn a_taskmasters_answer_after_a_cancel_offers_nothing() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "mark",
        "#!/bin/sh\ncat\n: > \"$SPOOLFLOW_ROOT/ran\"\n",
    );
    // Busy for a while (the cancel lands meanwhile), then chooses `mark`.
    t.taskmaster("org", "let s = 0; for i in 0..150000 { s += i; } \"mark\"");
    let fault = "rename:1:slow@/spool/failed/";
    let engine = t.spawn_engine_with_fault(Some(fault), &["--workers", "1"]);
    t.drop_task("t1.json", r#"{"id":"t1","domain":"org"}"#);
    wait_for("t1 taken", DEADLINE, || {
        t.point_names("t1").iter().any(|n| n == "created")
    });
    let cancelled_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    fs::write(t.join("var/spool/cancel/t1"), "changed my mind").unwrap();
    wait_for("t1's record", DEADLINE, || t.record("t1").is_some());
    assert_eq!(t.must_record("t1")["state"], "aborted");
    wait_for("the final point", DEADLINE, || {
        t.point_names("t1").iter().any(|n| n == "aborted")
    });
    let late: Vec<String> = t
        .points("t1")
        .iter()
        .filter(|p| ["offered", "started"].contains(&p["point"].as_str().unwrap_or("")))
        .filter(|p| {
            p["ts"]
                .as_str()
                .is_some_and(|ts| ts > cancelled_at.as_str())
        })
        .map(|p| p.to_string())
        .collect();
    assert!(
        late.is_empty(),
        "offered or started after the cancel: {late:?}"
    );
    engine.signal(Signal::SIGTERM);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
}
