//! Issue 9, item 16: the friction a new user met, each fixed, through the
//! built binary — the root found upward, `init --here`, `submit`'s "did you
//! mean" and `--force`, unknown keys' "did you mean", `check` going deeper,
//! messages without Rust debug formatting and with the right plurals,
//! start-up in submission order, and `examples/demo.sh` showing progress.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use crate::common::*;

/// The built binary in `dir`, with neither `--root` nor `$SPOOLFLOW_ROOT`.
fn bare_in(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spoolflow"));
    c.env_remove("SPOOLFLOW_ROOT")
        .current_dir(dir)
        .stdin(Stdio::null());
    c
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run(c: &mut Command) -> Output {
    c.output().expect("run spoolflow")
}

// ---- the root is found upward ------------------------------------------

#[test]
fn the_root_is_found_upward_from_a_subdirectory() {
    let t = TestRoot::new();
    t.tasker("org.example", "stamp", "#!/bin/sh\ncat\n");
    let deep = t.join("work/notes/deeper");
    fs::create_dir_all(&deep).unwrap();

    let o = run(bare_in(&deep).args(["submit", "--domain", "org.example", "--id", "up"]));
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o).trim(), "up");
    assert_eq!(t.list("var/spool/in"), ["up.json"]);
    assert!(!deep.join("var").exists());

    // Inside a root, nothing advises `init`: `check` checks the root above.
    let o = run(bare_in(&deep).arg("check"));
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert!(out(&o).starts_with("ok: "), "{}", out(&o));
    assert!(
        !format!("{}{}", out(&o), err(&o)).contains("init"),
        "{}",
        err(&o)
    );

    // A --root inside a root names the root rather than advising `init`.
    let o =
        run(bare_in(&deep)
            .arg("--root")
            .arg(&deep)
            .args(["submit", "--domain", "org.example"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("lies inside the root"), "{}", err(&o));
    assert!(!err(&o).contains("init"), "{}", err(&o));

    // Outside any root the message says where it looked.
    let nowhere = tempfile::tempdir().unwrap();
    let o = run(bare_in(nowhere.path()).args(["submit", "--domain", "org"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("no spoolflow root in") && err(&o).contains("or any directory above it"),
        "{}",
        err(&o)
    );
}

#[test]
fn init_refuses_a_non_empty_directory_that_is_no_root_unless_here() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
    let o = run(bare_in(tmp.path()).arg("init"));
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(
        err(&o).contains("--here") && err(&o).contains("spoolflow init DIR"),
        "{}",
        err(&o)
    );
    assert!(!tmp.path().join("tsk").exists() && !tmp.path().join("var").exists());

    let o = run(bare_in(tmp.path()).args(["init", "--here"]));
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(tmp.path().join("tsk/any").is_dir() && tmp.path().join("var/spool/in").is_dir());
    assert_eq!(
        fs::read_to_string(tmp.path().join("notes.txt")).unwrap(),
        "mine"
    );

    // Now a root: `init` again (from inside it, too) is accepted as it is.
    let o = run(bare_in(&tmp.path().join("tsk/any")).arg("init"));
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let shown = tmp.path().canonicalize().unwrap().display().to_string();
    assert!(out(&o).contains(&shown), "{}", out(&o));
}

// ---- submit: "did you mean", --force, unknown keys -------------------------

#[test]
fn submit_to_a_domain_nothing_serves_names_the_closest_and_force_submits() {
    let t = TestRoot::new();
    t.tasker("org.example", "stamp", "#!/bin/sh\ncat\n");
    t.taskmaster("com.shop", "\"stamp\"\n");

    let o = run(t.cmd().args(["submit", "--domain", "org.exmaple"]));
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    let e = err(&o);
    assert!(
        e.contains("nothing serves domain org.exmaple")
            && e.contains("did you mean \"org.example\"?"),
        "{e}"
    );
    assert!(e.contains("--force"), "{e}");
    assert!(out(&o).is_empty() && t.list("var/spool/in").is_empty());

    // A subdomain's typo gets the subdomain, served up its branch.
    let o = run(t.cmd().args(["submit", "--domain", "org.exmaple.sales"]));
    assert!(
        err(&o).contains("did you mean \"org.example.sales\"?"),
        "{}",
        err(&o)
    );

    // Served up the branch, or by a taskmaster: accepted.
    for domain in ["org.example.sales", "com.shop"] {
        let o = run(t.cmd().args(["submit", "--domain", domain]));
        assert_eq!(o.status.code(), Some(0), "{domain}: {}", err(&o));
    }

    // --force submits anyway.
    let o = run(t.cmd().args([
        "submit",
        "--force",
        "--domain",
        "org.exmaple",
        "--id",
        "forced",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(t.list("var/spool/in").contains(&"forced.json".to_string()));
}

#[test]
fn unknown_keys_get_a_did_you_mean_in_the_rejection_and_in_submit() {
    let t = TestRoot::new();
    t.tasker("org", "echo", "#!/bin/sh\ncat\n");
    t.drop_task(
        "typo.json",
        r#"{"domain":"org","tasker":"echo","prioity":3}"#,
    );
    t.tasker_dir("org", "cfg", r#"{"cmd":"cat","timout":"30s"}"#, &[]);
    t.run_drain(1);
    assert_eq!(
        t.reason("typo.json"),
        r#"unknown key "prioity" (did you mean "priority"?)"#
    );
    // The same in a tasker.json, through `check`.
    let o = run(t.cmd().arg("check"));
    assert!(
        out(&o).contains(r#"unknown key "timout" (did you mean "timeout"?)"#),
        "{}",
        out(&o)
    );
    // And a mistyped flag of `submit`.
    let o = run(t
        .cmd()
        .args(["submit", "--domain", "org", "--prioity", "3"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("--priority"), "{}", err(&o));
}

// ---- check goes deeper ------------------------------------------------------

/// The line of `check`'s output about `path` that contains `needle`.
fn finding<'a>(output: &'a str, path: &str, needle: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.starts_with(&format!("{path}: ")) && l.contains(needle))
        .unwrap_or_else(|| panic!("no finding on {path} with {needle:?} in:\n{output}"))
}

#[test]
fn check_finds_unknown_literal_taskees_and_undefined_variables() {
    let t = TestRoot::new();
    t.tasker("org", "stamp", "#!/bin/sh\ncat\n");
    t.tasker("org.example", "report", "#!/bin/sh\ncat\n");
    t.taskmaster(
        "org",
        "if payload.kind == \"a\" {\n  _taskee_ = \"stmap\";\n} else if payload.kind == \"b\" {\n  _taskee_ = \"report\";\n}\n",
    );
    t.taskmaster(
        "org.other",
        "let kind = payload.kind;\nif kinds == \"x\" { \"stamp\" } else { \"stamp\" }\n",
    );
    let o = run(t.cmd().arg("check"));
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    let text = out(&o);
    let line = finding(&text, "tsk/org/taskmaster.rhai", "\"stmap\"");
    assert!(line.contains("line 2: "), "{line}");
    assert!(line.contains("resolves to no tasker"), "{line}");
    assert!(line.contains("fix: did you mean \"stamp\"?"), "{line}");
    // "report" is a tasker of org.example, below org: no finding.
    assert!(!text.contains("\"report\""), "{text}");
    let line = finding(&text, "tsk/org.other/taskmaster.rhai", "undefined variable");
    assert!(
        line.contains("line 2: undefined variable \"kinds\""),
        "{line}"
    );
    assert!(line.contains("fix: "), "{line}");
    // The engine's own variables are defined.
    assert!(
        !text.contains("\"payload\"") && !text.contains("\"_taskee_\""),
        "{text}"
    );
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(err(&o).contains("2 problems in tsk/"), "{}", err(&o));
}

#[test]
fn check_finds_missing_programs_scripts_and_crlf_shebangs() {
    let t = TestRoot::new();
    t.tasker_dir(
        "org",
        "counter",
        "{\n  \"in\": \"payload\",\n  \"cmd\": [\"no-such-program-xyz\", \"count.py\"]\n}\n",
        &[("cuont.py", "print(1)\n")],
    );
    t.tasker_dir(
        "org",
        "good",
        r#"{"cmd":["sh","./run.sh","--flag","x.json"]}"#,
        &[("run.sh", "cat\n")],
    );
    t.tasker("org", "dos", "#!/bin/sh\r\ncat\r\n");
    let o = run(t.cmd().arg("check"));
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    let text = out(&o);
    let cfg = "tsk/org/counter/tasker.json";
    let line = finding(&text, cfg, "cmd[0]");
    assert!(
        line.contains("line 3: cmd[0] \"no-such-program-xyz\" is not found on the tasker's PATH"),
        "{line}"
    );
    assert!(line.contains("fix: "), "{line}");
    let line = finding(&text, cfg, "cmd[1]");
    assert!(
        line.contains("line 3: cmd[1] \"count.py\" does not exist"),
        "{line}"
    );
    assert!(line.contains("did you mean \"cuont.py\"?"), "{line}");
    let line = finding(&text, "tsk/org/dos", "CRLF");
    assert!(line.starts_with("tsk/org/dos: line 1: "), "{line}");
    assert!(line.contains("fix: convert the file to LF"), "{line}");
    assert!(!text.contains("tsk/org/good"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
}

// ---- messages: no debug formatting, right plurals ----------------------------

#[test]
fn messages_show_names_not_rust_debug_and_count_right() {
    let t = TestRoot::new();
    t.tasker("org", "stamp", "#!/bin/sh\ncat\n");
    t.drop_task("nosuch.json", r#"{"domain":"org","tasker":"nosuch"}"#);
    t.run_drain(1);
    let rec = t.must_record("nosuch");
    let message = rec["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("no tasker \"nosuch\""), "{message}");
    assert!(!message.contains("Taskee("), "{message}");

    // A name that Rust's debug formatting would escape is shown as it is.
    let o = run(t.cmd().args(["submit", "--domain", "café"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("invalid domain \"café\""), "{}", err(&o));

    // One problem is "1 problem"; one of each is counted in the singular.
    fs::write(t.join("tsk/org/noexec"), "#!/bin/sh\n").unwrap();
    let o = run(t.cmd().arg("check"));
    assert!(err(&o).contains("1 problem in tsk/"), "{}", err(&o));
    fs::remove_file(t.join("tsk/org/noexec")).unwrap();
    t.taskmaster("org", "\"stamp\"\n");
    let o = run(t.cmd().arg("check"));
    assert_eq!(
        out(&o).trim(),
        "ok: 1 taskmaster, 1 tasker, 0 stored flows",
        "{}",
        err(&o)
    );
}

// ---- start-up takes in/ in submission order -----------------------------------

#[test]
fn at_start_up_waiting_files_are_taken_in_submission_order() {
    let t = TestRoot::new();
    fs::create_dir(t.join("marks")).unwrap();
    t.tasker(
        "org",
        "note",
        "#!/bin/sh\necho \"$SPOOLFLOW_ID\" >> \"$SPOOLFLOW_ROOT/marks/order\"\n",
    );
    // Written in this order (older first), named in another.
    let t0 = SystemTime::now() - Duration::from_secs(600);
    let written = ["c-first", "a-second", "d-third", "b-fourth"];
    for (i, id) in written.iter().enumerate() {
        let p = t.drop_task(&format!("{id}.json"), r#"{"domain":"org","tasker":"note"}"#);
        let f = fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(t0 + Duration::from_secs(i as u64)).unwrap();
    }
    let (code, e) = t
        .spawn_engine(&["--drain", "--workers", "1"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "{e}");
    let order = fs::read_to_string(t.join("marks/order")).unwrap();
    assert_eq!(order.lines().collect::<Vec<_>>(), written);
    // The engine's start line counts right too.
    assert!(e.contains(", 1 worker)"), "{e}");
}

// ---- examples/demo.sh shows progress ----------------------------------------------

#[test]
fn the_demo_shows_progress_while_it_builds() {
    // A `cargo` that records its arguments and fails: the demo stops
    // there (set -e), having shown what it does.
    let fake = tempfile::tempdir().unwrap();
    let args = fake.path().join("args");
    write_executable(
        &fake.path().join("cargo"),
        &format!(
            "#!/bin/sh\necho \"$@\" > '{}'\necho 'Compiling (fake)' >&2\nexit 3\n",
            args.display()
        ),
    );
    let path = format!(
        "{}:{}",
        fake.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.sh");
    let o = Command::new("bash")
        .arg(&demo)
        .env("PATH", path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("building"), "stdout: {}", out(&o));
    let given = fs::read_to_string(&args).unwrap();
    assert!(given.starts_with("build"), "{given}");
    assert!(
        !given.contains("--quiet") && !given.contains("-q"),
        "{given}"
    );
    // cargo's own progress goes through.
    assert!(err(&o).contains("Compiling (fake)"), "{}", err(&o));
}
