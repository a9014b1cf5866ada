//! Issue 15, A5 and E (through the built binary): a taskmaster that cannot
//! be read (a dangling symlink, a directory, a FIFO) fails its domain's
//! tasks `config` instead of being skipped; a taskmaster that evaluates to
//! a value that is no taskee name fails the task with that value in words;
//! `spoolflow check` never blocks on a FIFO under `tsk/` and names a `#!`
//! line without an interpreter.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// A tasker that leaves a mark when it runs, then echoes its payload.
const MARKING: &str = "#!/bin/sh\ntouch \"$SPOOLFLOW_ROOT/ran-$SPOOLFLOW_ID\"\ncat\n";

fn config_reason(rec: &Value) -> String {
    assert_eq!(rec["state"], "failed", "{rec:#}");
    assert_eq!(rec["error"]["kind"], "config", "{rec:#}");
    rec["reason"].as_str().unwrap_or_default().to_string()
}

#[test]
fn an_unreadable_taskmaster_fails_its_tasks_config_and_is_never_skipped() {
    let t = TestRoot::new();
    // `any`'s script would accept everything: it must not be used instead.
    t.taskmaster("any", r#""marking""#);
    for domain in ["dangling", "dir", "fifo"] {
        t.tasker(domain, "marking", MARKING);
        std::fs::create_dir_all(t.join(&format!("tsk/{domain}"))).unwrap();
    }
    std::os::unix::fs::symlink("gone.rhai", t.join("tsk/dangling/taskmaster.rhai")).unwrap();
    std::fs::create_dir(t.join("tsk/dir/taskmaster.rhai")).unwrap();
    nix::unistd::mkfifo(
        &t.join("tsk/fifo/taskmaster.rhai"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    for domain in ["dangling", "dir", "fifo"] {
        t.drop_task(
            &format!("{domain}.json"),
            &format!(r#"{{"domain":"{domain}","tasker":"marking"}}"#),
        );
    }
    t.drop_task("ok.json", r#"{"domain":"fine","tasker":"marking"}"#);
    t.tasker("fine", "marking", MARKING);
    t.run_drain(2);
    for (domain, said) in [
        (
            "dangling",
            "is a symlink to gone.rhai, which does not exist",
        ),
        ("dir", "is a directory, not a regular file"),
        ("fifo", "is a FIFO (named pipe), not a regular file"),
    ] {
        let reason = config_reason(&t.must_record(domain));
        assert_eq!(
            reason,
            format!("tsk/{domain}/taskmaster.rhai: cannot read: {said}")
        );
        assert!(!t.join(&format!("ran-{domain}")).exists(), "{domain} ran");
    }
    // `any`'s taskmaster serves the domain without one.
    assert_eq!(t.must_record("ok")["state"], "completed");
}

#[test]
fn a_taskmaster_evaluating_to_a_number_an_array_or_a_map_fails_the_task() {
    let t = TestRoot::new();
    for (domain, script) in [("num", "42"), ("arr", "[1, 2]"), ("map", "#{a: 1}")] {
        t.taskmaster(domain, script);
        t.tasker(domain, "marking", MARKING);
        t.drop_task(
            &format!("{domain}.json"),
            &format!(r#"{{"domain":"{domain}","tasker":"marking"}}"#),
        );
    }
    t.run_drain(2);
    for (domain, said) in [
        ("num", "a number (42)"),
        ("arr", "an array ([1, 2])"),
        ("map", "a map (#{\"a\": 1})"),
    ] {
        assert_eq!(
            config_reason(&t.must_record(domain)),
            format!(
                "tsk/{domain}/taskmaster.rhai: the taskmaster evaluated to {said}; expected a taskee name or nothing"
            )
        );
        assert!(!t.join(&format!("ran-{domain}")).exists(), "{domain} ran");
    }
}

/// SPEC 5's bounds hold across runs too: a closure that captured a
/// variable could hold a map that refers to itself, which no run's end
/// frees (the engine's memory grew by each run's). Closures capture
/// nothing in the sandbox: such a script fails `config` by its words, and
/// one whose closure takes its values as parameters still runs.
#[test]
fn a_closure_cannot_capture_so_a_taskmaster_cannot_leak_a_cycle() {
    let t = TestRoot::new();
    let cycle = "let m = #{n: 1}; let f = || m.n; m.f = f; if f.call() == 1 { \"marking\" }";
    t.taskmaster("cycle", cycle);
    t.tasker("cycle", "marking", MARKING);
    let plain = "let pick = |names| names[0]; pick.call([\"marking\"])";
    t.taskmaster("plain", plain);
    t.tasker("plain", "marking", MARKING);
    for domain in ["cycle", "plain"] {
        t.drop_task(
            &format!("{domain}.json"),
            &format!(r#"{{"domain":"{domain}","tasker":"marking"}}"#),
        );
    }
    t.run_drain(2);
    let reason = config_reason(&t.must_record("cycle"));
    assert!(
        reason.starts_with("tsk/cycle/taskmaster.rhai: "),
        "{reason}"
    );
    assert!(reason.contains('m'), "{reason}");
    assert!(!t.join("ran-cycle").exists(), "the cycle ran");
    let plain = t.must_record("plain");
    assert_eq!(plain["state"], "completed", "{plain:#}");
}

#[test]
fn check_does_not_block_on_fifos_under_tsk_and_names_them() {
    let t = TestRoot::new();
    let fifo = |rel: &str| {
        let p = t.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o755)).unwrap();
    };
    fifo("tsk/org/taskmaster.rhai");
    fifo("tsk/org/piped");
    fifo("tsk/org/cfg/tasker.json");
    fifo("tsk/org/flows/stored.json");
    let o = output_within(t.cmd_check(), Duration::from_secs(20));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(2), "{text}");
    for (path, said) in [
        (
            "tsk/org/taskmaster.rhai",
            "cannot read: is a FIFO (named pipe), not a regular file",
        ),
        ("tsk/org/piped", "is a FIFO (named pipe): a tasker is"),
        (
            "tsk/org/cfg/tasker.json",
            "cannot read: is a FIFO (named pipe), not a regular file",
        ),
        ("tsk/org/flows/stored.json", "not a regular file"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{path}: ")) && l.contains(said)),
            "no finding on {path} saying {said:?} in:\n{text}"
        );
    }
}

#[test]
fn check_names_a_shebang_without_an_interpreter_or_with_a_missing_one() {
    let t = TestRoot::new();
    t.tasker("org", "bare", "#!\ncat\n");
    t.tasker("org", "blank", "#!   \ncat\n");
    t.tasker("org", "typo", "#!/usr/bin/no-such-interpreter-xyz\ncat\n");
    t.tasker("org", "good", "#!/bin/sh\ncat\n");
    t.tasker("org", "env", "#!/usr/bin/env sh\ncat\n");
    t.tasker("org", "plain", "echo '{}'\n");
    // An ELF binary needs no #! line.
    std::fs::copy("/bin/true", t.join("tsk/org/binary")).unwrap();
    let o = output_within(t.cmd_check(), Duration::from_secs(20));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(2), "{text}");
    for (path, said) in [
        ("tsk/org/bare", "line 1: the #! line names no interpreter"),
        ("tsk/org/blank", "line 1: the #! line names no interpreter"),
        (
            "tsk/org/typo",
            "line 1: the #! line names the interpreter \"/usr/bin/no-such-interpreter-xyz\", which is not an executable file",
        ),
        (
            "tsk/org/plain",
            "line 1: it has no #! line and is no binary: the system cannot run it",
        ),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{path}: ")) && l.contains(said)),
            "no finding on {path} saying {said:?} in:\n{text}"
        );
    }
    assert_eq!(text.lines().count(), 4, "{text}");
}

/// `check` and the engine read a `tasker.json` alike: through a link (as
/// the tasker's entry and the taskmaster may be links), so one `check`
/// passes runs its tasks.
#[test]
fn a_linked_tasker_json_passes_check_and_runs() {
    let t = TestRoot::new();
    t.tasker_dir(
        "org",
        "stamp",
        r#"{"cmd":"cat >/dev/null; echo '{\"linked\":true}'"}"#,
        &[],
    );
    let dir = t.join("tsk/org/stamp");
    std::fs::rename(dir.join("tasker.json"), t.join("tsk/org/shared.json")).unwrap();
    std::os::unix::fs::symlink("../shared.json", dir.join("tasker.json")).unwrap();
    let o = output_within(t.cmd_check(), Duration::from_secs(20));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{text}");
    t.drop_task("s.json", r#"{"id":"s","domain":"org","tasker":"stamp"}"#);
    t.run_drain(1);
    let rec = t.must_record("s");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"]["linked"], true, "{rec:#}");
}

impl TestRoot {
    /// `spoolflow check` on this root.
    fn cmd_check(&self) -> Command {
        let mut c = self.cmd();
        c.arg("check");
        c
    }
}

#[test]
fn reasons_name_a_taskee_plainly() {
    let t = TestRoot::new();
    t.taskmaster("org", r#""slow3""#);
    t.tasker(
        "org",
        "slow3",
        "#!/bin/sh\ncat >/dev/null\necho '{\"point\":\"refused\",\"reason\":\"busy\"}'\n",
    );
    t.drop_task("a.json", r#"{"domain":"org"}"#);
    t.run_drain(1);
    let rec = t.must_record("a");
    assert_eq!(rec["error"]["kind"], "refused", "{rec:#}");
    assert_eq!(
        rec["reason"], "offered again to slow3, which refused it: busy",
        "{rec:#}"
    );
}
