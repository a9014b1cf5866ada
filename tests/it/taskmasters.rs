//! SPEC 5: taskmasters. Which script a domain runs (its branch, then
//! `any`), how a script chooses (`_taskee_`, a returned string, nothing),
//! `reject`, what it sees of a task, that its changes are discarded, and
//! how script errors and unknown taskees fail the task (`config`).

use serde_json::{json, Value};

use crate::common::*;

/// A tasker that replies with its own name, so the record shows who ran.
fn named(name: &str) -> String {
    format!("#!/bin/sh\ncat >/dev/null\necho '{{\"by\":\"{name}\"}}'\n")
}

fn config_reason(rec: &Value) -> String {
    assert_eq!(rec["state"], "failed", "{rec:#}");
    assert_eq!(rec["error"]["kind"], "config", "{rec:#}");
    rec["reason"].as_str().unwrap().to_string()
}

#[test]
fn the_nearest_taskmaster_of_the_branch_wins() {
    let t = TestRoot::new();
    t.taskmaster("org", r#""from_org""#);
    t.taskmaster("org.example", r#""from_example""#);
    // A sibling's and a child's scripts are never used.
    t.taskmaster("org.other", r#""from_other""#);
    t.taskmaster("org.example.sales.eu", r#""from_child""#);
    for name in ["from_org", "from_example", "from_other", "from_child"] {
        t.tasker("org", name, &named(name));
    }
    t.drop_task("sales.json", r#"{"domain":"org.example.sales"}"#);
    t.drop_task("example.json", r#"{"domain":"org.example"}"#);
    t.drop_task("misc.json", r#"{"domain":"org.misc"}"#);
    t.drop_task("top.json", r#"{"domain":"org"}"#);
    t.run_drain(2);
    assert_eq!(t.must_record("sales")["payload"]["by"], "from_example");
    assert_eq!(t.must_record("example")["payload"]["by"], "from_example");
    assert_eq!(t.must_record("misc")["payload"]["by"], "from_org");
    assert_eq!(t.must_record("top")["payload"]["by"], "from_org");
}

#[test]
fn a_branch_script_serves_deeper_domains() {
    let t = TestRoot::new();
    t.taskmaster("org", r#"_taskee_ = "stamp";"#);
    t.tasker("org", "stamp", &named("stamp"));
    t.drop_task("a.json", r#"{"domain":"org.example.sales"}"#);
    t.run_drain(1);
    let rec = t.must_record("a");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["taskee"], "stamp");
    assert_eq!(rec["tasker"], Value::Null);
    assert_eq!(rec["tasker_path"], "tsk/org/stamp");
}

#[test]
fn the_any_taskmaster_serves_domains_without_one() {
    let t = TestRoot::new();
    t.taskmaster("any", r#"if task.domain == "zeta.one" { "generic" } else { reject("wrong domain " + task.domain) }"#);
    t.tasker("any", "generic", &named("generic"));
    // A branch script elsewhere does not matter.
    t.taskmaster("org", r#"reject("not mine")"#);
    t.drop_task("z.json", r#"{"domain":"zeta.one","tasker":"ignored"}"#);
    t.run_drain(1);
    let rec = t.must_record("z");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["taskee"], "generic");
    assert_eq!(rec["tasker"], "ignored");
    assert_eq!(rec["tasker_path"], "tsk/any/generic");
}

#[test]
fn choices_by_assignment_by_return_and_by_default() {
    let t = TestRoot::new();
    t.taskmaster(
        "org",
        r#"
        if payload.how == "assign" { _taskee_ = "alpha"; "beta" }
        else if payload.how == "return" { "beta" }
        else if payload.how == "number" { 42 }
        "#,
    );
    for name in ["alpha", "beta", "requested"] {
        t.tasker("org", name, &named(name));
    }
    t.drop_task(
        "assign.json",
        r#"{"domain":"org","tasker":"requested","payload":{"how":"assign"}}"#,
    );
    t.drop_task(
        "return.json",
        r#"{"domain":"org","tasker":"requested","payload":{"how":"return"}}"#,
    );
    t.drop_task(
        "none.json",
        r#"{"domain":"org","tasker":"requested","payload":{"how":"none"}}"#,
    );
    t.drop_task(
        "number.json",
        r#"{"domain":"org","tasker":"requested","payload":{"how":"number"}}"#,
    );
    t.run_drain(2);
    // An assignment wins over the value the script ends with.
    assert_eq!(t.must_record("assign")["taskee"], "alpha");
    assert_eq!(t.must_record("return")["taskee"], "beta");
    // A value that is no name fails the task (issue 15).
    let number = t.must_record("number");
    assert_eq!(number["error"]["kind"], "config", "{number:#}");
    assert!(
        number["reason"]
            .as_str()
            .unwrap()
            .ends_with("evaluated to a number (42); expected a taskee name or nothing"),
        "{number:#}"
    );
    // Neither (nothing): the requested tasker stands.
    let none = t.must_record("none");
    assert_eq!(none["taskee"], "requested");
    assert_eq!(none["payload"]["by"], "requested");
    let offered = t
        .points("assign")
        .into_iter()
        .find(|p| p["point"] == "offered")
        .unwrap();
    assert_eq!(offered["taskee"], "alpha");
}

#[test]
fn without_a_taskmaster_the_requested_tasker_runs() {
    let t = TestRoot::new();
    t.tasker("org", "stamp", &named("stamp"));
    t.drop_task("a.json", r#"{"domain":"org.example","tasker":"stamp"}"#);
    t.run_drain(1);
    let rec = t.must_record("a");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"by":"stamp"}));
}

#[test]
fn without_a_taskmaster_or_a_requested_tasker_the_task_fails_config() {
    let t = TestRoot::new();
    t.tasker("org", "stamp", &named("stamp"));
    t.drop_task("a.json", r#"{"domain":"org.example"}"#);
    t.run_drain(1);
    let rec = t.must_record("a");
    let reason = config_reason(&rec);
    assert!(reason.contains("no taskmaster"), "{reason}");
    assert!(reason.contains("org.example"), "{reason}");
    assert_eq!(rec["taskee"], Value::Null);
    assert_eq!(rec["attempts"], 0);
    assert_eq!(t.point_names("a"), ["created", "failed"]);
}

#[test]
fn reject_fails_the_task_config_with_the_reason() {
    let t = TestRoot::new();
    t.taskmaster(
        "org",
        r#"if payload.qty > 10 { reject("no stock") } "stamp""#,
    );
    t.tasker(
        "org",
        "stamp",
        "#!/bin/sh\necho ran > \"$SPOOLFLOW_ROOT/ran\"\n",
    );
    t.drop_task("a.json", r#"{"domain":"org","payload":{"qty":11}}"#);
    t.run_drain(1);
    let rec = t.must_record("a");
    let reason = config_reason(&rec);
    assert!(reason.contains("no stock"), "{reason}");
    assert!(!t.join("ran").exists(), "the tasker must not run");
    let failed = t.points("a").pop().unwrap();
    assert_eq!(failed["point"], "failed");
    assert_eq!(failed["error"]["kind"], "config");
}

#[test]
fn the_script_sees_the_tasks_fields() {
    let t = TestRoot::new();
    t.taskmaster(
        "org",
        r#"
        let ok = task.headers.x == "1"
            && task.attempt == 1
            && task.offers == 0
            && task.id == "fields-1"
            && task.exid == "fields-1"
            && task.nid == "0"
            && task.domain == "org.example"
            && task.tasker == "requested"
            && task.refusals.len() == 0
            && payload.book == "moby-dick"
            && payload.nested.n == 7;
        if ok { "yes" } else { reject("saw " + task + " and " + payload) }
        "#,
    );
    t.tasker("org", "yes", &named("yes"));
    t.drop_task(
        "fields-1.json",
        r#"{"domain":"org.example","tasker":"requested","headers":{"x":"1"},
            "payload":{"book":"moby-dick","nested":{"n":7}}}"#,
    );
    // Routing on a header: the same script sends another task elsewhere.
    t.drop_task(
        "fields-2.json",
        r#"{"domain":"org.example","tasker":"requested","headers":{"x":"2"},
            "payload":{"book":"moby-dick","nested":{"n":7}}}"#,
    );
    t.run_drain(2);
    let rec = t.must_record("fields-1");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["taskee"], "yes");
    let other = t.must_record("fields-2");
    let reason = config_reason(&other);
    assert!(
        reason.contains("rejected by the taskmaster: saw "),
        "{reason}"
    );
}

#[test]
fn changes_the_script_makes_are_discarded() {
    let t = TestRoot::new();
    t.taskmaster(
        "org",
        r#"
        payload.book = "changed";
        payload.extra = 1;
        task.id = "other";
        task.headers.h = "changed";
        "stamp"
        "#,
    );
    t.tasker_dir(
        "org",
        "stamp",
        r#"{"cmd":["./run"],"in":"task"}"#,
        &[("run", "#!/bin/sh\ncat > \"$SPOOLFLOW_ROOT/stdin\"\n")],
    );
    t.drop_task(
        "a.json",
        r#"{"domain":"org","headers":{"h":"orig"},"payload":{"book":"moby-dick"}}"#,
    );
    t.run_drain(1);
    let rec = t.must_record("a");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["id"], "a");
    assert_eq!(rec["payload"], json!({"book":"moby-dick"}));
    assert_eq!(rec["headers"], json!({"h":"orig"}));
    let stdin: Value =
        serde_json::from_str(&std::fs::read_to_string(t.join("stdin")).unwrap()).unwrap();
    assert_eq!(stdin["id"], "a");
    assert_eq!(stdin["payload"], json!({"book":"moby-dick"}));
    assert_eq!(stdin["headers"], json!({"h":"orig"}));
}

#[test]
fn a_syntax_error_fails_config_with_the_position() {
    let t = TestRoot::new();
    t.taskmaster("org", "let a = 1;\nlet b = (a + ;\n\"stamp\"\n");
    t.tasker("org", "stamp", &named("stamp"));
    t.drop_task("a.json", r#"{"domain":"org","tasker":"stamp"}"#);
    t.run_drain(1);
    let reason = config_reason(&t.must_record("a"));
    assert!(reason.contains("tsk/org/taskmaster.rhai"), "{reason}");
    assert!(reason.contains("line 2"), "{reason}");
}

#[test]
fn a_runtime_script_error_fails_config() {
    let t = TestRoot::new();
    t.taskmaster("org", "let n = payload.missing.deeper;\n\"stamp\"\n");
    t.tasker("org", "stamp", &named("stamp"));
    t.drop_task("a.json", r#"{"domain":"org","tasker":"stamp"}"#);
    t.run_drain(1);
    let reason = config_reason(&t.must_record("a"));
    assert!(reason.contains("tsk/org/taskmaster.rhai"), "{reason}");
}

#[test]
fn choosing_a_taskee_that_does_not_exist_fails_config() {
    let t = TestRoot::new();
    t.taskmaster("org", r#""ghost""#);
    t.tasker("org", "stamp", &named("stamp"));
    // A tasker of a sibling domain is not reachable either.
    t.tasker("net", "ghost", &named("ghost"));
    t.drop_task("a.json", r#"{"domain":"org.example","tasker":"stamp"}"#);
    t.run_drain(1);
    let rec = t.must_record("a");
    let reason = config_reason(&rec);
    assert!(reason.contains("ghost"), "{reason}");
    assert_eq!(rec["taskee"], "ghost");
    assert!(!t.point_names("a").contains(&"started".to_string()));
}

#[test]
fn an_invalid_taskee_name_fails_config() {
    let t = TestRoot::new();
    t.taskmaster("org", r#""../../bin/sh""#);
    t.drop_task("a.json", r#"{"domain":"org"}"#);
    t.run_drain(1);
    let reason = config_reason(&t.must_record("a"));
    assert!(reason.contains("invalid taskee"), "{reason}");
}

#[test]
fn a_changed_script_is_used_by_the_next_run() {
    let t = TestRoot::new();
    t.taskmaster("org", r#""alpha""#);
    t.tasker("org", "alpha", &named("alpha"));
    t.tasker("org", "beta", &named("beta"));
    t.drop_task("a.json", r#"{"domain":"org"}"#);
    t.run_drain(1);
    assert_eq!(t.must_record("a")["taskee"], "alpha");
    t.taskmaster("org", r#"_taskee_ = "beta";"#);
    t.drop_task("b.json", r#"{"domain":"org"}"#);
    t.run_drain(1);
    assert_eq!(t.must_record("b")["taskee"], "beta");
}

#[test]
fn a_changed_script_is_recompiled_by_a_running_engine() {
    let t = TestRoot::new();
    t.taskmaster("org", r#""alpha""#);
    t.tasker("org", "alpha", &named("alpha"));
    t.tasker("org", "beta", &named("beta"));
    let engine = t.start_in_process(spoolflow::Options {
        workers: 1,
        ..spoolflow::Options::default()
    });
    t.drop_task("a.json", r#"{"domain":"org"}"#);
    wait_for("record a", DEADLINE, || t.record("a").is_some());
    assert_eq!(t.must_record("a")["taskee"], "alpha");
    // Same engine, same cache: the rewritten script (another length) is
    // compiled again.
    t.taskmaster("org", r#"_taskee_ = "beta";"#);
    t.drop_task("b.json", r#"{"domain":"org"}"#);
    wait_for("record b", DEADLINE, || t.record("b").is_some());
    assert_eq!(t.must_record("b")["taskee"], "beta");
    engine.stop();
}

/// A script past the 4 MiB bound is refused whole (`config`), as `check`
/// says: never its first 4 MiB run as if they were the script.
#[test]
fn a_taskmaster_over_four_mib_fails_its_tasks_rather_than_run_cut_short() {
    let t = TestRoot::new();
    let filler = format!("// {}\n", "c".repeat(97)).repeat(44_000);
    t.taskmaster(
        "org",
        &format!("let r = 1;\n{filler}reject(\"the end says no\");\n\"stamp\""),
    );
    t.tasker("org", "stamp", &named("stamp"));
    t.drop_task("big.json", r#"{"domain":"org"}"#);
    t.run_drain(1);
    let rec = t.must_record("big");
    assert_eq!(rec["state"], "failed", "{rec:#}");
    assert_eq!(rec["error"]["kind"], "config", "{rec:#}");
    let message = rec["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("is larger than 4194304 bytes"),
        "{message}"
    );
}
