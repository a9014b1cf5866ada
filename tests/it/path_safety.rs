//! Path safety (SPEC 2, 5, 6): no name in a task file or chosen by a
//! taskmaster reaches an executable outside tsk/ or in a sibling domain,
//! and a payload is data, never shell code.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{json, Value};

use crate::common::*;

/// Writes `<root>/outside/evil`, an executable that touches `<root>/MARKER`
/// if it is ever run, and returns its path.
fn evil(t: &TestRoot) -> PathBuf {
    let dir = t.join("outside");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("evil");
    write_executable(
        &path,
        &format!("#!/bin/sh\ntouch '{}'\ncat\n", t.join("MARKER").display()),
    );
    path
}

fn assert_no_marker(t: &TestRoot) {
    assert!(!t.join("MARKER").exists(), "a program outside tsk/ was run");
}

fn reason(t: &TestRoot, name: &str) -> String {
    t.rejected_reason(name)
        .unwrap_or_else(|| {
            panic!(
                "no rejected/{name}.reason; rejected: {:?}",
                t.list("var/spool/rejected")
            )
        })
        .trim_end()
        .to_string()
}

/// Asserts `id` failed with `error.kind` config and returns the message.
fn config_failure(t: &TestRoot, id: &str) -> String {
    let rec = t.must_record(id);
    assert_eq!(rec["state"], "failed", "{id}: {rec}");
    assert_eq!(rec["error"]["kind"], "config", "{id}: {rec}");
    assert!(
        !t.point_names(id).iter().any(|p| p == "started"),
        "{id} never started a tasker: {:?}",
        t.point_names(id)
    );
    rec["error"]["message"].as_str().unwrap().to_string()
}

#[test]
fn traversal_in_a_task_file_is_rejected_at_intake() {
    let t = TestRoot::new();
    evil(&t);
    t.tasker("org", "echo", "#!/bin/sh\ncat\n");
    let cases = [
        (
            "up-tasker.json",
            r#"{"domain":"org","tasker":"../outside/evil"}"#,
            "invalid taskee",
        ),
        (
            "abs-tasker.json",
            r#"{"domain":"org","tasker":"/bin/sh"}"#,
            "invalid taskee",
        ),
        (
            "dot-tasker.json",
            r#"{"domain":"org","tasker":".."}"#,
            "invalid taskee",
        ),
        (
            "up-domain.json",
            r#"{"domain":"org/../../outside","tasker":"evil"}"#,
            "invalid domain",
        ),
        (
            "dots-domain.json",
            r#"{"domain":"..","tasker":"evil"}"#,
            "invalid domain",
        ),
        (
            "slash-id.json",
            r#"{"domain":"org","tasker":"echo","id":"../../outside/x"}"#,
            "invalid task id",
        ),
    ];
    for (name, body, _) in cases {
        t.drop_task(name, body);
    }
    t.drop_task("good.json", r#"{"domain":"org","tasker":"echo"}"#);
    t.run_drain(1);
    for (name, body, want) in cases {
        let r = reason(&t, name);
        assert!(
            r.starts_with(want),
            "{name}: {r:?} should start with {want:?}"
        );
        assert_eq!(
            fs::read_to_string(t.join(&format!("var/spool/rejected/{name}"))).unwrap(),
            body
        );
    }
    assert_eq!(t.must_record("good")["state"], "completed");
    assert!(t.list("var/spool/failed").is_empty());
    assert!(!t.join("outside/x.json").exists());
    assert_no_marker(&t);
}

#[test]
fn a_taskmaster_cannot_choose_a_path() {
    let t = TestRoot::new();
    evil(&t);
    t.taskmaster("tm1", r#""../../outside/evil""#);
    t.taskmaster("tm2", r#""../../bin/sh""#);
    t.taskmaster("tm3", r#"_taskee_ = "/bin/sh";"#);
    t.taskmaster(
        "tm4",
        &format!("{:?}", t.join("outside/evil").display().to_string()),
    );
    for d in ["tm1", "tm2", "tm3", "tm4"] {
        t.drop_task(
            &format!("{d}.json"),
            &format!(r#"{{"domain":"{d}","tasker":"echo"}}"#),
        );
    }
    t.run_drain(2);
    for d in ["tm1", "tm2", "tm3", "tm4"] {
        let msg = config_failure(&t, d);
        assert!(msg.contains("invalid taskee"), "{d}: {msg}");
    }
    assert_no_marker(&t);
}

#[test]
fn symlinks_out_of_tsk_are_never_followed() {
    let t = TestRoot::new();
    let evil = evil(&t);
    // tsk/org/evil -> <root>/outside/evil
    fs::create_dir_all(t.join("tsk/org")).unwrap();
    std::os::unix::fs::symlink(&evil, t.join("tsk/org/evil")).unwrap();
    // A relative link that climbs out.
    std::os::unix::fs::symlink("../../outside/evil", t.join("tsk/org/rel")).unwrap();
    // tsk/org2 -> <root>/outside: a whole domain directory outside tsk/.
    std::os::unix::fs::symlink(t.join("outside"), t.join("tsk/org2")).unwrap();
    t.tasker("org", "echo", "#!/bin/sh\ncat\n");
    t.drop_task("via-link.json", r#"{"domain":"org","tasker":"evil"}"#);
    t.drop_task("via-rel.json", r#"{"domain":"org.example","tasker":"rel"}"#);
    t.drop_task("via-dir.json", r#"{"domain":"org2","tasker":"evil"}"#);
    t.drop_task("good.json", r#"{"domain":"org","tasker":"echo"}"#);
    t.run_drain(2);
    for id in ["via-link", "via-rel", "via-dir"] {
        let msg = config_failure(&t, id);
        assert!(msg.contains("outside tsk/"), "{id}: {msg}");
    }
    assert_eq!(t.must_record("good")["state"], "completed");
    assert_no_marker(&t);
}

#[test]
fn a_domain_reaches_its_branch_and_any_but_never_a_sibling() {
    let t = TestRoot::new();
    evil(&t);
    let mark = |who: &str| format!("#!/bin/sh\necho '{{\"by\":\"{who}\"}}'\n");
    t.tasker("org.other", "sib", &mark("sibling"));
    t.tasker("org", "x", &mark("org"));
    t.tasker("any", "y", &mark("any"));
    t.drop_task("sib.json", r#"{"domain":"org.example","tasker":"sib"}"#);
    t.drop_task("x.json", r#"{"domain":"org.example","tasker":"x"}"#);
    t.drop_task("y.json", r#"{"domain":"org.example","tasker":"y"}"#);
    // The sibling's own domain does reach it.
    t.drop_task("own.json", r#"{"domain":"org.other","tasker":"sib"}"#);
    t.run_drain(2);

    let msg = config_failure(&t, "sib");
    assert!(msg.contains("no tasker"), "{msg}");
    let x = t.must_record("x");
    assert_eq!(x["state"], "completed");
    assert_eq!(x["tasker_path"], "tsk/org/x");
    assert_eq!(x["payload"], json!({"by":"org"}));
    let y = t.must_record("y");
    assert_eq!(y["state"], "completed");
    assert_eq!(y["tasker_path"], "tsk/any/y");
    assert_eq!(y["payload"], json!({"by":"any"}));
    assert_eq!(t.must_record("own")["payload"], json!({"by":"sibling"}));
    assert_no_marker(&t);
}

const HOSTILE: &str = r#"{"cmd":"$(touch INJ1)","b":"`touch INJ2`; touch INJ3","c":"'; touch INJ1; '","d":"\"; touch INJ2; \""}"#;

/// Every path under `dir` whose name starts with "INJ".
fn injected(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with("INJ") {
            found.push(p.clone());
        }
        if e.file_type().map(|ft| ft.is_dir()).unwrap_or(false) {
            injected(&p, found);
        }
    }
}

#[test]
fn a_payload_is_data_never_shell() {
    let t = TestRoot::new();
    let payload: Value = serde_json::from_str(HOSTILE).unwrap();
    // A directory tasker whose cmd is a `sh -c` string.
    let shdir = t.tasker_dir("org", "shcat", r#"{"cmd":"cat"}"#, &[]);
    // A directory tasker whose cmd is an argv running a script.
    let argvdir = t.tasker_dir(
        "org",
        "argvcat",
        r#"{"cmd":["./run.sh"]}"#,
        &[("run.sh", "#!/bin/sh\ncat\n")],
    );
    // An executable file tasker.
    t.tasker("org", "filecat", "#!/bin/sh\ncat\n");
    for taskee in ["shcat", "argvcat", "filecat"] {
        let body = json!({"domain":"org","tasker":taskee,"payload":payload,"headers":{"h":"$(touch INJ1)"}});
        t.drop_task(&format!("{taskee}.json"), &body.to_string());
    }
    // Through `spoolflow submit`, as an argument and on stdin.
    let out = t
        .cmd()
        .args([
            "submit",
            "--domain",
            "org",
            "--tasker",
            "shcat",
            "--id",
            "submitted",
            HOSTILE,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = t
        .cmd()
        .args([
            "submit", "--domain", "org", "--tasker", "filecat", "--id", "piped", "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(HOSTILE.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    t.run_drain(2);
    for id in ["shcat", "argvcat", "filecat", "submitted", "piped"] {
        let rec = t.must_record(id);
        assert_eq!(rec["state"], "completed", "{id}: {rec}");
        assert_eq!(
            rec["payload"], payload,
            "{id}: the payload comes back exactly"
        );
    }
    assert_eq!(
        t.must_record("shcat")["headers"],
        json!({"h":"$(touch INJ1)"})
    );

    let mut found = Vec::new();
    injected(t.path(), &mut found);
    injected(&shdir, &mut found);
    injected(&argvdir, &mut found);
    if let Ok(cwd) = std::env::current_dir() {
        for n in ["INJ1", "INJ2", "INJ3"] {
            if cwd.join(n).exists() {
                found.push(cwd.join(n));
            }
        }
    }
    assert!(found.is_empty(), "shell code in the payload ran: {found:?}");
}
