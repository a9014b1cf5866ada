//! SPEC 6: taskers. Every reply form of the table, exit statuses and
//! signals, what a tasker gets (stdin, environment, working directory,
//! descriptors, process group), where its stderr goes, `tasker.json`, and
//! informative points. Each tasker is a real process (`sh` or `python3`)
//! that writes what it saw under the root, for the test to read back.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};

use crate::common::*;

/// Runs one task file `<id>.json` (domain `org.example`, requested tasker
/// `t`) and returns its record.
fn run_one(t: &TestRoot, id: &str, extra: &str) -> Value {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(",{extra}")
    };
    t.drop_task(
        &format!("{id}.json"),
        &format!(r#"{{"domain":"org.example","tasker":"t"{extra}}}"#),
    );
    t.run_drain(2);
    t.must_record(id)
}

/// A file a tasker wrote under the root.
fn out(t: &TestRoot, name: &str) -> String {
    fs::read_to_string(t.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_failed(rec: &Value, kind: &str) -> String {
    assert_eq!(rec["state"], "failed", "{rec:#}");
    assert_eq!(rec["error"]["kind"], kind, "{rec:#}");
    let reason = rec["reason"]
        .as_str()
        .expect("a failed record has a reason")
        .to_string();
    assert_eq!(rec["error"]["message"], reason.as_str());
    reason
}

// ------------------------------------------------------------------ replies

#[test]
fn empty_stdout_completes_with_the_payload_unchanged() {
    let t = TestRoot::new();
    t.tasker("org.example", "t", "#!/bin/sh\ncat >/dev/null\n");
    let rec = run_one(&t, "a", r#""payload":{"book":"moby-dick","n":3}"#);
    assert_eq!(rec["state"], "completed");
    assert_eq!(rec["error"], Value::Null);
    assert_eq!(rec["payload"], json!({"book":"moby-dick","n":3}));
    assert_eq!(t.point_names("a").last().unwrap(), "completed");
}

#[test]
fn json_object_without_point_is_the_new_payload() {
    let t = TestRoot::new();
    t.tasker(
        "org.example",
        "t",
        "#!/bin/sh\ncat >/dev/null\necho '{\"stamp\":\"ok\",\"v\":[1,2]}'\n",
    );
    let rec = run_one(&t, "a", r#""payload":{"book":"moby-dick"}"#);
    assert_eq!(rec["state"], "completed");
    // The reply replaces the payload: the old key is gone.
    assert_eq!(rec["payload"], json!({"stamp":"ok","v":[1,2]}));
}

#[test]
fn completed_point_reply_carries_the_payload() {
    let t = TestRoot::new();
    t.tasker(
        "org.example",
        "t",
        "#!/bin/sh\necho '{\"point\":\"completed\",\"payload\":{\"done\":true}}'\n",
    );
    let rec = run_one(&t, "a", r#""payload":{"book":"x"}"#);
    assert_eq!(rec["state"], "completed");
    assert_eq!(rec["payload"], json!({"done":true}));
}

#[test]
fn failed_point_reply_fails_user_with_the_reason() {
    let t = TestRoot::new();
    t.tasker(
        "org.example",
        "t",
        "#!/bin/sh\necho '{\"point\":\"failed\",\"reason\":\"out of ink\"}'\n",
    );
    let rec = run_one(&t, "a", r#""payload":{"book":"x"}"#);
    let reason = assert_failed(&rec, "user");
    assert_eq!(reason, "out of ink");
    // user errors are never retried.
    assert_eq!(rec["attempts"], 1);
    assert!(!t.point_names("a").contains(&"retried".to_string()));
    assert!(t.list("var/spool/done").is_empty());
}

#[test]
fn refused_goes_back_to_the_taskmaster_which_picks_another_taskee() {
    let t = TestRoot::new();
    // The second offer only goes to `second` when the refusal is visible
    // with its taskee and reason.
    t.taskmaster(
        "org",
        r#"
        if task.refusals.len() == 0 { "first" }
        else if task.refusals[0].taskee == "first" && task.refusals[0].reason == "too busy" { "second" }
        else { reject("refusals not visible: " + task.refusals) }
        "#,
    );
    t.tasker(
        "org",
        "first",
        "#!/bin/sh\necho '{\"point\":\"refused\",\"reason\":\"too busy\"}'\n",
    );
    t.tasker("org", "second", "#!/bin/sh\necho '{\"by\":\"second\"}'\n");
    let rec = run_one(&t, "a", r#""payload":{"q":1}"#);
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["taskee"], "second");
    assert_eq!(rec["offers"], 2);
    assert_eq!(rec["payload"], json!({"by":"second"}));
    let points = t.points("a");
    let refused: Vec<&Value> = points.iter().filter(|p| p["point"] == "refused").collect();
    assert_eq!(refused.len(), 1, "{points:#?}");
    assert_eq!(refused[0]["taskee"], "first");
    assert_eq!(refused[0]["reason"], "too busy");
    let offered: Vec<(&Value, &Value)> = points
        .iter()
        .filter(|p| p["point"] == "offered")
        .map(|p| (&p["taskee"], &p["offer"]))
        .collect();
    assert_eq!(
        offered,
        [(&json!("first"), &json!(1)), (&json!("second"), &json!(2))]
    );
}

#[test]
fn uncompleted_is_queued_again_with_the_replys_payload() {
    let t = TestRoot::new();
    // First run: no `n` in the payload → uncompleted with {"n":1}; second
    // run sees n=1 and completes (empty stdout keeps that payload).
    t.tasker(
        "org.example",
        "t",
        r#"#!/bin/sh
input=$(cat)
echo "$input" >> "$SPOOLFLOW_ROOT/seen"
case "$input" in
  *'"n":1'*) exit 0 ;;
  *) echo '{"point":"uncompleted","payload":{"n":1}}' ;;
esac
"#,
    );
    let rec = run_one(&t, "a", r#""payload":{"start":true}"#);
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"n":1}));
    assert_eq!(out(&t, "seen"), "{\"start\":true}\n{\"n\":1}\n");
    // An uncompleted reply is not an attempt that failed.
    assert_eq!(rec["attempts"], 1);
    assert_eq!(rec["offers"], 2);
    let names = t.point_names("a");
    assert_eq!(
        names.iter().filter(|n| *n == "uncompleted").count(),
        1,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| *n == "started").count(),
        2,
        "{names:?}"
    );
    assert_eq!(names.last().unwrap(), "completed");
}

#[test]
fn garbage_stdout_fails_user_and_names_the_problem() {
    let t = TestRoot::new();
    t.tasker("org.example", "t", "#!/bin/sh\necho hello\n");
    let rec = run_one(&t, "a", "");
    let reason = assert_failed(&rec, "user");
    assert!(reason.contains("not JSON"), "{reason}");
    assert!(reason.contains("hello"), "{reason}");
}

#[test]
fn json_array_reply_fails_user() {
    let t = TestRoot::new();
    t.tasker("org.example", "t", "#!/bin/sh\necho '[1,2,3]'\n");
    let rec = run_one(&t, "a", r#""payload":{"k":1}"#);
    let reason = assert_failed(&rec, "user");
    assert!(reason.contains("not an object"), "{reason}");
    // The payload of a failed task is the one it had.
    assert_eq!(rec["payload"], json!({"k":1}));
}

// ------------------------------------------------------------------ exits

#[test]
fn nonzero_exit_fails_user_with_status_and_last_stderr_line() {
    let t = TestRoot::new();
    t.tasker(
        "org.example",
        "t",
        "#!/bin/sh\necho 'first complaint' >&2\necho 'disk on fire' >&2\necho '{\"ignored\":1}'\nexit 3\n",
    );
    let rec = run_one(&t, "a", r#""payload":{"k":1}"#);
    let reason = assert_failed(&rec, "user");
    assert!(reason.contains("exit status 3"), "{reason}");
    assert!(reason.contains("disk on fire"), "{reason}");
    assert_eq!(rec["attempts"], 1);
    // stdout of a failing tasker is not a reply.
    assert_eq!(rec["payload"], json!({"k":1}));
}

#[test]
fn exit_75_is_a_work_error() {
    let t = TestRoot::new();
    t.tasker(
        "org.example",
        "t",
        "#!/bin/sh\necho 'try later' >&2\nexit 75\n",
    );
    let rec = run_one(&t, "a", r#""retries":0"#);
    let reason = assert_failed(&rec, "work");
    assert!(reason.contains("75"), "{reason}");
    assert!(reason.contains("try later"), "{reason}");
    assert_eq!(rec["attempts"], 1);
}

#[test]
fn exit_75_is_retried_and_the_second_attempt_completes() {
    let t = TestRoot::new();
    t.tasker(
        "org.example",
        "t",
        r#"#!/bin/sh
echo "$SPOOLFLOW_ATTEMPT" >> "$SPOOLFLOW_ROOT/attempts"
if [ "$SPOOLFLOW_ATTEMPT" = 1 ]; then exit 75; fi
echo "{\"attempt\":$SPOOLFLOW_ATTEMPT}"
"#,
    );
    let rec = run_one(&t, "a", r#""retries":1"#);
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["attempts"], 2);
    assert_eq!(rec["payload"], json!({"attempt":2}));
    assert_eq!(out(&t, "attempts"), "1\n2\n");
    let points = t.points("a");
    let retried: Vec<&Value> = points.iter().filter(|p| p["point"] == "retried").collect();
    assert_eq!(retried.len(), 1, "{points:#?}");
    assert!(
        retried[0]["reason"].as_str().unwrap().contains("75"),
        "{:?}",
        retried[0]
    );
    assert_eq!(retried[0]["delay"], "1s");
    let started: Vec<&Value> = points
        .iter()
        .filter(|p| p["point"] == "started")
        .map(|p| &p["attempt"])
        .collect();
    assert_eq!(started, [&json!(1), &json!(2)]);
}

#[test]
fn killed_by_its_own_signal_is_a_work_error() {
    let t = TestRoot::new();
    t.tasker(
        "org.example",
        "t",
        "#!/bin/sh\nkill -9 $$\necho '{\"never\":1}'\n",
    );
    let rec = run_one(&t, "a", r#""retries":0"#);
    let reason = assert_failed(&rec, "work");
    assert!(reason.contains("SIGKILL"), "{reason}");
}

// ------------------------------------------------------------------ stdin

#[test]
fn stdin_is_exactly_the_payload_json() {
    let t = TestRoot::new();
    t.tasker(
        "org.example",
        "t",
        "#!/bin/sh\ncat > \"$SPOOLFLOW_ROOT/stdin\"\n",
    );
    // Keys already in sorted order, so the expected bytes do not depend on
    // serde_json's map ordering.
    let payload = json!({"a":1,"b":{"c":[true,null,"é"]},"z":"last"});
    run_one(
        &t,
        "a",
        &format!(r#""payload":{payload},"headers":{{"h":"not for the tasker"}}"#),
    );
    let stdin = out(&t, "stdin");
    assert_eq!(stdin, serde_json::to_string(&payload).unwrap());
    assert_eq!(serde_json::from_str::<Value>(&stdin).unwrap(), payload);
}

#[test]
fn in_task_gives_the_running_record_on_stdin() {
    let t = TestRoot::new();
    t.tasker_dir(
        "org.example",
        "t",
        r#"{"cmd":["./run.sh"],"in":"task"}"#,
        // The first attempt asks for a retry; the second keeps its stdin.
        &[(
            "run.sh",
            "#!/bin/sh\ncat > \"$SPOOLFLOW_ROOT/stdin\"\n[ \"$SPOOLFLOW_ATTEMPT\" = 1 ] && exit 75\nexit 0\n",
        )],
    );
    run_one(
        &t,
        "a",
        r#""payload":{"book":"x"},"headers":{"by":"alice"},"priority":5"#,
    );
    let rec: Value = serde_json::from_str(&out(&t, "stdin")).expect("stdin is JSON");
    assert_eq!(rec["state"], "running", "{rec:#}");
    // The attempt reading it counts.
    assert_eq!(rec["attempts"], 2, "{rec:#}");
    assert_eq!(rec["id"], "a");
    assert_eq!(rec["exid"], "a");
    assert_eq!(rec["nid"], "0");
    assert_eq!(rec["domain"], "org.example");
    assert_eq!(rec["taskee"], "t");
    assert_eq!(rec["tasker_path"], "tsk/org.example/t");
    assert_eq!(rec["priority"], 5);
    assert_eq!(rec["headers"], json!({"by":"alice"}));
    assert_eq!(rec["payload"], json!({"book":"x"}));
    assert_eq!(rec["ended_at"], Value::Null);
    assert_eq!(rec["error"], Value::Null);
}

#[test]
fn a_tasker_that_does_not_read_a_big_payload_completes() {
    let t = TestRoot::new();
    t.tasker("org.example", "t", "#!/bin/sh\nexit 0\n");
    let big = "x".repeat(1 << 20);
    let rec = run_one(&t, "a", &format!(r#""payload":{{"big":"{big}"}}"#));
    assert_eq!(rec["state"], "completed", "{}", rec["reason"]);
    assert_eq!(rec["payload"]["big"].as_str().unwrap().len(), 1 << 20);
}

#[test]
fn a_payload_larger_than_a_pipe_reaches_the_tasker_whole() {
    // The first 64 KiB are in the pipe before the spawn; the rest is
    // written while the tasker reads.
    let t = TestRoot::new();
    t.tasker("org.example", "t", "#!/bin/sh\ncat\n");
    let big = "0123456789".repeat(100_000);
    let rec = run_one(&t, "a", &format!(r#""payload":{{"big":"{big}"}}"#));
    assert_eq!(rec["state"], "completed", "{}", rec["reason"]);
    assert_eq!(rec["payload"]["big"].as_str(), Some(big.as_str()));
}

// ------------------------------------------------------------------ environment

/// The environment a tasker was exec'd with, read from
/// `/proc/<pid>/environ` of the shell itself: exactly what the engine
/// passed, with nothing the shell adds (`PWD`, `SHLVL`, …).
const DUMP_ENV: &str = "#!/bin/sh\ntr '\\0' '\\n' < /proc/$$/environ > \"$SPOOLFLOW_ROOT/env\"\n";

fn read_env(t: &TestRoot) -> std::collections::BTreeMap<String, String> {
    out(t, "env")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').expect("NAME=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn environment_is_clean_and_names_the_task() {
    std::env::set_var("SPOOLFLOW_TEST_SECRET", "x");
    let t = TestRoot::new();
    t.tasker("org.example", "t", DUMP_ENV);
    run_one(&t, "env-1", r#""payload":{}"#);
    let env = read_env(&t);
    assert!(!env.contains_key("SPOOLFLOW_TEST_SECRET"), "{env:#?}");
    assert_eq!(
        env.get("PATH").map(String::as_str),
        std::env::var("PATH").ok().as_deref()
    );
    assert_eq!(env["SPOOLFLOW_ROOT"], t.path().to_str().unwrap());
    assert_eq!(env["SPOOLFLOW_ID"], "env-1");
    assert_eq!(env["SPOOLFLOW_EXID"], "env-1");
    assert_eq!(env["SPOOLFLOW_NID"], "0");
    assert_eq!(env["SPOOLFLOW_DOMAIN"], "org.example");
    assert_eq!(env["SPOOLFLOW_TASKEE"], "t");
    assert_eq!(env["SPOOLFLOW_ATTEMPT"], "1");
    assert!(!env["SPOOLFLOW_POINTS"].is_empty());
    // Nothing else of the engine's environment.
    let allowed = [
        "PATH",
        "HOME",
        "LANG",
        "TZ",
        "SPOOLFLOW_ROOT",
        "SPOOLFLOW_ID",
        "SPOOLFLOW_EXID",
        "SPOOLFLOW_NID",
        "SPOOLFLOW_DOMAIN",
        "SPOOLFLOW_TASKEE",
        "SPOOLFLOW_ATTEMPT",
        "SPOOLFLOW_POINTS",
    ];
    let extra: Vec<&String> = env
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    assert!(extra.is_empty(), "unexpected variables {extra:?}");
}

#[test]
fn tasker_json_env_adds_variables() {
    let t = TestRoot::new();
    t.tasker_dir(
        "org.example",
        "t",
        r#"{"cmd":["./dump"],"env":{"GREETING":"hello world","LANG":"C.UTF-8"}}"#,
        &[("dump", DUMP_ENV)],
    );
    run_one(&t, "a", "");
    let env = read_env(&t);
    assert_eq!(env["GREETING"], "hello world");
    assert_eq!(env["LANG"], "C.UTF-8");
    assert_eq!(env.keys().filter(|k| *k == "LANG").count(), 1);
    assert_eq!(env["SPOOLFLOW_TASKEE"], "t");
}

// ------------------------------------------------------------------ cwd, fds, group

#[test]
fn an_executable_file_runs_in_its_own_directory() {
    let t = TestRoot::new();
    // The tasker lives in tsk/org; the task's domain is deeper.
    t.tasker("org", "t", "#!/bin/sh\npwd -P > \"$SPOOLFLOW_ROOT/cwd\"\n");
    run_one(&t, "a", "");
    let expected = t.join("tsk/org").canonicalize().unwrap();
    assert_eq!(out(&t, "cwd").trim_end(), expected.to_str().unwrap());
}

#[test]
fn a_tasker_directory_runs_in_that_directory() {
    let t = TestRoot::new();
    t.tasker_dir(
        "org.example",
        "t",
        r#"{"cmd":"pwd -P > \"$SPOOLFLOW_ROOT/cwd\"; ls > \"$SPOOLFLOW_ROOT/ls\""}"#,
        &[("helper.txt", "x")],
    );
    run_one(&t, "a", "");
    let expected = t.join("tsk/org.example/t").canonicalize().unwrap();
    assert_eq!(out(&t, "cwd").trim_end(), expected.to_str().unwrap());
    assert_eq!(out(&t, "ls"), "helper.txt\ntasker.json\n");
}

/// Lists the descriptors open in the tasker. `os.listdir` itself opens
/// one (the directory it reads), closed again when it returns; so the
/// list is filtered to the descriptors still valid afterwards (`fstat`
/// succeeds), which is exactly the set the process was given — no guess
/// about which number the listing used.
const LIST_FDS: &str = r#"#!/usr/bin/env python3
import json, os
listed = sorted(int(f) for f in os.listdir('/proc/self/fd'))
still = []
for fd in listed:
    try:
        os.fstat(fd)
    except OSError:
        continue
    try:
        target = os.readlink('/proc/self/fd/%d' % fd)
    except OSError:
        target = '?'
    still.append([fd, target])
with open(os.path.join(os.environ['SPOOLFLOW_ROOT'], 'fds'), 'w') as f:
    json.dump({"fds": still, "pgid": os.getpgrp(), "pid": os.getpid()}, f)
"#;

#[test]
fn only_descriptors_0_1_2_are_open_in_a_tasker() {
    let t = TestRoot::new();
    t.tasker("org.example", "t", LIST_FDS);
    let rec = run_one(&t, "a", "");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    let v: Value = serde_json::from_str(&out(&t, "fds")).unwrap();
    let fds: Vec<i64> = v["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_i64().unwrap())
        .collect();
    assert_eq!(
        fds,
        [0, 1, 2],
        "open descriptors (fd, target): {}",
        v["fds"]
    );
    // stdin and stdout are pipes from the engine.
    assert!(
        v["fds"][0][1].as_str().unwrap().starts_with("pipe:"),
        "{}",
        v["fds"]
    );
    assert!(
        v["fds"][1][1].as_str().unwrap().starts_with("pipe:"),
        "{}",
        v["fds"]
    );
}

/// The same, deterministically: the engine (the built binary) is started
/// by a shell that leaves descriptor 7 open without close-on-exec, as a
/// careless parent (a shell script, a supervisor) does. The engine must
/// not hand it on to its taskers.
#[test]
fn descriptors_the_engine_inherited_do_not_reach_a_tasker() {
    let t = TestRoot::new();
    t.tasker("org.example", "t", LIST_FDS);
    t.drop_task("a.json", r#"{"domain":"org.example","tasker":"t"}"#);
    let child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("exec 7</dev/null; exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_spoolflow"))
        .arg("--root")
        .arg(t.path())
        .args(["run", "--drain", "--workers", "1"])
        .env_remove("SPOOLFLOW_ROOT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let (code, stderr) = EngineProcess { child }.wait(DEADLINE);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(t.must_record("a")["state"], "completed");
    let v: Value = serde_json::from_str(&out(&t, "fds")).unwrap();
    let fds: Vec<i64> = v["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_i64().unwrap())
        .collect();
    assert!(
        !fds.contains(&7),
        "descriptor 7 of the engine's parent leaked: {}",
        v["fds"]
    );
    assert_eq!(
        fds,
        [0, 1, 2],
        "open descriptors (fd, target): {}",
        v["fds"]
    );
}

#[test]
fn a_tasker_leads_its_own_process_group() {
    let t = TestRoot::new();
    t.tasker("org.example", "t", LIST_FDS);
    run_one(&t, "a", "");
    let v: Value = serde_json::from_str(&out(&t, "fds")).unwrap();
    assert_eq!(v["pgid"], v["pid"], "{v}");
    // The test process (and the in-process engine) is in another group.
    let own = nix::unistd::getpgrp().as_raw() as i64;
    assert_ne!(v["pgid"].as_i64().unwrap(), own);
    // The `started` point names that process.
    let started = t
        .points("a")
        .into_iter()
        .find(|p| p["point"] == "started")
        .unwrap();
    assert_eq!(started["pid"], v["pid"]);
}

/// The engine holds its spawning thread on one CPU for the moment of a
/// spawn (the child starts there); the tasker runs on every CPU the
/// engine may use.
#[test]
fn a_tasker_may_run_on_every_cpu_the_engine_may() {
    let t = TestRoot::new();
    t.tasker(
        "org.example",
        "t",
        "#!/bin/sh\ngrep '^Cpus_allowed_list' /proc/self/status > \"$SPOOLFLOW_ROOT/cpus\"\n",
    );
    run_one(&t, "a", "");
    // The in-process engine's threads take this thread's set.
    let own = fs::read_to_string("/proc/thread-self/status").unwrap();
    let own = own
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list"))
        .unwrap();
    assert_eq!(out(&t, "cpus").trim_end(), own);
}

// ------------------------------------------------------------------ stderr

#[test]
fn stderr_lines_are_appended_to_the_err_file_prefixed_with_the_id() {
    let t = TestRoot::new();
    t.tasker(
        "org.example",
        "loud",
        "#!/bin/sh\necho one >&2\nprintf 'two\\nthree' >&2\n",
    );
    t.tasker("org.example", "quiet", "#!/bin/sh\necho '{\"ok\":1}'\n");
    t.drop_task("loud-1.json", r#"{"domain":"org.example","tasker":"loud"}"#);
    t.drop_task(
        "quiet-1.json",
        r#"{"domain":"org.example","tasker":"quiet"}"#,
    );
    t.run_drain(2);
    assert_eq!(t.must_record("loud-1")["state"], "completed");
    assert_eq!(t.must_record("quiet-1")["state"], "completed");
    assert_eq!(
        out(&t, "var/log/tsk/loud-1.err"),
        "loud-1: one\nloud-1: two\nloud-1: three\n"
    );
    assert!(!t.join("var/log/tsk/quiet-1.err").exists());
    let logs = t.list("var/log/tsk");
    assert!(
        !logs
            .iter()
            .any(|n| n.starts_with("quiet-1") && n.ends_with(".err")),
        "{logs:?}"
    );
}

// ------------------------------------------------------------------ tasker.json

#[test]
fn cmd_argv_runs_a_python_script_in_the_tasker_directory() {
    let t = TestRoot::new();
    t.tasker_dir(
        "org.example",
        "t",
        r#"{"cmd":["python3","stamp.py","--by","py"]}"#,
        &[(
            "stamp.py",
            "import json, sys\np = json.load(sys.stdin)\np['stamp'] = sys.argv[1:]\njson.dump(p, sys.stdout)\n",
        )],
    );
    let rec = run_one(&t, "a", r#""payload":{"book":"moby-dick"}"#);
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(
        rec["payload"],
        json!({"book":"moby-dick","stamp":["--by","py"]})
    );
    assert_eq!(rec["tasker_path"], "tsk/org.example/t");
}

#[test]
fn cmd_string_runs_with_sh_c() {
    let t = TestRoot::new();
    t.tasker_dir(
        "org.example",
        "t",
        r#"{"cmd":"read -r line; echo \"{\\\"shell\\\":\\\"$0\\\",\\\"in\\\":$line}\""}"#,
        &[],
    );
    let rec = run_one(&t, "a", r#""payload":{"k":2}"#);
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"shell":"/bin/sh","in":{"k":2}}));
}

#[test]
fn unknown_key_in_tasker_json_fails_config() {
    let t = TestRoot::new();
    t.tasker_dir(
        "org.example",
        "t",
        r#"{"cmd":["./run"],"colour":"blue"}"#,
        &[("run", "#!/bin/sh\necho ran > \"$SPOOLFLOW_ROOT/ran\"\n")],
    );
    let rec = run_one(&t, "a", "");
    let reason = assert_failed(&rec, "config");
    assert!(reason.contains("colour"), "{reason}");
    assert!(reason.contains("tasker.json"), "{reason}");
    assert!(!t.join("ran").exists());
    assert!(!t.point_names("a").contains(&"started".to_string()));
}

#[test]
fn a_non_executable_tasker_file_fails_config() {
    let t = TestRoot::new();
    let p = t.tasker(
        "org.example",
        "t",
        "#!/bin/sh\necho ran > \"$SPOOLFLOW_ROOT/ran\"\n",
    );
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    let rec = run_one(&t, "a", "");
    let reason = assert_failed(&rec, "config");
    assert!(reason.contains("not executable"), "{reason}");
    assert!(reason.contains("tsk/org.example/t"), "{reason}");
    assert!(!t.join("ran").exists());
}

#[test]
fn a_reply_larger_than_16_mib_fails_user() {
    let t = TestRoot::new();
    t.tasker(
        "org.example",
        "t",
        "#!/usr/bin/env python3\nimport sys\nsys.stdin.read()\nsys.stdout.write('{\"x\":\"' + 'a' * (17 << 20) + '\"}')\n",
    );
    let rec = run_one(&t, "a", r#""payload":{"small":true}"#);
    let reason = assert_failed(&rec, "user");
    assert!(reason.contains("larger"), "{reason}");
    assert_eq!(rec["payload"], json!({"small":true}));
}

// ------------------------------------------------------------------ informative points

#[test]
fn informative_points_are_copied_but_final_ones_are_not() {
    let t = TestRoot::new();
    t.tasker(
        "org.example",
        "t",
        r#"#!/bin/sh
echo '{"point":"started","progress":0.4}' >> "$SPOOLFLOW_POINTS"
echo '{"point":"suspended","reason":"waiting"}' >> "$SPOOLFLOW_POINTS"
echo '{"point":"completed","payload":{"from":"points"}}' >> "$SPOOLFLOW_POINTS"
echo '{"from":"reply"}'
"#,
    );
    let rec = run_one(&t, "info-1", "");
    assert_eq!(rec["payload"], json!({"from":"reply"}));
    let points = t.points("info-1");
    let names = names_of(&points);
    assert_eq!(
        names,
        [
            "created",
            "offered",
            "allocated",
            "started",
            "started",
            "suspended",
            "points-dropped",
            "completed"
        ],
        "{points:#?}"
    );
    // The final point written to the points file is not copied, and said
    // so by the engine (issue 15).
    assert_eq!(points[6]["source"], "engine");
    assert_eq!(points[6]["count"], 1);
    let progress = &points[4];
    assert_eq!(progress["progress"], 0.4);
    assert_eq!(progress["source"], "tasker");
    let waiting = &points[5];
    assert_eq!(waiting["reason"], "waiting");
    assert_eq!(waiting["source"], "tasker");
    for p in [progress, waiting] {
        assert_eq!(p["id"], "info-1");
        assert_eq!(p["exid"], "info-1");
        assert_eq!(p["nid"], "0");
        assert!(p["ts"].as_str().unwrap().ends_with('Z'));
    }
    // The engine's own points carry no source; the final one is the engine's.
    assert_eq!(points[3]["source"], Value::Null);
    assert_eq!(points[7]["source"], Value::Null);
    assert_eq!(points[7]["payload"], Value::Null);
    // The scratch points file is gone once the tasker ended.
    assert!(
        t.list("var/run/points").is_empty(),
        "{:?}",
        t.list("var/run/points")
    );
}
