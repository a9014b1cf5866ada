//! SPEC 1, 2, 10 and 11 through the built binary: `init`, finding the root,
//! `submit`, `run` (drain, the engine lock, workers, graceful stop),
//! `check` and `--help`.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use nix::sys::signal::Signal;

use crate::common::*;

/// The built binary, with no `--root` and no `$SPOOLFLOW_ROOT`.
fn bare() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spoolflow"));
    c.env_remove("SPOOLFLOW_ROOT");
    c.stdin(Stdio::null());
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command to completion; panics on a spawn error.
fn run(c: &mut Command) -> Output {
    c.output().expect("run spoolflow")
}

/// Asserts success and returns stdout.
fn ok(c: &mut Command) -> String {
    let o = run(c);
    assert!(
        o.status.success(),
        "{c:?} failed ({:?}): stdout {:?} stderr {:?}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

const LAYOUT: &[&str] = &[
    "tsk",
    "tsk/any",
    "var/spool/in",
    "var/spool/cancel",
    "var/spool/run",
    "var/spool/done",
    "var/spool/failed",
    "var/spool/rejected",
    "var/spool/history",
    "var/log/tsk",
    "var/run",
];

fn assert_layout(dir: &Path) {
    for rel in LAYOUT {
        assert!(
            dir.join(rel).is_dir(),
            "{rel} missing under {}",
            dir.display()
        );
    }
}

/// Files (not temporaries) in `<dir>/var/spool/in/`, sorted.
fn in_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir.join("var/spool/in"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A fresh temporary directory with the layout made by `spoolflow init`.
fn inited() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    ok(bare().arg("init").arg(tmp.path()));
    tmp
}

// ---- init -------------------------------------------------------------

#[test]
fn init_creates_the_layout_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new-root");
    assert!(!dir.exists());
    let out = ok(bare().arg("init").arg(&dir));
    assert!(out.contains("initialized"), "{out}");
    assert_layout(&dir);

    fs::write(dir.join("tsk/any/keep"), "mine").unwrap();
    fs::write(dir.join("var/spool/in/.pending.tmp"), "half").unwrap();
    ok(bare().arg("init").arg(&dir));
    assert_layout(&dir);
    assert_eq!(
        fs::read_to_string(dir.join("tsk/any/keep")).unwrap(),
        "mine"
    );
    assert_eq!(
        fs::read_to_string(dir.join("var/spool/in/.pending.tmp")).unwrap(),
        "half"
    );
}

#[test]
fn init_without_dir_uses_the_root_flag_env_or_cwd() {
    let by_flag = tempfile::tempdir().unwrap();
    ok(bare().arg("init").arg("--root").arg(by_flag.path()));
    assert_layout(by_flag.path());

    let by_env = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    ok(bare()
        .arg("init")
        .env("SPOOLFLOW_ROOT", by_env.path())
        .current_dir(elsewhere.path()));
    assert_layout(by_env.path());
    assert!(!elsewhere.path().join("var").exists());

    let by_cwd = tempfile::tempdir().unwrap();
    ok(bare().arg("init").current_dir(by_cwd.path()));
    assert_layout(by_cwd.path());
}

// ---- finding the root ---------------------------------------------------

#[test]
fn the_root_comes_from_flag_then_env_then_cwd() {
    let a = inited();
    let b = inited();
    let c = inited();
    let submit = |id: &str| {
        let mut cmd = bare();
        // --force: these roots serve no domain (their tsk/ is empty).
        cmd.args(["submit", "--force", "--domain", "org", "--id", id]);
        cmd
    };

    // --root before the command wins over $SPOOLFLOW_ROOT and the cwd.
    let mut cmd = bare();
    cmd.arg("--root")
        .arg(a.path())
        .args([
            "submit",
            "--force",
            "--domain",
            "org",
            "--id",
            "flag-before",
        ])
        .env("SPOOLFLOW_ROOT", b.path())
        .current_dir(c.path());
    assert_eq!(ok(&mut cmd).trim(), "flag-before");

    // --root after the command, too.
    assert_eq!(
        ok(submit("flag-after")
            .arg("--root")
            .arg(a.path())
            .env("SPOOLFLOW_ROOT", b.path())
            .current_dir(c.path()))
        .trim(),
        "flag-after"
    );

    // $SPOOLFLOW_ROOT wins over the cwd.
    assert_eq!(
        ok(submit("by-env")
            .env("SPOOLFLOW_ROOT", b.path())
            .current_dir(c.path()))
        .trim(),
        "by-env"
    );

    // The current directory last.
    assert_eq!(ok(submit("by-cwd").current_dir(c.path())).trim(), "by-cwd");

    // An empty $SPOOLFLOW_ROOT is as good as unset (as a shell's
    // `SPOOLFLOW_ROOT= spoolflow …` means), for `init` too.
    assert_eq!(
        ok(submit("empty-env")
            .env("SPOOLFLOW_ROOT", "")
            .current_dir(c.path()))
        .trim(),
        "empty-env"
    );
    let fresh = tempfile::tempdir().unwrap();
    ok(bare()
        .arg("init")
        .env("SPOOLFLOW_ROOT", "")
        .current_dir(fresh.path()));
    assert!(fresh.path().join("var/spool/in").is_dir());

    assert_eq!(in_files(a.path()), ["flag-after.json", "flag-before.json"]);
    assert_eq!(in_files(b.path()), ["by-env.json"]);
    assert_eq!(in_files(c.path()), ["by-cwd.json", "empty-env.json"]);
}

#[test]
fn submit_outside_a_root_fails_and_names_init() {
    let empty = tempfile::tempdir().unwrap();
    let o = run(bare()
        .args(["submit", "--domain", "org"])
        .current_dir(empty.path()));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("spoolflow init"), "{}", stderr(&o));
    assert!(!empty.path().join("var").exists());
}

// ---- submit -------------------------------------------------------------

#[test]
fn submit_prints_the_id_and_writes_the_task_file() {
    let t = TestRoot::new();
    t.tasker("org", "stamp", "#!/bin/sh\ncat\n");
    let out = ok(t.cmd().args([
        "submit",
        "--domain",
        "org.example",
        "--tasker",
        "stamp",
        "--priority",
        "-3",
        r#"{"book":"moby-dick"}"#,
    ]));
    let id = out.trim();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "{out:?}"
    );
    assert_eq!(t.list("var/spool/in"), [format!("{id}.json")]);
    let task: serde_json::Value =
        serde_json::from_slice(&fs::read(t.join(&format!("var/spool/in/{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(task["id"], id);
    assert_eq!(task["domain"], "org.example");
    assert_eq!(task["tasker"], "stamp");
    assert_eq!(task["priority"], -3);
    assert_eq!(task["payload"], serde_json::json!({"book":"moby-dick"}));

    // A second submit gets another id.
    let other = ok(t.cmd().args(["submit", "--domain", "org"]));
    assert_ne!(other.trim(), id);
    assert_eq!(t.list("var/spool/in").len(), 2);
}

#[test]
fn submit_uses_the_given_id_and_reads_stdin() {
    let t = TestRoot::new();
    t.tasker("org", "stamp", "#!/bin/sh\ncat\n");
    use std::io::Write;
    let mut child = t
        .cmd()
        .args(["submit", "--domain", "org", "--id", "order-1234", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"from":"stdin"}"#)
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "order-1234");
    let task: serde_json::Value =
        serde_json::from_slice(&fs::read(t.join("var/spool/in/order-1234.json")).unwrap()).unwrap();
    assert_eq!(task["id"], "order-1234");
    assert_eq!(task["payload"]["from"], "stdin");
}

#[test]
fn submit_rejects_bad_input_with_exit_2() {
    let t = TestRoot::new();
    let cases: &[(&[&str], &str)] = &[
        (&["--domain", "Bad"], "Bad"),
        (&["--domain", "any"], "any"),
        (&["--domain", "org", "--id", "-x"], "-x"),
        (&["--domain", "org", "--tasker", "a/b"], "a/b"),
        (&["--domain", "org", "[1,2]"], "object"),
        (&["--domain", "org", "\"text\""], "object"),
        (&["--domain", "org", "{\"a\":"], "JSON"),
    ];
    for (args, needle) in cases {
        let o = run(t.cmd().arg("submit").args(*args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "{args:?}: stderr {:?} does not mention {needle:?}",
            stderr(&o)
        );
        assert!(stdout(&o).trim().is_empty(), "{args:?}: {}", stdout(&o));
    }
    assert!(
        t.list("var/spool/in").is_empty(),
        "{:?}",
        t.list("var/spool/in")
    );
}

#[test]
fn submit_refuses_a_duplicate_id() {
    let t = TestRoot::new();
    t.tasker("org", "stamp", "#!/bin/sh\ncat\n");
    ok(t.cmd()
        .args(["submit", "--domain", "org", "--id", "twice", r#"{"n":1}"#]));
    let o = run(t
        .cmd()
        .args(["submit", "--domain", "org", "--id", "twice", r#"{"n":2}"#]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("duplicate"), "{}", stderr(&o));
    // The first file is untouched.
    let task: serde_json::Value =
        serde_json::from_slice(&fs::read(t.join("var/spool/in/twice.json")).unwrap()).unwrap();
    assert_eq!(task["payload"]["n"], 1);
}

/// A payload with a key twice is refused, as the engine refuses it in a
/// task file, rather than one of the two being dropped silently.
#[test]
fn submit_refuses_a_payload_with_a_key_twice() {
    let t = TestRoot::new();
    t.tasker("org", "stamp", "#!/bin/sh\ncat\n");
    let o = run(t
        .cmd()
        .args(["submit", "--domain", "org", r#"{"qty":1,"qty":2}"#]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("duplicate key \"qty\""),
        "{}",
        stderr(&o)
    );
    assert!(t.list("var/spool/in").is_empty());
    let o = run(t.cmd().args(["submit", "--domain", "org", "[1]"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("must be a JSON object"),
        "{}",
        stderr(&o)
    );
}

/// An id waiting in a domain's directory of `in/` is taken too.
#[test]
fn submit_refuses_an_id_waiting_in_a_domain_directory() {
    let t = TestRoot::new();
    t.tasker("org", "stamp", "#!/bin/sh\ncat\n");
    t.drop_task_in("org.x", "held.json", r#"{"payload":{"n":1}}"#);
    let o = run(t
        .cmd()
        .args(["submit", "--domain", "org", "--id", "held", r#"{"n":2}"#]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("duplicate"), "{}", stderr(&o));
    assert_eq!(t.list("var/spool/in"), ["org.x"]);
}

// ---- run ----------------------------------------------------------------

#[test]
fn run_drain_completes_a_submitted_task_and_exits_0() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "stamp",
        "#!/bin/sh\nprintf '{\"stamped\":\"%s\"}' \"$SPOOLFLOW_ID\"\n",
    );
    let id = ok(t
        .cmd()
        .args(["submit", "--domain", "org.example", "--tasker", "stamp"]))
    .trim()
    .to_string();

    let (code, err) = t.spawn_engine(&["--drain"]).wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");
    let rec = t.must_record(&id);
    assert_eq!(rec["state"], "completed");
    assert_eq!(rec["payload"]["stamped"], id.as_str());
    assert!(t.list("var/spool/in").is_empty());
    assert!(t.list("var/spool/run").is_empty());
    assert!(t.join("var/log/engine.log").is_file());

    // The id is now taken by a record in done/.
    let o = run(t.cmd().args(["submit", "--domain", "org", "--id", &id]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("duplicate"), "{}", stderr(&o));
}

#[test]
fn run_outside_a_root_fails() {
    let empty = tempfile::tempdir().unwrap();
    let o = run(bare().args(["run", "--drain"]).current_dir(empty.path()));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("spoolflow init"), "{}", stderr(&o));
}

#[test]
fn run_rejects_zero_workers() {
    let t = TestRoot::new();
    let o = run(t.cmd().args(["run", "--drain", "--workers", "0"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--workers"), "{}", stderr(&o));
}

#[test]
fn one_engine_per_root_and_sigterm_stops_it() {
    let t = TestRoot::new();
    let first = t.spawn_engine(&[]);
    let pid = first.pid().to_string();
    let lock = t.join("var/run/engine.lock");
    wait_for("the engine lock to hold the pid", DEADLINE, || {
        fs::read_to_string(&lock).is_ok_and(|s| s.lines().next() == Some(pid.as_str()))
    });

    // --drain: were the lock not held, this would drain and exit 0.
    let second = t.spawn_engine(&["--drain"]);
    let (code, err) = second.wait(DEADLINE);
    assert!(
        code.is_some_and(|c| c != 0),
        "second engine exited {code:?}: {err}"
    );
    assert!(
        err.contains(&pid),
        "stderr of the second engine does not name pid {pid}: {err}"
    );
    // The loser did not take the lock over.
    assert_eq!(
        fs::read_to_string(&lock).unwrap().lines().next(),
        Some(pid.as_str())
    );

    first.signal(Signal::SIGTERM);
    let (code, err) = first.wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");

    // Once the first is gone, a new engine may take the root.
    let (code, err) = t.spawn_engine(&["--drain"]).wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");
}

/// A tasker that marks itself running in `$SPOOLFLOW_ROOT/marks`, polls
/// (at most `polls` × 50 ms) until it sees 2 taskers running, and records
/// `saw-2-<id>` if it did. When it saw 2, it waits (bounded) until every
/// running tasker has seen 2 before leaving, so the others see it too.
fn overlap_tasker(polls: u32) -> String {
    format!(
        r#"#!/bin/sh
d="$SPOOLFLOW_ROOT/marks"
id="$SPOOLFLOW_ID"
: > "$d/running-$id"
count() {{ set -- "$d"/$1*; if [ -e "$1" ]; then echo $#; else echo 0; fi; }}
i=0
while [ $i -lt {polls} ]; do
  if [ "$(count running-)" -ge 2 ]; then
    : > "$d/saw-2-$id"
    j=0
    while [ $j -lt 200 ] && [ "$(count saw-2-)" -lt 2 ]; do sleep 0.05; j=$((j+1)); done
    break
  fi
  sleep 0.05
  i=$((i+1))
done
rm -f "$d/running-$id"
"#
    )
}

fn saw_two(t: &TestRoot) -> Vec<String> {
    t.list("marks")
        .into_iter()
        .filter(|n| n.starts_with("saw-2-"))
        .collect()
}

#[test]
fn two_workers_run_two_taskers_at_once() {
    let t = TestRoot::new();
    fs::create_dir(t.join("marks")).unwrap();
    t.tasker("org", "slow", &overlap_tasker(200));
    for id in ["p", "q"] {
        ok(t.cmd()
            .args(["submit", "--domain", "org", "--tasker", "slow", "--id", id]));
    }
    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "2"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");
    for id in ["p", "q"] {
        assert_eq!(t.must_record(id)["state"], "completed");
    }
    assert_eq!(saw_two(&t), ["saw-2-p", "saw-2-q"]);
}

#[test]
fn one_worker_never_runs_two_taskers_at_once() {
    let t = TestRoot::new();
    fs::create_dir(t.join("marks")).unwrap();
    t.tasker("org", "slow", &overlap_tasker(20));
    for id in ["p", "q"] {
        ok(t.cmd()
            .args(["submit", "--domain", "org", "--tasker", "slow", "--id", id]));
    }
    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "1"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "stderr: {err}");
    for id in ["p", "q"] {
        assert_eq!(t.must_record(id)["state"], "completed");
    }
    assert_eq!(saw_two(&t), Vec::<String>::new());
    // Both ran and cleaned up.
    assert_eq!(t.list("marks"), Vec::<String>::new());
}

// ---- check --------------------------------------------------------------

#[test]
fn check_accepts_a_good_tsk() {
    let t = TestRoot::new();
    t.taskmaster(
        "org",
        "if payload.kind == \"big\" { \"big\" } else { \"small\" }\n",
    );
    t.taskmaster("any", "_taskee_ = task.tasker;\n");
    t.tasker("org", "small", "#!/bin/sh\ncat\n");
    t.tasker("any", "big", "#!/bin/sh\ncat\n");
    t.tasker_dir(
        "org.example",
        "cfg",
        r#"{"cmd":["sh","run.sh"],"timeout":"30s","retries":2,"env":{"A":"b"}}"#,
        &[("run.sh", "cat\n")],
    );
    let o = run(t.cmd().arg("check"));
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout {} stderr {}",
        stdout(&o),
        stderr(&o)
    );
    let out = stdout(&o);
    assert!(out.starts_with("ok"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("2 taskmasters"), "{out}");
}

#[test]
fn check_reports_one_line_per_problem_and_exits_2() {
    let t = TestRoot::new();
    // Good entries, which must not be reported.
    t.tasker("org", "fine", "#!/bin/sh\ncat\n");
    t.taskmaster("any", "\"fine\"\n");
    // A taskmaster with a syntax error on line 3.
    t.taskmaster("org", "let a = 1;\nlet b = 2;\nlet c = ;\n");
    // A tasker.json with an unknown key.
    t.tasker_dir(
        "org",
        "cfg",
        r#"{"cmd":"cat","timout":"30s"}"#,
        &[("x.sh", "cat\n")],
    );
    // A tasker file that is not executable.
    fs::write(t.join("tsk/org/noexec"), "#!/bin/sh\ncat\n").unwrap();

    let o = run(t.cmd().arg("check"));
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout {out} stderr {}",
        stderr(&o)
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");

    let tm = lines
        .iter()
        .find(|l| l.starts_with("tsk/org/taskmaster.rhai: "))
        .unwrap_or_else(|| panic!("no taskmaster line in {out}"));
    assert!(tm.contains("line 3"), "no position in {tm:?}");

    let cfg = lines
        .iter()
        .find(|l| l.starts_with("tsk/org/cfg/tasker.json: "))
        .unwrap_or_else(|| panic!("no tasker.json line in {out}"));
    assert!(cfg.contains("timout"), "{cfg:?}");

    let noexec = lines
        .iter()
        .find(|l| l.starts_with("tsk/org/noexec: "))
        .unwrap_or_else(|| panic!("no noexec line in {out}"));
    assert!(noexec.contains("not executable"), "{noexec:?}");

    assert!(!out.contains("fine"), "{out}");
    assert!(!out.starts_with("ok"), "{out}");
    assert!(stderr(&o).contains("3 problems"), "{}", stderr(&o));
}

#[test]
fn check_reports_a_bad_domain_directory() {
    let t = TestRoot::new();
    fs::create_dir_all(t.join("tsk/Org.Bad")).unwrap();
    let o = run(t.cmd().arg("check"));
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stdout(&o).starts_with("tsk/Org.Bad: "), "{}", stdout(&o));
}

// ---- help ---------------------------------------------------------------

#[test]
fn help_exits_0_and_names_commands_and_flags() {
    let top = ok(bare().arg("--help"));
    for word in ["init", "run", "submit", "check", "--root"] {
        assert!(top.contains(word), "--help lacks {word}: {top}");
    }
    let run_help = ok(bare().args(["run", "--help"]));
    for word in ["--workers", "--drain", "--grace", "--root"] {
        assert!(
            run_help.contains(word),
            "run --help lacks {word}: {run_help}"
        );
    }
    let submit_help = ok(bare().args(["submit", "--help"]));
    for word in ["--domain", "--tasker", "--id", "--priority"] {
        assert!(
            submit_help.contains(word),
            "submit --help lacks {word}: {submit_help}"
        );
    }
}

#[test]
fn an_unknown_command_or_flag_exits_2() {
    let t = TestRoot::new();
    let o = run(t.cmd().arg("frobnicate"));
    assert_eq!(o.status.code(), Some(2));
    let o = run(t.cmd().args(["run", "--wrokers", "2"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--wrokers"), "{}", stderr(&o));
}

/// SPEC 11: a root that does not exist is bad usage (exit 2) for the
/// commands that only read, as for those that write, never an empty
/// answer that looks like an idle root.
#[test]
fn reading_commands_refuse_a_root_that_does_not_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere");
    for args in [
        &["status"][..],
        &["list"],
        &["events"],
        &["gc", "--older-than", "1d"],
        &["show", "x"],
        &["logs", "x"],
        &["wait", "x"],
    ] {
        let o = run(bare().arg("--root").arg(&missing).args(args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(
            stderr(&o).contains("is not a spoolflow root"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

/// A reading command whose reader goes away (`show x | head -1`) ends
/// quietly, killed by SIGPIPE as `cat` would be, instead of panicking on
/// the failed write. Its output (200 KB) is more than a pipe holds, so it
/// meets the closed pipe whenever the reader closes it.
#[test]
fn a_closed_pipe_ends_a_reading_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let t = TestRoot::new();
    t.tasker("org", "echo", "#!/bin/sh\ncat\n");
    let big = "x".repeat(200_000);
    t.drop_task(
        "big.json",
        &format!(r#"{{"domain":"org","tasker":"echo","payload":{{"big":"{big}"}}}}"#),
    );
    t.run_drain(1);
    assert_eq!(t.must_record("big")["state"], "completed");
    let mut show = t
        .cmd()
        .args(["show", "big", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(show.stdout.take());
    let out = show.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(Signal::SIGPIPE as i32), "{err}");
}
