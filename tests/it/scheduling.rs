//! SPEC 7: scheduling. Priority and arrival order, `max_concurrent` and
//! concurrency keys (with `suspended` logged once and no head-of-line
//! blocking), run and start timeouts (SIGTERM to the group, SIGKILL after
//! the kill grace), retries with their backoff, refusals and `uncompleted`
//! replies. Every tasker is a real `sh` process; what the test checks is
//! what the taskers wrote under the root, the points log and the records.

use std::fs;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use serde_json::{json, Value};
use spoolflow::Options;

use crate::common::*;

fn ts(p: &Value) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(p["ts"].as_str().expect("a point has ts")).expect("ts is RFC 3339")
}

/// A file a tasker wrote under the root.
fn out(t: &TestRoot, name: &str) -> String {
    fs::read_to_string(t.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_failed(rec: &Value, kind: &str) -> String {
    assert_eq!(rec["state"], "failed", "{rec:#}");
    assert_eq!(rec["error"]["kind"], kind, "{rec:#}");
    rec["reason"]
        .as_str()
        .expect("a failed record has a reason")
        .to_string()
}

/// The pid a tasker wrote (atomically) into `name`.
fn read_pid(t: &TestRoot, name: &str) -> i32 {
    out(t, name).trim().parse().expect("a pid")
}

/// Options for an in-process `--drain` run with a short kill grace.
fn drain_opts(workers: usize) -> Options {
    Options {
        workers,
        drain: true,
        kill_grace: Duration::from_secs(1),
        ..Options::default()
    }
}

/// Extracts `"book":"…"` from the payload on stdin into `$book`.
const READ_BOOK: &str = r#"book=$(sed -n 's/.*"book":"\([^"]*\)".*/\1/p')"#;

// ------------------------------------------------------------------ priority

#[test]
fn priority_first_then_arrival() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "t",
        "#!/bin/sh\necho \"$SPOOLFLOW_ID\" >> \"$SPOOLFLOW_ROOT/order\"\n",
    );
    // Found at start-up, claimed in name order: arrival is a, b, c, d, e.
    for (id, prio) in [("a", 0), ("b", 5), ("c", -1), ("d", 5), ("e", 3)] {
        t.drop_task(
            &format!("{id}.json"),
            &format!(r#"{{"domain":"org","tasker":"t","priority":{prio}}}"#),
        );
    }
    t.run_drain(1);
    assert_eq!(out(&t, "order"), "b\nd\ne\na\nc\n");
    for id in ["a", "b", "c", "d", "e"] {
        assert_eq!(t.must_record(id)["state"], "completed");
    }
    assert_eq!(t.must_record("b")["priority"], 5);
    assert_eq!(t.must_record("c")["priority"], -1);
}

// ------------------------------------------------------------------ concurrency

/// Replays an enter/leave log; returns the most tasks inside at once, in
/// all and per book.
fn max_overlap(log: &str) -> (usize, std::collections::BTreeMap<String, usize>) {
    use std::collections::BTreeMap;
    let (mut inside, mut max) = (0usize, 0usize);
    let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for line in log.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(w.len(), 3, "bad log line {line:?}");
        let e = per.entry(w[1].to_string()).or_default();
        match w[0] {
            "enter" => {
                inside += 1;
                e.0 += 1;
            }
            "leave" => {
                inside -= 1;
                e.0 -= 1;
            }
            other => panic!("bad log line {other:?}"),
        }
        max = max.max(inside);
        e.1 = e.1.max(e.0);
    }
    assert_eq!(inside, 0, "every enter has its leave: {log}");
    (max, per.into_iter().map(|(k, (_, m))| (k, m)).collect())
}

#[test]
fn max_concurrent_and_concurrency_keys_bound_running_tasks() {
    let t = TestRoot::new();
    t.tasker_dir(
        "org",
        "stamp",
        r#"{"cmd":["./run.sh"],"max_concurrent":2,"concurrency":[{"key":"payload.book","limit":1}]}"#,
        &[(
            "run.sh",
            &format!(
                r#"#!/bin/sh
{READ_BOOK}
log="$SPOOLFLOW_ROOT/overlap.log"
echo "enter $book $SPOOLFLOW_ID" >> "$log"
# A gate, not a pause: the first two in wait for each other (up to 30 s),
# so the peak of 2 is held open whatever the machine's load.
i=0; while [ "$(grep -c '^enter' "$log")" -lt 2 ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done
echo "leave $book $SPOOLFLOW_ID" >> "$log"
"#
            ),
        )],
    );
    let books = [
        ("c1", "x"),
        ("c2", "x"),
        ("c3", "x"),
        ("c4", "y"),
        ("c5", "y"),
        ("c6", "z"),
    ];
    for (id, book) in books {
        t.drop_task(
            &format!("{id}.json"),
            &format!(r#"{{"domain":"org","tasker":"stamp","payload":{{"book":"{book}"}}}}"#),
        );
    }
    t.run_drain(4);
    for (id, _) in books {
        assert_eq!(t.must_record(id)["state"], "completed", "{id}");
    }
    let log = out(&t, "overlap.log");
    let (max, per_book) = max_overlap(&log);
    // max_concurrent 2 is reached (c1 and c4 start together) but never
    // exceeded, although 4 workers are free.
    assert_eq!(max, 2, "{log}");
    for (book, m) in &per_book {
        assert_eq!(*m, 1, "book {book} ran {m} at once:\n{log}");
    }
    // Claimed in order c1..c6: c1 (x) and c4 (y) start at once; c2, c3 wait
    // for book x, c5, c6 for max_concurrent. Each held-back task says so
    // once, however often it is looked at again.
    for id in ["c1", "c4"] {
        assert!(t.points_named(id, "suspended").is_empty(), "{id}");
    }
    for (id, about) in [
        ("c2", "payload.book"),
        ("c3", "payload.book"),
        ("c5", "max_concurrent"),
        ("c6", "max_concurrent"),
    ] {
        let s = t.points_named(id, "suspended");
        assert_eq!(s.len(), 1, "{id}: {:#?}", t.points(id));
        let reason = s[0]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(about), "{id}: {reason}");
        let names = t.point_names(id);
        let si = names.iter().position(|p| p == "suspended").unwrap();
        let st = names.iter().position(|p| p == "started").unwrap();
        assert!(si < st, "{id}: {names:?}");
    }
}

#[test]
fn a_task_held_back_on_a_key_does_not_block_other_keys() {
    let t = TestRoot::new();
    t.tasker_dir(
        "org",
        "bk",
        r#"{"cmd":["./run.sh"],"concurrency":[{"key":"payload.book","limit":1}]}"#,
        &[(
            "run.sh",
            &format!(
                r#"#!/bin/sh
{READ_BOOK}
log="$SPOOLFLOW_ROOT/overlap.log"
echo "enter $book $SPOOLFLOW_ID" >> "$log"
if [ "$SPOOLFLOW_ID" = a ]; then
  # Holds book x until c has completed.
  {}
fi
if [ "$SPOOLFLOW_ID" = c ]; then
  # a was started first; its enter line may still be on its way.
  i=0; while ! grep -q '^enter x a$' "$log" && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
  if grep -q '^enter x a$' "$log" && ! grep -q '^leave x a$' "$log"; then
    echo a-running > "$SPOOLFLOW_ROOT/c-saw"
  else
    echo a-not-running > "$SPOOLFLOW_ROOT/c-saw"
  fi
fi
echo "leave $book $SPOOLFLOW_ID" >> "$log"
"#,
                wait_file("var/spool/done/c.json")
            ),
        )],
    );
    for (id, book) in [("a", "x"), ("b", "x"), ("c", "y")] {
        t.drop_task(
            &format!("{id}.json"),
            &format!(r#"{{"domain":"org","tasker":"bk","payload":{{"book":"{book}"}}}}"#),
        );
    }
    t.run_drain(2);
    for id in ["a", "b", "c"] {
        assert_eq!(t.must_record(id)["state"], "completed", "{id}");
    }
    // c (book y) ran while a held book x and b waited behind a.
    assert_eq!(out(&t, "c-saw").trim(), "a-running");
    let log = out(&t, "overlap.log");
    let lines: Vec<&str> = log.lines().collect();
    let at = |l: &str| lines.iter().position(|x| *x == l).unwrap();
    assert!(at("leave y c") < at("leave x a"), "{log}");
    assert!(at("leave x a") < at("enter x b"), "{log}");
    assert_eq!(t.points_named("b", "suspended").len(), 1);
    assert!(t.points_named("c", "suspended").is_empty());
}

// ------------------------------------------------------------------ timeouts

#[test]
fn a_run_timeout_terms_the_whole_group_and_fails_timeout() {
    let t = TestRoot::new();
    t.tasker_dir(
        "org",
        "slow",
        r#"{"cmd":["./run.sh"],"timeout":"500ms"}"#,
        &[(
            "run.sh",
            r#"#!/bin/sh
sleep 60 </dev/null >/dev/null 2>&1 &
echo $! > "$SPOOLFLOW_ROOT/gc.tmp" && mv "$SPOOLFLOW_ROOT/gc.tmp" "$SPOOLFLOW_ROOT/gc.pid"
sleep 60
"#,
        )],
    );
    t.drop_task("a.json", r#"{"domain":"org","tasker":"slow"}"#);
    t.run_drain_with(drain_opts(2));
    let rec = t.must_record("a");
    let reason = assert_failed(&rec, "timeout");
    assert!(reason.contains("500ms"), "{reason}");
    assert_eq!(rec["attempts"], 1);
    // Not retried without retry_on_timeout.
    assert!(t.points_named("a", "retried").is_empty());
    assert_eq!(t.points_named("a", "started").len(), 1);
    let started = &t.points_named("a", "started")[0];
    let failed = &t.points_named("a", "failed")[0];
    let took = ts(failed) - ts(started);
    assert!(
        took >= chrono::Duration::milliseconds(450) && took < chrono::Duration::seconds(20),
        "{took:?}"
    );
    // The background grandchild (stdio on /dev/null, so only a signal to
    // the group can reach it) is gone too.
    let gc = read_pid(&t, "gc.pid");
    wait_for("the grandchild to be gone", DEADLINE, || process_gone(gc));
    let leader = started["pid"].as_i64().unwrap() as i32;
    wait_for("the tasker to be gone", DEADLINE, || process_gone(leader));
}

#[test]
fn a_tasker_ignoring_sigterm_is_killed_after_the_kill_grace() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "stubborn",
        r#"#!/bin/sh
trap 'echo term >> "$SPOOLFLOW_ROOT/terms"' TERM
while :; do sleep 0.05; done
"#,
    );
    t.drop_task(
        "a.json",
        r#"{"domain":"org","tasker":"stubborn","timeout":"300ms"}"#,
    );
    t.run_drain_with(drain_opts(1));
    let rec = t.must_record("a");
    let reason = assert_failed(&rec, "timeout");
    assert!(reason.contains("300ms"), "{reason}");
    assert_eq!(rec["attempts"], 1);
    // It got SIGTERM and went on …
    assert!(out(&t, "terms").starts_with("term\n"));
    // … until SIGKILL, a kill grace (1 s) after the timeout.
    let started = &t.points_named("a", "started")[0];
    let took = ts(&t.points_named("a", "failed")[0]) - ts(started);
    assert!(
        took >= chrono::Duration::milliseconds(1250),
        "ended {took:?} after start, before timeout + kill grace"
    );
    assert!(took < chrono::Duration::seconds(20), "{took:?}");
    let leader = started["pid"].as_i64().unwrap() as i32;
    wait_for("the tasker to be gone", DEADLINE, || process_gone(leader));
}

#[test]
fn start_timeout_fails_a_task_that_never_started() {
    let t = TestRoot::new();
    // `first` holds the only worker until `second` has failed.
    t.tasker(
        "org",
        "first",
        &format!(
            "#!/bin/sh\n{}\n[ -e \"$SPOOLFLOW_ROOT/var/spool/failed/second.json\" ] && echo '{{\"saw\":\"second failed\"}}'\n",
            wait_file("var/spool/failed/second.json")
        ),
    );
    t.tasker(
        "org",
        "never",
        "#!/bin/sh\ntouch \"$SPOOLFLOW_ROOT/second-ran\"\n",
    );
    t.drop_task(
        "a-first.json",
        r#"{"id":"first","domain":"org","tasker":"first"}"#,
    );
    t.drop_task(
        "b-second.json",
        r#"{"id":"second","domain":"org","tasker":"never","start_timeout":"300ms"}"#,
    );
    t.run_drain(1);
    let rec = t.must_record("second");
    let reason = assert_failed(&rec, "timeout");
    assert!(reason.contains("start_timeout"), "{reason}");
    assert!(reason.contains("300ms"), "{reason}");
    assert_eq!(rec["attempts"], 0, "{rec:#}");
    assert!(rec["started_at"].is_null(), "{rec:#}");
    assert!(t.points_named("second", "started").is_empty());
    assert!(!t.join("second-ran").exists());
    let created = ts(&t.points_named("second", "created")[0]);
    let failed = ts(&t.points_named("second", "failed")[0]);
    assert!(failed - created >= chrono::Duration::milliseconds(280));
    let first = t.must_record("first");
    assert_eq!(first["state"], "completed");
    assert_eq!(first["payload"], json!({"saw":"second failed"}));
}

/// The same with `start_timeout` in the waiting task's `tasker.json`: the
/// task waits for a worker (queueing is covered by `start_timeout`), so it
/// must never start once the bound has passed.
#[test]
fn a_tasker_json_start_timeout_covers_queueing() {
    let t = TestRoot::new();
    // `first` holds the only worker until `second` has failed, or 1.5 s.
    t.tasker(
        "org",
        "first",
        r#"#!/bin/sh
i=0; while [ ! -e "$SPOOLFLOW_ROOT/var/spool/failed/second.json" ] && [ $i -lt 30 ]; do sleep 0.05; i=$((i+1)); done
"#,
    );
    t.tasker_dir(
        "org",
        "never",
        r#"{"cmd":"touch \"$SPOOLFLOW_ROOT/second-ran\"","start_timeout":"300ms"}"#,
        &[],
    );
    t.drop_task(
        "a-first.json",
        r#"{"id":"first","domain":"org","tasker":"first"}"#,
    );
    t.drop_task(
        "b-second.json",
        r#"{"id":"second","domain":"org","tasker":"never"}"#,
    );
    t.run_drain(1);
    assert_eq!(t.must_record("first")["state"], "completed");
    let rec = t.must_record("second");
    assert!(
        !t.join("second-ran").exists(),
        "second started {:?} after it was created, past its start_timeout of 300ms: {rec:#}",
        ts(&t.points_named("second", "started")[0]) - ts(&t.points_named("second", "created")[0])
    );
    let reason = assert_failed(&rec, "timeout");
    assert!(reason.contains("start_timeout"), "{reason}");
    assert!(t.points_named("second", "started").is_empty());
}

// ------------------------------------------------------------------ retries

/// A tasker that logs its attempt, then runs `body`.
fn attempt_tasker(t: &TestRoot, body: &str) {
    t.tasker(
        "org",
        "t",
        &format!(
            "#!/bin/sh\necho \"$SPOOLFLOW_ATTEMPT\" >> \"$SPOOLFLOW_ROOT/attempts\"\n{body}\n"
        ),
    );
}

fn started_attempts(t: &TestRoot, id: &str) -> Vec<Value> {
    t.points_named(id, "started")
        .into_iter()
        .map(|p| p["attempt"].clone())
        .collect()
}

#[test]
fn exit_75_is_retried_with_backoff_until_it_succeeds() {
    let t = TestRoot::new();
    attempt_tasker(
        &t,
        r#"[ "$SPOOLFLOW_ATTEMPT" -lt 3 ] && { echo "busy $SPOOLFLOW_ATTEMPT" >&2; exit 75; }
echo "{\"attempt\":$SPOOLFLOW_ATTEMPT}""#,
    );
    t.drop_task("a.json", r#"{"domain":"org","tasker":"t"}"#);
    t.run_drain(1);
    let rec = t.must_record("a");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["attempts"], 3);
    assert!(rec["error"].is_null());
    assert_eq!(rec["payload"], json!({"attempt":3}));
    assert_eq!(out(&t, "attempts"), "1\n2\n3\n");
    assert_eq!(started_attempts(&t, "a"), [json!(1), json!(2), json!(3)]);
    let retried = t.points_named("a", "retried");
    assert_eq!(retried.len(), 2, "{:#?}", t.points("a"));
    for (p, (delay, n)) in retried.iter().zip([("1s", 1), ("2s", 2)]) {
        assert_eq!(p["delay"], delay, "{p}");
        let reason = p["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("75"), "{reason}");
        assert!(reason.contains(&format!("busy {n}")), "{reason}");
    }
    // The backoff is real: each next start comes at least its delay after
    // the retried point.
    let points = t.points("a");
    for (i, p) in points.iter().enumerate() {
        if p["point"] == "retried" {
            let next = points[i..]
                .iter()
                .find(|q| q["point"] == "started")
                .unwrap();
            let ms = if p["delay"] == "1s" { 1000 } else { 2000 };
            assert!(
                ts(next) - ts(p) >= chrono::Duration::milliseconds(ms - 20),
                "{p} → {next}"
            );
        }
    }
}

/// A task cancelled while its next attempt waits (here parked on
/// `max_concurrent` after its backoff) counts only the attempt that ran:
/// its record's `attempts` and its `aborted` point agree with its
/// attempts log.
#[test]
fn a_task_cancelled_before_its_next_attempt_counts_the_attempts_that_ran() {
    let t = TestRoot::new();
    t.tasker_dir(
        "org",
        "one",
        r#"{"cmd":["./run.sh"],"max_concurrent":1}"#,
        &[(
            "run.sh",
            &format!(
                "#!/bin/sh\n[ \"$SPOOLFLOW_ID\" = r ] && exit 75\n{}\necho '{{}}'\n",
                wait_file("open")
            ),
        )],
    );
    let engine = t.start_in_process(Options {
        drain: false,
        ..drain_opts(2)
    });
    t.drop_task("r.json", r#"{"domain":"org","tasker":"one"}"#);
    wait_for("r retried", DEADLINE, || {
        !t.points_named("r", "retried").is_empty()
    });
    // g holds the tasker's one unit: r's second attempt waits for it.
    t.drop_task("g.json", r#"{"domain":"org","tasker":"one"}"#);
    wait_for("r waiting on the limit", DEADLINE, || {
        !t.points_named("r", "suspended").is_empty()
    });
    fs::write(t.join("var/spool/cancel/r"), "not now").unwrap();
    wait_for("r aborted", DEADLINE, || t.record("r").is_some());
    fs::write(t.join("open"), "").unwrap();
    wait_for("g done", DEADLINE, || t.record("g").is_some());
    engine.stop();
    let rec = t.must_record("r");
    assert_eq!(rec["state"], "aborted", "{rec:#}");
    assert_eq!(rec["attempts"], 1, "{rec:#}");
    assert_eq!(rec["attempts_log"].as_array().map(Vec::len), Some(1));
    assert_eq!(t.points_named("r", "aborted")[0]["attempt"], 1);
}

#[test]
fn exit_1_is_not_retried() {
    let t = TestRoot::new();
    attempt_tasker(&t, "echo oops >&2; exit 1");
    t.drop_task("a.json", r#"{"domain":"org","tasker":"t","retries":3}"#);
    t.run_drain(1);
    let rec = t.must_record("a");
    let reason = assert_failed(&rec, "user");
    assert!(reason.contains("oops"), "{reason}");
    assert_eq!(rec["attempts"], 1);
    assert!(t.points_named("a", "retried").is_empty());
    assert_eq!(out(&t, "attempts"), "1\n");
}

#[test]
fn retries_are_bounded() {
    let t = TestRoot::new();
    attempt_tasker(&t, "exit 75");
    t.drop_task("a.json", r#"{"domain":"org","tasker":"t","retries":1}"#);
    t.run_drain(1);
    let rec = t.must_record("a");
    let reason = assert_failed(&rec, "work");
    assert!(reason.contains("75"), "{reason}");
    assert_eq!(rec["attempts"], 2);
    assert_eq!(t.points_named("a", "retried").len(), 1);
    assert_eq!(out(&t, "attempts"), "1\n2\n");
    assert_eq!(
        t.point_names("a").last().map(String::as_str),
        Some("failed")
    );
}

#[test]
fn a_timeout_is_retried_only_with_retry_on_timeout() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "t",
        "#!/bin/sh\necho \"$SPOOLFLOW_ATTEMPT\" >> \"$SPOOLFLOW_ROOT/attempts-$SPOOLFLOW_ID\"\nexec sleep 60\n",
    );
    t.drop_task(
        "again.json",
        r#"{"domain":"org","tasker":"t","timeout":"300ms","retries":1,"retry_on_timeout":true}"#,
    );
    t.drop_task(
        "once.json",
        r#"{"domain":"org","tasker":"t","timeout":"300ms","retries":1}"#,
    );
    t.run_drain_with(drain_opts(2));

    let rec = t.must_record("again");
    assert_failed(&rec, "timeout");
    assert_eq!(rec["attempts"], 2);
    assert_eq!(out(&t, "attempts-again"), "1\n2\n");
    let retried = t.points_named("again", "retried");
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0]["delay"], "1s");
    assert_eq!(started_attempts(&t, "again"), [json!(1), json!(2)]);

    let rec = t.must_record("once");
    assert_failed(&rec, "timeout");
    assert_eq!(rec["attempts"], 1);
    assert_eq!(out(&t, "attempts-once"), "1\n");
    assert!(t.points_named("once", "retried").is_empty());
}

// ------------------------------------------------------------------ refusals

#[test]
fn offering_again_to_a_taskee_that_refused_fails_refused() {
    let t = TestRoot::new();
    t.taskmaster("org", r#""grumpy""#);
    t.tasker(
        "org",
        "grumpy",
        "#!/bin/sh\necho x >> \"$SPOOLFLOW_ROOT/runs\"\necho '{\"point\":\"refused\",\"reason\":\"not today\"}'\n",
    );
    t.drop_task("a.json", r#"{"domain":"org"}"#);
    t.run_drain(1);
    let rec = t.must_record("a");
    let reason = assert_failed(&rec, "refused");
    assert!(reason.contains("grumpy"), "{reason}");
    // Ran once, refused once; the second offer ended it without a run.
    assert_eq!(out(&t, "runs"), "x\n");
    assert_eq!(t.points_named("a", "refused").len(), 1);
    assert_eq!(t.points_named("a", "refused")[0]["reason"], "not today");
    assert_eq!(t.points_named("a", "started").len(), 1);
    assert_eq!(rec["offers"], 2, "{rec:#}");
    // Both offers are logged, the second one just before the end.
    let offered = t.points_named("a", "offered");
    assert_eq!(offered.len(), 2, "{:#?}", t.points("a"));
    assert_eq!(offered[1]["taskee"], "grumpy");
    assert_eq!(offered[1]["offer"], 2);
    let names = t.point_names("a");
    assert_eq!(names[names.len() - 2..], ["offered", "failed"], "{names:?}");
}

#[test]
fn ten_refusals_fail_the_task() {
    let t = TestRoot::new();
    // Each refusal sends the task to the next of t0 … t11.
    t.taskmaster("org", r#""t" + task.refusals.len()"#);
    for i in 0..12 {
        t.tasker(
            "org",
            &format!("t{i}"),
            "#!/bin/sh\necho \"$SPOOLFLOW_TASKEE\" >> \"$SPOOLFLOW_ROOT/runs\"\necho '{\"point\":\"refused\",\"reason\":\"full\"}'\n",
        );
    }
    t.drop_task("a.json", r#"{"domain":"org"}"#);
    t.run_drain(1);
    let rec = t.must_record("a");
    let reason = assert_failed(&rec, "refused");
    assert!(reason.contains("10"), "{reason}");
    let expected: String = (0..10).map(|i| format!("t{i}\n")).collect();
    assert_eq!(out(&t, "runs"), expected);
    let refused = t.points_named("a", "refused");
    assert_eq!(refused.len(), 10);
    let by: Vec<&str> = refused
        .iter()
        .map(|p| p["taskee"].as_str().unwrap())
        .collect();
    assert_eq!(by, (0..10).map(|i| format!("t{i}")).collect::<Vec<_>>());
    // Refusals are not retries: attempt stays 1.
    assert!(t.points_named("a", "retried").is_empty());
    assert!(t
        .points_named("a", "started")
        .iter()
        .all(|p| p["attempt"] == 1));
}

// ------------------------------------------------------------------ uncompleted

/// A tasker answering `uncompleted` with `n + 1` until `n` reaches `until`,
/// with the extra reply fields `extra`.
fn counting_tasker(t: &TestRoot, until: u32, extra: &str) {
    t.tasker(
        "org",
        "t",
        &format!(
            r#"#!/bin/sh
n=$(sed -n 's/.*"n":\([0-9]*\).*/\1/p')
n=${{n:-0}}
if [ "$n" -lt {until} ]; then
  echo "{{\"point\":\"uncompleted\",\"payload\":{{\"n\":$((n+1))}}{extra}}}"
else
  echo "{{\"n\":$n,\"done\":true}}"
fi
"#
        ),
    );
}

#[test]
fn uncompleted_replies_requeue_with_the_new_payload() {
    let t = TestRoot::new();
    counting_tasker(&t, 3, "");
    t.drop_task(
        "a.json",
        r#"{"domain":"org","tasker":"t","payload":{"n":0}}"#,
    );
    t.run_drain(1);
    let rec = t.must_record("a");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"n":3,"done":true}));
    assert_eq!(rec["attempts"], 1);
    assert_eq!(t.points_named("a", "uncompleted").len(), 3);
    assert_eq!(
        started_attempts(&t, "a"),
        [json!(1), json!(1), json!(1), json!(1)]
    );
    assert!(t.points_named("a", "retried").is_empty());
    assert!(t.points_named("a", "refused").is_empty());
}

#[test]
fn uncompleted_after_delays_the_next_start() {
    let t = TestRoot::new();
    counting_tasker(&t, 2, r#",\"after\":\"200ms\""#);
    t.drop_task("a.json", r#"{"domain":"org","tasker":"t"}"#);
    t.run_drain(1);
    let rec = t.must_record("a");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"]["n"], 2);
    let points = t.points("a");
    let mut delays = 0;
    for (i, p) in points.iter().enumerate() {
        if p["point"] == "uncompleted" {
            let next = points[i..]
                .iter()
                .find(|q| q["point"] == "started")
                .expect("a start after uncompleted");
            let gap = ts(next) - ts(p);
            assert!(gap >= chrono::Duration::milliseconds(200), "{gap:?}");
            delays += 1;
        }
    }
    assert_eq!(delays, 2);
}

#[test]
fn a_hundred_uncompleted_replies_in_a_row_fail_user() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "t",
        "#!/bin/sh\necho '{\"point\":\"uncompleted\"}'\n",
    );
    t.drop_task(
        "a.json",
        r#"{"domain":"org","tasker":"t","payload":{"k":1}}"#,
    );
    t.run_drain(1);
    let rec = t.must_record("a");
    let reason = assert_failed(&rec, "user");
    assert!(reason.contains("100"), "{reason}");
    assert_eq!(rec["attempts"], 1);
    assert_eq!(rec["payload"], json!({"k":1}));
    assert_eq!(t.points_named("a", "uncompleted").len(), 100);
    assert_eq!(t.points_named("a", "started").len(), 100);
}
