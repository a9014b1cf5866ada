//! SPEC 4 and 9: the points log of a task (order, the fields of every
//! point, timestamps) and its final record (exactly the fields of SPEC 9,
//! written once, in `done/` or `failed/`, with nothing left behind).

use std::collections::BTreeSet;
use std::fs;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::common::*;

/// Checks a timestamp of SPEC 4 (`2026-11-22T10:00:00.123456Z`: RFC 3339,
/// UTC, microseconds) and returns it parsed.
fn ts(v: &Value) -> DateTime<Utc> {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {v}"));
    let (_, frac) = s
        .rsplit_once('.')
        .unwrap_or_else(|| panic!("no fraction in {s}"));
    assert!(
        frac.len() == 7 && frac.ends_with('Z') && frac[..6].bytes().all(|b| b.is_ascii_digit()),
        "not microseconds then Z: {s}"
    );
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

const RECORD_KEYS: [&str; 20] = [
    "id",
    "exid",
    "nid",
    "domain",
    "tasker",
    "taskee",
    "tasker_path",
    "state",
    "reason",
    "error",
    "attempts",
    "offers",
    "priority",
    "headers",
    "created_at",
    "started_at",
    "ended_at",
    "payload",
    // Issue 9 (item 16): durations honest across retries.
    "first_started_at",
    "attempts_log",
];

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

/// A tasker that notes its pid, then stamps the payload.
const STAMP: &str =
    "#!/bin/sh\necho $$ > \"$SPOOLFLOW_ROOT/pid\"\nsed 's/}$/,\"stamped\":true}/'\n";

#[test]
fn points_come_in_order_with_their_fields() {
    let t = TestRoot::new();
    t.tasker("org.example", "stamp", STAMP);
    t.drop_task(
        "p-1.json",
        r#"{"domain":"org.example.sales","tasker":"stamp","payload":{"b":1}}"#,
    );
    t.run_drain(1);
    assert_eq!(t.must_record("p-1")["state"], "completed");
    let points = t.points("p-1");
    let names = names_of(&points);
    assert_eq!(
        names,
        ["created", "offered", "allocated", "started", "completed"]
    );

    let mut last = None;
    for p in &points {
        assert_eq!(p["id"], "p-1", "{p}");
        assert_eq!(p["exid"], "p-1", "{p}");
        assert_eq!(p["nid"], "0", "{p}");
        let when = ts(&p["ts"]);
        if let Some(prev) = last {
            assert!(prev <= when, "points out of time order: {points:#?}");
        }
        last = Some(when);
    }
    // The line starts with the timestamp (SPEC 4's example).
    let raw = fs::read_to_string(t.join("var/log/tsk/p-1.log")).unwrap();
    assert_eq!(raw.lines().count(), 5);
    assert!(raw.lines().all(|l| l.starts_with("{\"ts\":\"")), "{raw}");

    let created = &points[0];
    assert_eq!(created["domain"], "org.example.sales");
    let offered = &points[1];
    assert_eq!(offered["taskee"], "stamp");
    assert_eq!(offered["offer"], 1);
    let allocated = &points[2];
    assert_eq!(allocated["taskee"], "stamp");
    let started = &points[3];
    assert_eq!(started["taskee"], "stamp");
    assert_eq!(started["tasker"], "tsk/org.example/stamp");
    assert_eq!(started["attempt"], 1);
    assert!(started["pid"].is_i64(), "{started}");
    let pid: i64 = fs::read_to_string(t.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(started["pid"], pid);
    let completed = &points[4];
    assert_eq!(completed["error"], Value::Null);
}

#[test]
fn a_failed_point_has_the_error_and_the_reason() {
    let t = TestRoot::new();
    t.tasker("org", "bad", "#!/bin/sh\necho 'bad input' >&2\nexit 2\n");
    t.drop_task("f-1.json", r#"{"domain":"org","tasker":"bad"}"#);
    t.run_drain(1);
    let points = t.points("f-1");
    let names = names_of(&points);
    assert_eq!(
        names,
        ["created", "offered", "allocated", "started", "failed"]
    );
    let failed = &points[4];
    ts(&failed["ts"]);
    assert_eq!(failed["id"], "f-1");
    assert_eq!(failed["nid"], "0");
    assert_eq!(failed["error"]["kind"], "user", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("exit status 2"), "{message}");
    assert!(message.contains("bad input"), "{message}");
    assert_eq!(failed["reason"], message);
    assert_eq!(keys(&failed["error"]), BTreeSet::from(["kind", "message"]));
    // The record says the same.
    let rec = t.must_record("f-1");
    assert_eq!(rec["error"], failed["error"]);
    assert_eq!(rec["reason"], failed["reason"]);
}

#[test]
fn a_completed_record_has_exactly_the_fields_of_spec_9() {
    let t = TestRoot::new();
    t.tasker("org.example", "stamp", STAMP);
    t.drop_task(
        "order-1234.json",
        r#"{"domain":"org.example.sales","tasker":"stamp","payload":{"book":"moby-dick"},
            "priority":7,"headers":{"requested_by":"alice"}}"#,
    );
    t.run_drain(1);
    let rec = t.must_record("order-1234");
    assert_eq!(keys(&rec), BTreeSet::from(RECORD_KEYS), "{rec:#}");
    assert_eq!(rec["id"], "order-1234");
    assert_eq!(rec["exid"], "order-1234");
    assert_eq!(rec["nid"], "0");
    assert_eq!(rec["domain"], "org.example.sales");
    assert_eq!(rec["tasker"], "stamp");
    assert_eq!(rec["taskee"], "stamp");
    assert_eq!(rec["tasker_path"], "tsk/org.example/stamp");
    assert_eq!(rec["state"], "completed");
    assert_eq!(rec["reason"], Value::Null);
    assert_eq!(rec["error"], Value::Null);
    assert_eq!(rec["attempts"], 1);
    assert_eq!(rec["offers"], 1);
    assert_eq!(rec["priority"], 7);
    assert_eq!(rec["headers"], json!({"requested_by":"alice"}));
    assert_eq!(rec["payload"], json!({"book":"moby-dick","stamped":true}));
    let (created, started, ended) = (
        ts(&rec["created_at"]),
        ts(&rec["started_at"]),
        ts(&rec["ended_at"]),
    );
    assert!(created <= started && started <= ended, "{rec:#}");
    // The record's times agree with the points: `created_at` is when the
    // file was written (issue 9), before the engine took it (`created`).
    let points = t.points("order-1234");
    assert!(ts(&points[0]["ts"]) >= created);
    assert_eq!(points[0]["submitted_at"], rec["created_at"]);
    assert!(ts(&points.last().unwrap()["ts"]) >= ended);
}

#[test]
fn a_failed_record_has_the_same_fields_with_the_error() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "no",
        "#!/bin/sh\necho '{\"point\":\"failed\",\"reason\":\"nope\"}'\n",
    );
    t.drop_task(
        "f-2.json",
        r#"{"domain":"org","tasker":"no","payload":{"k":"v"}}"#,
    );
    // Fails before any tasker runs: no started_at.
    t.drop_task("f-3.json", r#"{"domain":"org","tasker":"absent"}"#);
    t.run_drain(2);
    let rec = t.must_record("f-2");
    assert_eq!(keys(&rec), BTreeSet::from(RECORD_KEYS), "{rec:#}");
    assert_eq!(rec["state"], "failed");
    assert_eq!(rec["error"], json!({"kind":"user","message":"nope"}));
    assert_eq!(rec["reason"], "nope");
    assert_eq!(rec["payload"], json!({"k":"v"}));
    assert_eq!(rec["attempts"], 1);
    assert_eq!(rec["priority"], 0);
    assert_eq!(rec["headers"], json!({}));
    let (created, started, ended) = (
        ts(&rec["created_at"]),
        ts(&rec["started_at"]),
        ts(&rec["ended_at"]),
    );
    assert!(created <= started && started <= ended, "{rec:#}");

    let rec = t.must_record("f-3");
    assert_eq!(keys(&rec), BTreeSet::from(RECORD_KEYS), "{rec:#}");
    assert_eq!(rec["error"]["kind"], "config");
    assert_eq!(rec["started_at"], Value::Null);
    assert_eq!(rec["attempts"], 0);
    assert!(ts(&rec["created_at"]) <= ts(&rec["ended_at"]));
}

#[test]
fn each_record_is_in_one_place_and_nothing_is_left_behind() {
    let t = TestRoot::new();
    t.tasker("org", "ok", "#!/bin/sh\ncat\n");
    t.tasker("org", "ko", "#!/bin/sh\nexit 1\n");
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for i in 0..8 {
        let (tasker, list) = if i % 3 == 0 {
            ("ko", &mut failed)
        } else {
            ("ok", &mut done)
        };
        let id = format!("r-{i}");
        t.drop_task(
            &format!("{id}.json"),
            &format!(r#"{{"domain":"org","tasker":"{tasker}","payload":{{"i":{i}}}}}"#),
        );
        list.push(format!("{id}.json"));
    }
    t.run_drain(3);
    done.sort();
    failed.sort();
    assert_eq!(t.list("var/spool/done"), done);
    assert_eq!(t.list("var/spool/failed"), failed);
    assert!(
        t.list("var/spool/run").is_empty(),
        "{:?}",
        t.list("var/spool/run")
    );
    assert!(
        t.list("var/spool/in").is_empty(),
        "{:?}",
        t.list("var/spool/in")
    );
    assert!(t.list("var/spool/rejected").is_empty());
    for (dir, state) in [("done", "completed"), ("failed", "failed")] {
        for name in t.list(&format!("var/spool/{dir}")) {
            let bytes = fs::read(t.join(&format!("var/spool/{dir}/{name}"))).unwrap();
            let rec: Value =
                serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{dir}/{name}: {e}"));
            assert_eq!(rec["state"], state, "{dir}/{name}");
            assert_eq!(format!("{}.json", rec["id"].as_str().unwrap()), name);
            let i = rec["id"].as_str().unwrap()[2..].parse::<i64>().unwrap();
            assert_eq!(rec["payload"], json!({"i": i}));
        }
    }
    for dir in ["var/spool/done", "var/spool/failed", "var/spool/run"] {
        let stray: Vec<String> = t
            .list(dir)
            .into_iter()
            .filter(|n| n.starts_with('.') || n.ends_with(".tmp") || !n.ends_with(".json"))
            .collect();
        assert!(stray.is_empty(), "{dir}: {stray:?}");
    }
    // One points log per execution, each ending with its final point.
    for i in 0..8 {
        let names = t.point_names(&format!("r-{i}"));
        let last = if i % 3 == 0 { "failed" } else { "completed" };
        assert_eq!(
            names.last().map(String::as_str),
            Some(last),
            "r-{i}: {names:?}"
        );
        assert_eq!(names.iter().filter(|n| *n == last).count(), 1);
    }
}
