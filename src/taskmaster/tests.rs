//! Unit tests of the taskmasters: choices, rejections, the sandbox's
//! bounds and the cache of compiled scripts.

use super::*;
use serde_json::json;
use std::time::Duration;

struct Fixture {
    id: TaskId,
    exid: TaskId,
    nid: Nid,
    domain: Domain,
    tasker: Option<Taskee>,
    attempt: u32,
    offers: u32,
    headers: Object,
    refusals: Vec<Refusal>,
    payload: Object,
}

impl Fixture {
    fn new(domain: &str, tasker: Option<&str>) -> Fixture {
        let obj = |v: serde_json::Value| v.as_object().unwrap().clone();
        Fixture {
            id: "order-1".parse().unwrap(),
            exid: "flow-9".parse().unwrap(),
            nid: "0_1".parse().unwrap(),
            domain: domain.parse().unwrap(),
            tasker: tasker.map(|t| t.parse().unwrap()),
            attempt: 2,
            offers: 3,
            headers: obj(json!({"lang": "fr", "n": 7})),
            refusals: vec![Refusal {
                taskee: "busy".parse().unwrap(),
                reason: "full".into(),
            }],
            payload: obj(json!({"x": 42, "list": [1, 2], "name": "n"})),
        }
    }

    fn input(&self) -> TaskmasterInput<'_> {
        TaskmasterInput {
            id: &self.id,
            exid: &self.exid,
            nid: &self.nid,
            domain: &self.domain,
            tasker: self.tasker.as_ref(),
            attempt: self.attempt,
            offers: self.offers,
            headers: &self.headers,
            refusals: &self.refusals,
            payload: &self.payload,
        }
    }
}

fn write(root: &Path, domain: &str, script: &str) -> PathBuf {
    let dir = root.join("tsk").join(domain);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("taskmaster.rhai");
    std::fs::write(&path, script).unwrap();
    path
}

fn taskee(s: &str) -> Choice {
    Choice::Taskee(s.parse().unwrap())
}

/// Runs `script` as the taskmaster of `org` for a task requesting
/// `stamp`.
fn run(script: &str) -> Result<Choice, TaskmasterError> {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "org", script);
    let mut tm = Taskmasters::new(tmp.path());
    tm.choose(&Fixture::new("org", Some("stamp")).input())
}

#[test]
fn lookup_goes_up_the_branch_then_any() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let tm = Taskmasters::new(root);
    let d: Domain = "a.b.c".parse().unwrap();
    assert_eq!(tm.find(&d), None);

    let any = write(root, "any", "\"any\"");
    assert_eq!(tm.find(&d), Some(any));
    let a = write(root, "a", "\"a\"");
    assert_eq!(tm.find(&d), Some(a.clone()));
    // A sibling or a longer domain is never reached.
    write(root, "a.b.x", "\"sibling\"");
    write(root, "a.b.c.d", "\"child\"");
    write(root, "a.bc", "\"prefix\"");
    assert_eq!(tm.find(&d), Some(a));
    let ab = write(root, "a.b", "\"ab\"");
    assert_eq!(tm.find(&d), Some(ab));
    let abc = write(root, "a.b.c", "\"abc\"");
    assert_eq!(tm.find(&d), Some(abc));

    // A directory named taskmaster.rhai is the domain's taskmaster (one
    // that cannot be read): `any`'s is not used instead.
    std::fs::create_dir_all(root.join("tsk/z/taskmaster.rhai")).unwrap();
    let z: Domain = "z".parse().unwrap();
    assert_eq!(tm.find(&z), Some(root.join("tsk/z/taskmaster.rhai")));

    let mut tm = tm;
    let f = Fixture::new("a.b.c", None);
    assert_eq!(tm.choose(&f.input()).unwrap(), taskee("abc"));
    let f = Fixture::new("a.b.y", None);
    assert_eq!(tm.choose(&f.input()).unwrap(), taskee("ab"));
    let f = Fixture::new("q", None);
    assert_eq!(tm.choose(&f.input()).unwrap(), taskee("any"));
}

#[test]
fn assignment_return_and_precedence() {
    assert_eq!(run("_taskee_ = \"alpha\";").unwrap(), taskee("alpha"));
    assert_eq!(run("\"beta\"").unwrap(), taskee("beta"));
    assert_eq!(
        run("if payload.x > 40 { \"big\" } else { \"small\" }").unwrap(),
        taskee("big")
    );
    assert_eq!(
        run("_taskee_ = \"alpha\"; \"beta\"").unwrap(),
        taskee("alpha")
    );
    assert_eq!(
        run("let _taskee_ = \"shadow\"; 1").unwrap(),
        taskee("shadow")
    );
}

#[test]
fn no_choice_means_the_requested_tasker() {
    assert_eq!(run("").unwrap(), taskee("stamp"));
    assert_eq!(run("let x = 1;").unwrap(), taskee("stamp"));
    assert_eq!(run("()").unwrap(), taskee("stamp"));
    assert_eq!(run("if false { \"x\" }").unwrap(), taskee("stamp"));

    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "org", "if task.tasker == () { let x = 1; }");
    let mut tm = Taskmasters::new(tmp.path());
    let err = tm.choose(&Fixture::new("org", None).input()).unwrap_err();
    assert_eq!(
        err,
        TaskmasterError::NoChoice {
            path: "tsk/org/taskmaster.rhai".into()
        }
    );
    assert!(
        err.to_string().starts_with("tsk/org/taskmaster.rhai: "),
        "{err}"
    );
    assert!(path.is_file());
}

#[test]
fn evaluating_to_a_value_that_is_no_name_is_an_error() {
    for (script, said) in [
        ("42", "a number (42)"),
        ("1.5", "a number (1.5)"),
        ("true", "a boolean (true)"),
        ("[\"x\"]", "an array ([\"x\"])"),
        ("_taskee_ = (); #{a: 1}", "a map (#{\"a\": 1})"),
    ] {
        let err = run(script).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "tsk/org/taskmaster.rhai: the taskmaster evaluated to {said}; expected a taskee name or nothing"
            ),
            "{script}"
        );
    }
}

#[test]
fn a_taskmaster_that_cannot_be_read_is_an_error_not_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    // The next script up the branch would accept the task: never used.
    write(tmp.path(), "any", "\"fallback\"");
    let dir = tmp.path().join("tsk/org");
    std::fs::create_dir_all(&dir).unwrap();
    let at = dir.join("taskmaster.rhai");
    let cases: [(&str, &dyn Fn()); 3] = [
        ("is a symlink to gone.rhai, which does not exist", &|| {
            std::os::unix::fs::symlink("gone.rhai", &at).unwrap()
        }),
        ("is a directory, not a regular file", &|| {
            std::fs::create_dir(&at).unwrap()
        }),
        ("is a FIFO (named pipe), not a regular file", &|| {
            nix::unistd::mkfifo(&at, nix::sys::stat::Mode::S_IRWXU).unwrap()
        }),
    ];
    for (said, make) in cases {
        make();
        let mut tm = Taskmasters::new(tmp.path());
        let err = tm
            .choose(&Fixture::new("org", Some("stamp")).input())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("tsk/org/taskmaster.rhai: cannot read: {said}")
        );
        if at.is_dir() {
            std::fs::remove_dir(&at).unwrap();
        } else {
            std::fs::remove_file(&at).unwrap();
        }
    }
}

#[test]
fn assigning_a_non_string_is_an_error() {
    let err = run("_taskee_ = 5;").unwrap_err();
    assert!(
        matches!(err, TaskmasterError::TaskeeNotString { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("must be a string"), "{err}");
}

#[test]
fn without_a_taskmaster() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tm = Taskmasters::new(tmp.path());
    let f = Fixture::new("org.x", Some("stamp"));
    assert_eq!(tm.choose(&f.input()).unwrap(), taskee("stamp"));
    let f = Fixture::new("org.x", None);
    let err = tm.choose(&f.input()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no taskmaster and no requested tasker for domain org.x"
    );
}

#[test]
fn reject_fails_the_task() {
    assert_eq!(
        run("reject(\"why\")").unwrap(),
        Choice::Reject("why".into())
    );
    assert_eq!(
        run("_taskee_ = \"a\"; if payload.x == 42 { reject(`no ${payload.x}`); } \"b\"").unwrap(),
        Choice::Reject("no 42".into())
    );
    // From inside a function, and not catchable.
    assert_eq!(
        run("fn no(r) { reject(r) } try { no(\"deep\") } catch (e) { \"caught\" }").unwrap(),
        Choice::Reject("deep".into())
    );
    // A thrown value is a script error, not a rejection.
    let err = run("throw \"boom\"").unwrap_err();
    assert!(matches!(err, TaskmasterError::Script { .. }), "{err}");
    assert!(err.to_string().contains("boom"), "{err}");
}

#[test]
fn task_fields_are_visible() {
    let script = r#"
        if task.id != "order-1" { throw "id " + task.id }
        if task.exid != "flow-9" { throw "exid" }
        if task.nid != "0_1" { throw "nid" }
        if task.domain != "org" { throw "domain" }
        if task.tasker != "stamp" { throw "tasker" }
        if task.attempt != 2 { throw "attempt" }
        if task.offers != 3 { throw "offers" }
        if task.headers.lang != "fr" || task.headers.n != 7 { throw "headers" }
        if task.refusals.len() != 1 { throw "refusals" }
        if task.refusals[0].taskee != "busy" { throw "refusal taskee" }
        if task.refusals[0].reason != "full" { throw "refusal reason" }
        if payload.x != 42 || payload.list[1] != 2 { throw "payload" }
        "seen"
    "#;
    assert_eq!(run(script).unwrap(), taskee("seen"));
}

#[test]
fn changing_task_and_payload_is_harmless() {
    let script = r#"
        task.domain = "evil"; task.extra = 1; payload.x = "y"; payload = 5;
        task = #{}; "ok"
    "#;
    assert_eq!(run(script).unwrap(), taskee("ok"));
}

#[test]
fn invalid_taskees_are_errors() {
    for bad in ["../../bin/sh", "a/b", "a.b", "", "/bin/sh"] {
        for script in [format!("{bad:?}"), format!("_taskee_ = {bad:?};")] {
            let err = run(&script).unwrap_err();
            assert!(
                matches!(err, TaskmasterError::InvalidTaskee { .. }),
                "{script}: {err}"
            );
            assert!(
                err.to_string().starts_with(&format!(
                    "tsk/org/taskmaster.rhai: chose invalid taskee {bad:?}: "
                )),
                "{err}"
            );
        }
    }
}

#[test]
fn syntax_errors_report_the_position() {
    let err = run("let a = 1;\nlet b = 2;\nlet c = ;\n").unwrap_err();
    assert!(matches!(err, TaskmasterError::Syntax { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("tsk/org/taskmaster.rhai: syntax error: "),
        "{msg}"
    );
    assert!(msg.contains("(line 3, position"), "{msg}");

    let tmp = tempfile::tempdir().unwrap();
    let tm = Taskmasters::new(tmp.path());
    let bad = write(tmp.path(), "org", "fn (");
    let err = tm.check(&bad).unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
    let good = write(tmp.path(), "other", "\"ok\"");
    tm.check(&good).unwrap();
    let missing = tmp.path().join("tsk/none/taskmaster.rhai");
    let err = tm.check(&missing).unwrap_err();
    assert!(matches!(err, TaskmasterError::Read { .. }), "{err}");
}

#[test]
fn runtime_errors_are_script_errors() {
    let err = run("let x = undefined_var; \"a\"").unwrap_err();
    assert!(matches!(err, TaskmasterError::Script { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("tsk/org/taskmaster.rhai: script error: variable not found"),
        "{err}"
    );
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn cache_follows_file_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tm = Taskmasters::new(tmp.path());
    let f = Fixture::new("org", None);
    write(tmp.path(), "org", "\"alpha\"");
    assert_eq!(tm.choose(&f.input()).unwrap(), taskee("alpha"));
    assert_eq!(tm.choose(&f.input()).unwrap(), taskee("alpha"));
    write(tmp.path(), "org", "\"beta-two\"");
    assert_eq!(tm.choose(&f.input()).unwrap(), taskee("beta-two"));
    // A broken version fails, a fixed one works again.
    write(tmp.path(), "org", "\"unterminated");
    assert!(matches!(
        tm.choose(&f.input()),
        Err(TaskmasterError::Syntax { .. })
    ));
    assert!(matches!(
        tm.choose(&f.input()),
        Err(TaskmasterError::Syntax { .. })
    ));
    write(tmp.path(), "org", "\"gamma\"");
    assert_eq!(tm.choose(&f.input()).unwrap(), taskee("gamma"));
    // Removed: the next taskmaster up (none here) applies.
    std::fs::remove_file(tmp.path().join("tsk/org/taskmaster.rhai")).unwrap();
    assert!(matches!(
        tm.choose(&f.input()),
        Err(TaskmasterError::NoTaskee(_))
    ));
}

/// Each hostile script fails with a clear message, and the same
/// `Taskmasters` then runs a good script.
#[test]
fn sandbox_limits() {
    // Growing a collection one element at a time is checked on every
    // operation at a cost that grows with the collection, and `print` is
    // slow in debug builds, so the deadline may come first.
    let slow = ["size limit", "time limit"];
    let spam = ["operation limit", "time limit"];
    let cases: &[(&str, &[&str])] = &[
        ("loop {}", &["operation limit"]),
        ("while true { let x = 1; }", &["operation limit"]),
        ("let s = \"x\"; loop { s += s; }", &["size limit"]),
        ("let a = [1]; loop { a += a; }", &["size limit"]),
        ("let a = []; loop { a.push(1); }", &slow),
        (
            // Rhai does not count a map's keys on `m[k] = v`: what stops it
            // is how fast the build runs.
            "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
            &["time limit", "operation limit", "memory limit"],
        ),
        ("fn f(n) { f(n + 1) } f(0)", &["call depth limit"]),
        ("loop { print(\"spam\"); }", &spam),
        ("loop { debug(\"spam\"); }", &spam),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let mut tm = Taskmasters::new(tmp.path());
    let bad = Fixture::new("bad", Some("stamp"));
    let good = Fixture::new("good", None);
    write(tmp.path(), "good", "\"fine\"");
    for (script, expected) in cases {
        write(tmp.path(), "bad", script);
        let err = tm.choose(&bad.input()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, TaskmasterError::Limit { .. }),
            "{script}: {msg}"
        );
        assert!(
            msg.starts_with("tsk/bad/taskmaster.rhai: exceeded the sandbox's "),
            "{script}: {msg}"
        );
        assert!(expected.iter().any(|e| msg.contains(e)), "{script}: {msg}");
        assert_eq!(
            tm.choose(&good.input()).unwrap(),
            taskee("fine"),
            "{script}"
        );
    }
}

#[test]
fn eval_and_import_are_unavailable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tm = Taskmasters::new(tmp.path());
    let bad = Fixture::new("bad", Some("stamp"));
    let good = Fixture::new("good", None);
    write(tmp.path(), "good", "\"fine\"");
    for script in [
        "eval(\"1\")",
        "import \"x\" as y;",
        "let f = Fn(\"eval\"); f.call(\"\\\"sneaky\\\"\")",
        "call(Fn(\"eval\"), \"\\\"sneaky\\\"\")",
    ] {
        write(tmp.path(), "bad", script);
        let err = tm.choose(&bad.input()).unwrap_err();
        assert!(
            matches!(
                err,
                TaskmasterError::Syntax { .. } | TaskmasterError::Script { .. }
            ),
            "{script}: {err}"
        );
        assert!(
            err.to_string().starts_with("tsk/bad/taskmaster.rhai: "),
            "{err}"
        );
        assert_eq!(
            tm.choose(&good.input()).unwrap(),
            taskee("fine"),
            "{script}"
        );
    }
}

#[test]
fn wall_clock_deadline_terminates() {
    let engine = sandbox_engine();
    let err = with_deadline("t", Duration::from_millis(1), || {
        engine.run("loop { let x = 1; }").unwrap_err()
    });
    assert!(matches!(*err, EvalAltResult::ErrorTerminated(..)), "{err}");
    let msg = classify("t", &err).unwrap_err().to_string();
    assert!(
        msg.starts_with("t: exceeded the sandbox's time limit"),
        "{msg}"
    );
    // Outside a deadline, only the operation limit applies.
    let err = engine.run("loop {}").unwrap_err();
    assert!(
        matches!(*err, EvalAltResult::ErrorTooManyOperations(..)),
        "{err}"
    );
    assert_eq!(engine.eval::<INT>("1 + 2").unwrap(), 3);
}

#[test]
fn taskmasters_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Taskmasters>();
    send_sync::<TaskmasterError>();
}

#[test]
fn messages_are_lowercase() {
    assert_eq!(lowercase_first("Variable not found"), "variable not found");
    assert_eq!(lowercase_first("EOF reached"), "EOF reached");
    assert_eq!(lowercase_first(""), "");
}
