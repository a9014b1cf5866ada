//! Unit tests of the wire types: durations, task files and their
//! refusals, tasks and their `run/` files, states and kinds.

use super::*;
use serde_json::json;

#[test]
fn durations() {
    let cases = [
        ("250ms", 250),
        ("30s", 30_000),
        ("5m", 300_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("1.5", 1_500),
        ("0.25s", 250),
        ("12", 12_000),
    ];
    for (s, ms) in cases {
        assert_eq!(
            s.parse::<Dur>().unwrap().0,
            Duration::from_millis(ms),
            "{s}"
        );
    }
    assert_eq!(
        Dur::from_json(&json!(2.5)).unwrap().0,
        Duration::from_millis(2500)
    );
    for bad in ["", "s", "-1s", "5x", "1e400", "abc", "NaN"] {
        assert!(bad.parse::<Dur>().is_err(), "{bad}");
    }
    assert!(Dur::from_json(&json!(-1)).is_err());
    assert!(Dur::from_json(&json!(true)).is_err());
    assert_eq!(Dur(Duration::from_millis(250)).to_string(), "250ms");
    assert_eq!(Dur(Duration::from_secs(30)).to_string(), "30s");
}

#[test]
fn full_task_file() {
    let f = TaskFile::parse(
        br#"{"domain":"org.example.sales","tasker":"stamp","payload":{"book":"moby-dick"},
            "id":"order-1234","priority":-3,"headers":{"by":"alice"},
            "timeout":"30s","start_timeout":"10m","retries":3,"retry_on_timeout":false}"#,
    )
    .unwrap();
    assert_eq!(f.domain.unwrap().as_str(), "org.example.sales");
    assert_eq!(f.tasker.unwrap().as_str(), "stamp");
    assert_eq!(f.id.unwrap().as_str(), "order-1234");
    assert_eq!(f.priority, -3);
    assert_eq!(f.payload["book"], "moby-dick");
    assert_eq!(f.headers["by"], "alice");
    assert_eq!(f.options.timeout.unwrap().0, Duration::from_secs(30));
    assert_eq!(f.options.start_timeout.unwrap().0, Duration::from_secs(600));
    assert_eq!(f.options.retries, Some(3));
    assert_eq!(f.options.retry_on_timeout, Some(false));
}

#[test]
fn defaults() {
    let f = TaskFile::parse(br#"{"domain":"org"}"#).unwrap();
    assert!(f.payload.is_empty() && f.headers.is_empty());
    assert_eq!(f.priority, 0);
    assert!(f.tasker.is_none() && f.id.is_none());
    assert_eq!(f.options, TaskOptions::default());
}

#[test]
fn minus_zero_is_an_integer() {
    let f = TaskFile::parse(br#"{"domain":"org","priority":-0,"retries":-0}"#).unwrap();
    assert_eq!(f.priority, 0);
    assert_eq!(f.options.retries, Some(0));
}

fn reason(bytes: &[u8]) -> String {
    TaskFile::parse(bytes).unwrap_err().to_string()
}

#[test]
fn refusals_have_clear_reasons() {
    assert_eq!(
        reason(b"{\n\n  \"a\" 1}"),
        "invalid JSON at line 3 column 7: expected `:`"
    );
    assert_eq!(
        reason(br#"{"domain":"org","prioity":1}"#),
        "unknown key \"prioity\" (did you mean \"priority\"?)"
    );
    assert_eq!(
        reason(b"[1]"),
        "a task file must hold a JSON object, not an array"
    );
    assert_eq!(
        reason(br#"{"payload":"x"}"#),
        "\"payload\" must be a JSON object"
    );
    assert_eq!(
        reason(br#"{"headers":[]}"#),
        "\"headers\" must be a JSON object"
    );
    assert_eq!(
        reason(br#"{"priority":1.5}"#),
        "\"priority\" must be an integer (i32)"
    );
    assert_eq!(
        reason(br#"{"priority":3000000000}"#),
        "\"priority\" must be an integer (i32)"
    );
    assert_eq!(
        reason(br#"{"retries":-1}"#),
        "\"retries\" must be a non-negative integer (at most 4294967295)"
    );
    assert!(reason(br#"{"domain":"../x"}"#).starts_with("invalid domain"));
    assert!(reason(br#"{"domain":"any"}"#).contains("reserved"));
    assert!(reason(br#"{"tasker":"../../bin/sh"}"#).starts_with("invalid taskee"));
    assert!(reason(br#"{"id":"a/b"}"#).starts_with("invalid task id"));
    assert!(reason(br#"{"timeout":"5x"}"#).starts_with("invalid duration for \"timeout\""));
    assert!(reason(b"\xff\x00\xfe").starts_with("invalid JSON"));
    // A flow is kept as it is here; its tree is checked at intake.
    assert_eq!(
        TaskFile::parse(br#"{"flow":{"task":"a"}}"#).unwrap().flow,
        Some(serde_json::json!({"task":"a"}))
    );
}

#[test]
fn task_from_file_fills_ids_and_domain() {
    let f = TaskFile::parse(br#"{"payload":{}}"#).unwrap();
    let dom: Domain = "org.example".parse().unwrap();
    let t = Task::from_file(f.clone(), Some("my-task"), Some(&dom)).unwrap();
    assert_eq!(t.id.as_str(), "my-task");
    assert_eq!(t.exid, t.id);
    assert_eq!(t.nid.as_str(), "0");
    assert_eq!(t.domain, dom);
    let t = Task::from_file(f.clone(), Some(".bad stem"), Some(&dom)).unwrap();
    assert!(t.id.as_str().starts_with('t'));
    assert_eq!(
        Task::from_file(f, None, None).unwrap_err(),
        InputError::NoDomain
    );
}

#[test]
fn task_round_trips_through_its_file() {
    let f =
        TaskFile::parse(br#"{"domain":"org","tasker":"x","timeout":"2s","retries":1}"#).unwrap();
    let t = Task::from_file(f, Some("a"), None).unwrap();
    let back = TaskFile::parse(t.to_file_json().to_string().as_bytes()).unwrap();
    let t2 = Task::from_file(back, None, None).unwrap();
    assert_eq!(t, t2);
}

#[test]
fn states_and_kinds_serialize_lowercase() {
    assert_eq!(
        serde_json::to_string(&State::Completed).unwrap(),
        "\"completed\""
    );
    assert_eq!(
        serde_json::to_string(&ErrorKind::Timeout).unwrap(),
        "\"timeout\""
    );
    assert_eq!(State::Aborted.as_str(), "aborted");
}

#[test]
fn a_byte_order_mark_is_named() {
    let mut bytes = vec![0xEF, 0xBB, 0xBF];
    bytes.extend_from_slice(br#"{"domain":"org"}"#);
    assert_eq!(
        reason(&bytes),
        "the file starts with a byte-order mark (EF BB BF); save it as UTF-8 without BOM"
    );
    assert!(reason(b"\xff\xfe{\x00").contains("byte-order mark (FF FE, UTF-16)"));
    // A BOM anywhere else is no byte-order mark.
    assert!(reason(b" \xEF\xBB\xBF{}").starts_with("invalid JSON"));
}

#[test]
fn a_key_given_twice_is_refused_wherever_it_is() {
    assert_eq!(
        reason(br#"{"domain":"org","tasker":"a","tasker":"b"}"#),
        "duplicate key \"tasker\" at line 1 column 42: a key may appear only once in an object"
    );
    let nested =
        reason(b"{\"domain\":\"org\",\n\"payload\":{\"qty\":1,\"x\":[{\"a\":1,\"a\":2}]}}");
    assert!(
        nested.starts_with("duplicate key \"a\" at line 2"),
        "{nested}"
    );
    // The same key in two objects is no duplicate.
    let f =
        TaskFile::parse(br#"{"domain":"org","payload":{"domain":1,"a":{"domain":2}}}"#).unwrap();
    assert_eq!(f.payload["a"]["domain"], 2);
    // Values parse as before: numbers, nulls, nesting.
    let f = TaskFile::parse(
        br#"{"domain":"org","payload":{"i":-1,"u":18446744073709551615,"f":0.1,"n":null,"s":"\u00e9","b":[true,[]]}}"#,
    )
    .unwrap();
    assert_eq!(
        Value::Object(f.payload),
        json!({"i":-1,"u":18446744073709551615u64,"f":0.1,"n":null,"s":"é","b":[true,[]]})
    );
}

#[test]
fn a_file_cut_short_is_told_from_a_malformed_one() {
    let eof = |bytes: &[u8]| match TaskFile::parse(bytes).unwrap_err() {
        InputError::Json { eof, .. } => eof,
        other => panic!("{other}"),
    };
    assert!(eof(b""));
    assert!(eof(br#"{"domain":"org","#));
    assert!(eof(br#"{"domain":"or"#));
    assert!(!eof(br#"{"domain":"org",}"#));
    assert!(!eof(br#"{"domain" 1}"#));
}

#[test]
fn a_null_flow_or_tasker_counts_as_missing_beside_the_other() {
    let f = TaskFile::parse(br#"{"domain":"d","tasker":"t","flow":null}"#).unwrap();
    assert_eq!(f.tasker.as_ref().map(|t| t.as_str()), Some("t"));
    assert!(f.flow.is_none());
    let f = TaskFile::parse(br#"{"domain":"d","tasker":null,"flow":{"task":"t"}}"#).unwrap();
    assert!(f.tasker.is_none() && f.flow.is_some());
    assert!(TaskFile::parse(br#"{"domain":"d","tasker":null,"flow":null}"#).is_ok());
    let both = reason(br#"{"domain":"d","tasker":"t","flow":{"task":"t"}}"#);
    assert!(both.contains("not both"), "{both}");
}
