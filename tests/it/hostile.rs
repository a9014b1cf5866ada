//! Hostile input (SPEC 3, 9, 10): every malformed, oversized, unreadable
//! or strange entry of in/ ends in rejected/ with its original bytes and a
//! one-line reason, a runaway taskmaster fails only its own task, and a
//! good task still completes in the same run.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::common::*;

const GOOD: &str = r#"{"domain":"org","tasker":"echo","payload":{"ok":true}}"#;

fn cat_tasker(t: &TestRoot) {
    t.tasker("org", "echo", "#!/bin/sh\ncat\n");
}

fn rejected_bytes(t: &TestRoot, name: &str) -> Vec<u8> {
    fs::read(t.join(&format!("var/spool/rejected/{name}"))).unwrap()
}

/// Files with bad content, each as (name in in/ or in/<sub>/, bytes,
/// expected start of the reason, expected part of the reason).
fn bad_files() -> Vec<(
    &'static str,
    &'static str,
    Vec<u8>,
    &'static str,
    &'static str,
)> {
    vec![
        (
            "",
            "malformed.json",
            b"{\n  \"domain\": \"org\",\n  \"tasker\": ,\n}".to_vec(),
            "invalid JSON at line 3",
            "",
        ),
        (
            "",
            "truncated.json",
            br#"{"domain":"org""#.to_vec(),
            "invalid JSON at line 1",
            "",
        ),
        (
            "",
            "typo.json",
            br#"{"domain":"org","tasker":"echo","prioity":1}"#.to_vec(),
            r#"unknown key "prioity""#,
            "",
        ),
        (
            "",
            "baddomain.json",
            br#"{"domain":"Org Example","tasker":"echo"}"#.to_vec(),
            "invalid domain",
            "Org Example",
        ),
        (
            "",
            "anydomain.json",
            br#"{"domain":"any.thing","tasker":"echo"}"#.to_vec(),
            "domain",
            "reserved",
        ),
        (
            "",
            "badtaskee.json",
            br#"{"domain":"org","tasker":"a.b/c"}"#.to_vec(),
            "invalid taskee",
            "a.b/c",
        ),
        (
            "",
            "badid.json",
            br#"{"domain":"org","tasker":"echo","id":"-x y"}"#.to_vec(),
            "invalid task id",
            "-x y",
        ),
        (
            "",
            "array.json",
            br#"[{"domain":"org","tasker":"echo"}]"#.to_vec(),
            "a task file must hold a JSON object",
            "array",
        ),
        (
            "",
            "string.json",
            br#""{\"domain\":\"org\"}""#.to_vec(),
            "a task file must hold a JSON object",
            "string",
        ),
        (
            "",
            "garbage.json",
            vec![
                0x00, 0xff, 0xfe, 0x7b, 0x01, 0x80, 0x9f, 0x22, 0x0a, 0xc3, 0x28,
            ],
            "invalid JSON at line",
            "",
        ),
        (
            "",
            "badpayload.json",
            br#"{"domain":"org","tasker":"echo","payload":[1]}"#.to_vec(),
            r#""payload" must be"#,
            "object",
        ),
        (
            "",
            "badpriority.json",
            br#"{"domain":"org","tasker":"echo","priority":"high"}"#.to_vec(),
            r#""priority" must be"#,
            "integer",
        ),
        (
            "",
            "nodomain.json",
            br#"{"tasker":"echo"}"#.to_vec(),
            "no domain",
            "",
        ),
        (
            "",
            "notes.txt",
            br#"{"domain":"org","tasker":"echo"}"#.to_vec(),
            "notes.txt does not end in .json",
            "",
        ),
        ("", "empty.json", Vec::new(), "invalid JSON at line", ""),
        (
            "org.example",
            "wrongbranch.json",
            br#"{"domain":"org.other","tasker":"echo"}"#.to_vec(),
            "domain org.other is outside in/org.example",
            "",
        ),
    ]
}

/// Drops every hostile entry (files, a symlink, directories, a FIFO, an
/// oversized file, a duplicate). `staging` is outside in/, for building
/// directories that are then renamed in whole.
fn drop_hostile(t: &TestRoot, oversized: bool) {
    for (sub, name, bytes, _, _) in bad_files() {
        t.drop_bytes(sub, name, &bytes);
    }
    // Two rejected files of the same name: the second gets `.1`.
    t.drop_bytes("", "same.json", b"{ first");
    t.drop_bytes("org.example", "same.json", b"{ second");

    // A symlink to a valid task file outside the spool.
    let secret = t.join("secret.json");
    fs::write(&secret, GOOD).unwrap();
    std::os::unix::fs::symlink(&secret, t.join("var/spool/in/link.json")).unwrap();

    // Directories built aside, then renamed in whole.
    let staging = t.join("staging");
    fs::create_dir_all(staging.join("Not A Domain")).unwrap();
    fs::write(staging.join("Not A Domain/inner.json"), GOOD).unwrap();
    fs::rename(
        staging.join("Not A Domain"),
        t.join("var/spool/in/Not A Domain"),
    )
    .unwrap();
    fs::create_dir_all(staging.join("sub")).unwrap();
    fs::write(staging.join("sub/deep.json"), GOOD).unwrap();
    fs::create_dir_all(t.join("var/spool/in/org.example")).unwrap();
    fs::rename(staging.join("sub"), t.join("var/spool/in/org.example/sub")).unwrap();

    // A FIFO: reading it would block forever.
    nix::unistd::mkfifo(
        &t.join("var/spool/in/pipe.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();

    if oversized {
        // 17 MiB of spaces, then a valid object.
        let mut big = vec![b' '; 17 << 20];
        big.extend_from_slice(GOOD.as_bytes());
        t.drop_bytes("", "huge.json", &big);
    }
}

/// Checks every rejection made by [`drop_hostile`].
fn check_hostile(t: &TestRoot, oversized: bool) {
    for (_, name, bytes, start, part) in bad_files() {
        let r = t.reason(name);
        assert!(
            r.starts_with(start),
            "reason of {name}: {r:?} should start with {start:?}"
        );
        assert!(
            r.contains(part),
            "reason of {name}: {r:?} should mention {part:?}"
        );
        assert_eq!(
            rejected_bytes(t, name),
            bytes,
            "rejected/{name} keeps its bytes"
        );
    }
    // Which of the two same.json came first depends on scan order; both
    // are kept, each with its own reason.
    let mut both = [
        rejected_bytes(t, "same.json"),
        rejected_bytes(t, "same.json.1"),
    ];
    both.sort();
    assert_eq!(both, [b"{ first".to_vec(), b"{ second".to_vec()]);
    assert!(t.reason("same.json").starts_with("invalid JSON"));
    assert!(t.reason("same.json.1").starts_with("invalid JSON"));
    assert!(!t.join("var/spool/rejected/same.json.2").exists());

    // The symlink was moved as the link, never followed.
    let link = t.join("var/spool/rejected/link.json");
    let meta = fs::symlink_metadata(&link).unwrap();
    assert!(meta.file_type().is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), t.join("secret.json"));
    assert_eq!(fs::read_to_string(t.join("secret.json")).unwrap(), GOOD);
    assert!(t.reason("link.json").contains("symbolic link"));
    assert!(t.record("link").is_none() && t.record("secret").is_none());

    // Directories are moved whole, their content untouched and not run.
    let nd = t.join("var/spool/rejected/Not A Domain");
    assert!(nd.is_dir());
    assert_eq!(fs::read_to_string(nd.join("inner.json")).unwrap(), GOOD);
    let r = t.reason("Not A Domain");
    assert!(
        r.contains("Not A Domain") && r.contains("not a domain"),
        "{r:?}"
    );
    assert!(t.record("inner").is_none());

    let sub = t.join("var/spool/rejected/sub");
    assert!(sub.is_dir());
    assert_eq!(fs::read_to_string(sub.join("deep.json")).unwrap(), GOOD);
    let r = t.reason("sub");
    assert!(r.contains("subdirectory sub of in/org.example"), "{r:?}");
    assert!(t.record("deep").is_none());

    // The FIFO was moved, never opened for a blocking read.
    let pipe = fs::symlink_metadata(t.join("var/spool/rejected/pipe.json")).unwrap();
    assert!(pipe.file_type().is_fifo());
    assert!(t.reason("pipe.json").contains("not a regular file"));

    if oversized {
        let r = t.reason("huge.json");
        assert!(r.contains("larger than"), "{r:?}");
        let meta = fs::metadata(t.join("var/spool/rejected/huge.json")).unwrap();
        assert_eq!(meta.len(), (17 << 20) + GOOD.len() as u64);
        assert!(t.record("huge").is_none());
    }

    // Nothing is left behind, nothing ran but the good tasks.
    assert_eq!(t.list("var/spool/in"), ["org.example"]);
    assert!(t.list("var/spool/in/org.example").is_empty());
    assert!(t.list("var/spool/run").is_empty());
    assert!(
        t.list("var/spool/failed").is_empty(),
        "{:?}",
        t.list("var/spool/failed")
    );
}

#[test]
fn every_bad_input_is_rejected_with_its_bytes_and_a_reason() {
    let t = TestRoot::new();
    cat_tasker(&t);
    drop_hostile(&t, true);
    // Sorted after every hostile name, so the initial scan meets it last.
    t.drop_task("zz-good.json", GOOD);
    t.run_drain(2);
    check_hostile(&t, true);
    let good = t.must_record("zz-good");
    assert_eq!(good["state"], "completed");
    assert_eq!(good["payload"], serde_json::json!({"ok":true}));
    assert_eq!(t.list("var/spool/done"), ["zz-good.json"]);
}

#[test]
fn bad_input_seen_by_the_watcher_is_rejected_and_the_engine_goes_on() {
    let t = TestRoot::new();
    cat_tasker(&t);
    // The safety rescan far beyond the test's deadlines: every entry must
    // be taken on its event or a scan it caused (issue 10).
    let engine = t.spawn_engine(&["--workers", "2", "--rescan", "1h"]);
    t.drop_task("warm.json", GOOD);
    wait_for("warm's record", DEADLINE, || t.record("warm").is_some());

    drop_hostile(&t, false);
    t.drop_task("zz-good.json", GOOD);
    wait_for("the good task's record", DEADLINE, || {
        t.record("zz-good").is_some()
    });
    wait_for("every hostile entry to leave in/", DEADLINE, || {
        t.list("var/spool/in") == ["org.example"] && t.list("var/spool/in/org.example").is_empty()
    });
    // A record is written before its `run/` file is removed: the removal
    // may come a moment after the record is seen.
    wait_for("run/ to be empty", DEADLINE, || {
        t.list("var/spool/run").is_empty()
    });
    wait_for("every reason to be written", DEADLINE, || {
        t.list("var/spool/rejected")
            .iter()
            .filter(|n| n.ends_with(".reason"))
            .count()
            == bad_files().len() + 6
    });
    check_hostile(&t, false);
    assert_eq!(t.must_record("zz-good")["state"], "completed");
    drop(engine);
}

#[test]
fn a_duplicate_in_the_same_run_is_rejected_once() {
    let t = TestRoot::new();
    cat_tasker(&t);
    t.drop_task(
        "dup-a.json",
        r#"{"domain":"org","tasker":"echo","id":"dup","payload":{"from":"a"}}"#,
    );
    t.drop_task(
        "dup-b.json",
        r#"{"domain":"org","tasker":"echo","id":"dup","payload":{"from":"b"}}"#,
    );
    t.run_drain(2);
    let rec = t.must_record("dup");
    assert_eq!(rec["state"], "completed");
    let loser = if rec["payload"]["from"] == "a" {
        "dup-b.json"
    } else {
        "dup-a.json"
    };
    assert_eq!(
        t.list("var/spool/rejected"),
        [loser.to_string(), format!("{loser}.reason")]
    );
    assert_eq!(t.reason(loser), "duplicate id dup");
}

#[test]
fn a_taken_rejected_name_gets_a_numbered_suffix_for_file_and_reason() {
    let t = TestRoot::new();
    cat_tasker(&t);
    t.drop_bytes("", "x.json", b"one");
    t.run_drain(1);
    t.drop_bytes("", "x.json", br#"{"domain":"org","bogus":1}"#);
    t.run_drain(1);
    t.drop_bytes("", "x.json", b"[]");
    t.run_drain(1);
    assert_eq!(
        t.list("var/spool/rejected"),
        [
            "x.json",
            "x.json.1",
            "x.json.1.reason",
            "x.json.2",
            "x.json.2.reason",
            "x.json.reason"
        ]
    );
    assert_eq!(rejected_bytes(&t, "x.json"), b"one");
    assert!(t.reason("x.json").starts_with("invalid JSON at line 1"));
    assert_eq!(
        rejected_bytes(&t, "x.json.1"),
        br#"{"domain":"org","bogus":1}"#
    );
    assert_eq!(t.reason("x.json.1"), r#"unknown key "bogus""#);
    assert_eq!(rejected_bytes(&t, "x.json.2"), b"[]");
    assert!(t.reason("x.json.2").contains("JSON object"));
}

/// The tests run as root, for whom `chmod 000` does not stop a read: run
/// the engine binary as `nobody` (setpriv) over a root it owns, and drop a
/// file that `nobody` may not read.
#[test]
fn an_unreadable_file_is_rejected() {
    let probe = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        eprintln!("skipped: setpriv cannot switch to uid 65534 here");
        return;
    }
    let t = TestRoot::new();
    cat_tasker(&t);
    chown_tree(t.path(), 65534, 65534);
    let secret = t.join("var/spool/in/secret.json");
    fs::write(&secret, GOOD).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    t.drop_task("good.json", GOOD);
    std::os::unix::fs::chown(t.join("var/spool/in/good.json"), Some(65534), Some(65534)).unwrap();

    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_spoolflow"))
        .arg("--root")
        .arg(t.path())
        .args(["run", "--drain", "--workers", "1"])
        .env_remove("SPOOLFLOW_ROOT")
        .current_dir(t.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "engine as nobody failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = t.reason("secret.json");
    assert!(r.starts_with("unreadable"), "{r:?}");
    assert!(!secret.exists());
    assert_eq!(rejected_bytes(&t, "secret.json"), GOOD.as_bytes());
    assert_eq!(t.must_record("good")["state"], "completed");
    assert!(t.record("secret").is_none());
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for e in fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

#[test]
fn a_runaway_taskmaster_fails_only_its_own_task() {
    let t = TestRoot::new();
    cat_tasker(&t);
    t.taskmaster("spin", "loop {}");
    t.taskmaster("hog", r#"let s = "x"; loop { s += s; }"#);
    t.drop_task("spinning.json", r#"{"domain":"spin","tasker":"echo"}"#);
    t.drop_task("hogging.json", r#"{"domain":"hog","tasker":"echo"}"#);
    t.drop_task("zz-good.json", GOOD);
    t.run_drain(2);
    for id in ["spinning", "hogging"] {
        let rec = t.must_record(id);
        assert_eq!(rec["state"], "failed", "{id}: {rec}");
        assert_eq!(rec["error"]["kind"], "config", "{id}: {rec}");
        let msg = rec["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("taskmaster.rhai") && msg.contains("exceeded the sandbox"),
            "{id}: {msg}"
        );
        assert_eq!(t.point_names(id).last().map(String::as_str), Some("failed"));
        // It never reached a tasker.
        assert!(!t.point_names(id).iter().any(|p| p == "started"));
    }
    assert_eq!(t.must_record("zz-good")["state"], "completed");
}
