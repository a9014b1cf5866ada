//! SPEC 4, 9 and 11 at the edges, through the built binary: `gc` and
//! `list` age a rejected entry by its reason (the entry keeps the date it
//! had in `in/`) and `gc` removes a rejected directory whole; `status` and `list` do
//! not take a lone reason for a task, count a task once when its record
//! and its `run/` file are both there, and see a running task whose
//! tasker's own points fill the end of its log; `flow` on a root that does
//! not exist exits 2; `show` and `flow` never wait on a FIFO nor follow a
//! link out of the root.

use std::fs;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::common::*;

/// Sets a path's modification time `days` ago (symlinks not followed).
fn age(path: &std::path::Path, days: u64) {
    let t = SystemTime::now() - Duration::from_secs(days * 86_400);
    let f = fs::File::options()
        .write(true)
        .open(path)
        .or_else(|_| fs::File::open(path));
    f.and_then(|f| f.set_modified(t)).unwrap();
}

fn ids(listing: &Value) -> Vec<String> {
    let mut ids: Vec<String> = listing
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

#[test]
fn gc_ages_a_rejected_entry_by_its_reason_and_removes_a_rejected_directory_whole() {
    let t = TestRoot::new();
    t.tasker("org", "ok", "#!/bin/sh\ncat\n");
    // A file written ten days ago, rejected now (an unknown key).
    let old = t.join("o2.json");
    fs::write(&old, r#"{"domain":"org","tasker":"ok","prioity":1}"#).unwrap();
    age(&old, 10);
    fs::rename(&old, t.join("var/spool/in/o2.json")).unwrap();
    // The same for a file named like a reason.
    let notes = t.join("notes.reason");
    fs::write(&notes, "not a task").unwrap();
    age(&notes, 10);
    fs::rename(&notes, t.join("var/spool/in/notes.reason")).unwrap();
    // A directory of in/ that is no domain, rejected whole.
    fs::create_dir(t.join("var/spool/in/Bad_Dir")).unwrap();
    fs::write(t.join("var/spool/in/Bad_Dir/a.json"), "{}").unwrap();
    t.run_drain(1);
    let rejected = t.list("var/spool/rejected");
    let all = [
        "Bad_Dir",
        "Bad_Dir.reason",
        "notes.reason",
        "notes.reason.reason",
        "o2.json",
        "o2.json.reason",
    ];
    assert_eq!(rejected, all);

    // Rejected just now: kept, whatever the file's own date.
    let (code, out, err) = sf(&t, &["gc", "--older-than", "1d"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.list("var/spool/rejected"), rejected, "{out}");
    let listed = json_of(&t, &["list", "--state", "rejected", "--json"]);
    assert_eq!(ids(&listed), ["Bad_Dir", "notes.reason", "o2.json"]);
    // `list` dates the end by the reason too: ended just now, created
    // when the file was written, ten days ago.
    let recent = json_of(
        &t,
        &["list", "--state", "rejected", "--since", "1h", "--json"],
    );
    assert_eq!(ids(&recent), ["Bad_Dir", "notes.reason", "o2.json"]);
    let o2 = listed
        .as_array()
        .and_then(|a| a.iter().find(|t| t["id"] == "o2.json"))
        .unwrap();
    assert!(
        o2["created_at"].as_str() < o2["ended_at"].as_str(),
        "created before it ended: {o2}"
    );

    // Rejected three days ago: all go, the directory whole.
    for name in ["Bad_Dir.reason", "notes.reason.reason", "o2.json.reason"] {
        age(&t.join(&format!("var/spool/rejected/{name}")), 3);
    }
    let (code, out, err) = sf(&t, &["gc", "--older-than", "1d"]);
    assert_eq!(code, 0, "{err}");
    assert!(t.list("var/spool/rejected").is_empty(), "{out}");
    assert!(out.contains("var/spool/rejected/Bad_Dir/"), "{out}");

    // A reason whose file went is no task.
    fs::write(t.join("var/spool/rejected/lone.json.reason"), "why\n").unwrap();
    let listed = json_of(&t, &["list", "--state", "rejected", "--json"]);
    assert_eq!(ids(&listed), Vec::<String>::new());
}

#[test]
fn a_task_whose_record_and_run_file_are_both_there_is_counted_once() {
    let t = TestRoot::new();
    t.tasker("org", "ok", "#!/bin/sh\ncat\n");
    let task = r#"{"id":"twice","domain":"org","tasker":"ok"}"#;
    t.drop_task("twice.json", task);
    t.run_drain(1);
    // What a crash leaves between the record and the run/ file's removal.
    fs::write(t.join("var/spool/run/twice.json"), task).unwrap();
    let listed = json_of(&t, &["list", "--json"]);
    assert_eq!(ids(&listed), ["twice"]);
    assert_eq!(listed[0]["state"], "completed");
    let status = json_of(&t, &["status", "--json"]);
    assert_eq!(status["total"]["total"], 1, "{status:#}");
    assert_eq!(status["total"]["queued"], 0, "{status:#}");
}

#[test]
fn a_running_task_whose_tasker_filled_its_log_with_points_is_running() {
    let t = TestRoot::new();
    // 10 500 points of about 200 bytes (2 MiB; the engine copies 10 000
    // and notes the cap after them), then it waits.
    t.tasker(
        "org",
        "chatty",
        &chatty_script(10500, 180, &wait_file("go")),
    );
    t.drop_task(
        "long.json",
        r#"{"id":"long","domain":"org","tasker":"chatty"}"#,
    );
    let engine = t.spawn_engine(&["--workers", "2"]);
    wait_for(
        "the tasker's points copied, and the cap noted",
        DEADLINE,
        || {
            fs::read_to_string(t.join("var/log/tsk/long.log"))
                .is_ok_and(|l| l.contains(r#""point":"points-capped""#))
        },
    );
    let log = fs::metadata(t.join("var/log/tsk/long.log")).unwrap().len();
    assert!(log > 1 << 20, "the log is {log} bytes");
    let listed = json_of(&t, &["list", "--state", "running", "--json"]);
    assert_eq!(ids(&listed), ["long"]);
    let status = json_of(&t, &["status", "--json"]);
    assert_eq!(status["engine"]["workers_busy"], 1, "{status:#}");
    assert_eq!(status["total"]["running"], 1, "{status:#}");
    fs::write(t.join("go"), "").unwrap();
    wait_for("the record", DEADLINE, || t.record("long").is_some());
    engine.signal(Signal::SIGTERM);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn flow_on_a_root_that_does_not_exist_is_bad_usage() {
    let t = TestRoot::new();
    let missing = t.join("no-such-root");
    let missing = missing.to_str().unwrap();
    let (code, _, err) = sf(&t, &["flow", "x", "--root", missing]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = sf(&t, &["show", "x", "--root", missing]);
    assert_eq!(code, 2);
}

/// Runs the binary, failing the test if it does not end within 20 s.
fn sf_within(t: &TestRoot, args: &[&str]) -> (i32, String) {
    let mut c = t.cmd();
    c.args(args).env("NO_COLOR", "1");
    let out = output_within(c, Duration::from_secs(20));
    let code = out.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `show` and `flow` (and the dashboard, through the same loaders)
/// read of `history/` and `run/` is never a FIFO waited on nor a link
/// followed out of the root.
#[test]
fn show_and_flow_never_wait_on_a_fifo_nor_follow_a_link_out_of_the_root() {
    let t = TestRoot::new();
    let history = t.join("var/spool/history/t1");
    fs::create_dir_all(&history).unwrap();
    nix::unistd::mkfifo(&history.join("1.json"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (code, _) = sf_within(&t, &["show", "t1"]);
    assert_eq!(code, 3, "t1 is unknown");
    nix::unistd::mkfifo(
        &t.join("var/spool/run/f1.json"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    let (code, _) = sf_within(&t, &["flow", "f1"]);
    assert_ne!(code, 0);
    let outside = t.join("outside-secret.json");
    fs::write(&outside, r#"{"flow":{"set":{"db_password":"hunter2"}}}"#).unwrap();
    std::os::unix::fs::symlink(&outside, t.join("var/spool/run/f2.json")).unwrap();
    let (code, out) = sf_within(&t, &["flow", "f2", "--json"]);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("hunter2"), "{out}");
}

/// A log larger than what `logs` reads at a time (4 MiB) is printed
/// whole, by `logs` and by `events`.
#[test]
fn logs_and_events_print_a_log_larger_than_one_read_whole() {
    let t = TestRoot::new();
    // 9 000 points of about 700 bytes: a log of about 6 MiB.
    t.tasker("org", "chatty", &chatty_script(9000, 680, ""));
    t.drop_task(
        "big.json",
        r#"{"id":"big","domain":"org","tasker":"chatty"}"#,
    );
    t.run_drain(1);
    assert_eq!(t.must_record("big")["state"], "completed");
    let log = fs::metadata(t.join("var/log/tsk/big.log")).unwrap().len();
    assert!(log > 6 << 20, "the log is {log} bytes");
    let progress = |out: &str| out.lines().filter(|l| l.contains("progress")).count();
    let (code, out, err) = sf(&t, &["logs", "big", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(progress(&out), 9000);
    let (code, out, err) = sf(&t, &["events"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(progress(&out), 9000);
}

/// `gc` leaves the records index without the records it removed: a new
/// record of the same id that gets the freed inode number is not taken
/// for the old one by the next `list`.
#[test]
fn gc_forgets_the_records_it_removed_in_the_records_index() {
    let t = TestRoot::new();
    t.tasker("org", "cat", "#!/bin/sh\ncat\n");
    t.drop_task("old1.json", r#"{"domain":"org","tasker":"cat"}"#);
    t.run_drain(1);
    let listed = json_of(&t, &["list", "--json"]);
    assert_eq!(ids(&listed), ["old1"]);
    let index = t.join("var/cache/records.idx");
    assert!(fs::read_to_string(&index).unwrap().contains("old1.json"));
    let (code, _, err) = sf(&t, &["gc", "--older-than", "0s"]);
    assert_eq!(code, 0, "{err}");
    assert!(t.record("old1").is_none());
    assert!(
        !fs::read_to_string(&index).unwrap().contains("old1.json"),
        "{}",
        fs::read_to_string(&index).unwrap()
    );
}
