//! `spoolflow submit --batch FILE|-` through the built binary: JSON lines,
//! one task file each, the command line's flags as defaults, all or
//! nothing (every bad line reported with its number, exit 2, nothing
//! written), duplicate ids, faults of the disk, the engine running every
//! task, and `gc` removing what an interrupted batch left.

use std::fs;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::common::*;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `c` with `input` on stdin.
fn with_stdin(c: &mut Command, input: &str) -> Output {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spoolflow");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for spoolflow")
}

/// `submit --batch -` with `flags`, the batch on stdin.
fn batch(t: &TestRoot, flags: &[&str], input: &str) -> Output {
    with_stdin(t.cmd().args(["submit", "--batch", "-"]).args(flags), input)
}

fn ids_of(o: &Output) -> Vec<String> {
    assert!(
        o.status.success(),
        "{:?}: stdout {:?} stderr {:?}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o).lines().map(str::to_string).collect()
}

/// The task file `in/<id>.json`, parsed.
fn task_file(t: &TestRoot, id: &str) -> Value {
    let bytes = fs::read(t.join(&format!("var/spool/in/{id}.json")))
        .unwrap_or_else(|e| panic!("in/{id}.json: {e}"));
    serde_json::from_slice(&bytes).expect("a task file is JSON")
}

/// Every entry of `in/`, dot names included.
fn everything_in(t: &TestRoot) -> Vec<String> {
    t.list("var/spool/in")
}

fn served() -> TestRoot {
    let t = TestRoot::new();
    t.tasker("org", "stamp", "#!/bin/sh\ncat\n");
    t
}

#[test]
fn a_batch_file_is_submitted_in_order_as_complete_task_files() {
    let t = served();
    let file = t.tmp.path().join("batch.jsonl");
    fs::write(
        &file,
        concat!(
            "{\"domain\":\"org.example\",\"tasker\":\"stamp\",\"payload\":{\"n\":1}}\n",
            "\n",
            "{\"domain\":\"org\",\"id\":\"order-7\",\"priority\":3,\"headers\":{\"by\":\"alice\"},\"timeout\":\"30s\",\"retries\":2}\n",
            "   \n",
            "{\"domain\":\"org\",\"flow\":{\"sequence\":[{\"task\":\"stamp\"}]}}",
        ),
    )
    .unwrap();
    let o = t
        .cmd()
        .args(["submit", "--batch"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let ids = ids_of(&o);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids[1], "order-7");
    assert!(ids[0] < ids[2], "generated ids are time-ordered: {ids:?}");
    let mut want: Vec<String> = ids.iter().map(|i| format!("{i}.json")).collect();
    want.sort();
    assert_eq!(everything_in(&t), want, "no staging directory is left");

    let first = task_file(&t, &ids[0]);
    assert_eq!(first["id"], ids[0].as_str());
    assert_eq!(first["domain"], "org.example");
    assert_eq!(first["tasker"], "stamp");
    assert_eq!(first["payload"], serde_json::json!({"n": 1}));
    assert_eq!(first["priority"], 0);
    let second = task_file(&t, "order-7");
    assert_eq!(second["priority"], 3);
    assert_eq!(second["headers"]["by"], "alice");
    assert_eq!(second["timeout"], "30s");
    assert_eq!(second["retries"], 2);
    let third = task_file(&t, &ids[2]);
    assert_eq!(third["flow"]["sequence"][0]["task"], "stamp");
    assert!(third.get("tasker").is_none());
    // Each file is a task file as the engine reads it.
    for id in &ids {
        let bytes = fs::read(t.join(&format!("var/spool/in/{id}.json"))).unwrap();
        spoolflow::model::task::TaskFile::parse(&bytes)
            .unwrap_or_else(|e| panic!("in/{id}.json does not parse: {e}"));
    }
}

#[test]
fn flags_fill_in_what_a_line_leaves_out() {
    let t = served();
    let o = batch(
        &t,
        &[
            "--domain",
            "org.example",
            "--tasker",
            "stamp",
            "--priority",
            "-2",
        ],
        concat!(
            "{\"payload\":{\"n\":1}}\n",
            "{\"domain\":\"org\",\"tasker\":\"other\",\"priority\":9}\n",
            "{\"priority\":null,\"flow\":{\"task\":\"stamp\"}}\n",
        ),
    );
    let ids = ids_of(&o);
    let a = task_file(&t, &ids[0]);
    assert_eq!(
        (&a["domain"], &a["tasker"], &a["priority"]),
        (&"org.example".into(), &"stamp".into(), &(-2).into())
    );
    let b = task_file(&t, &ids[1]);
    assert_eq!(
        (&b["domain"], &b["tasker"], &b["priority"]),
        (&"org".into(), &"other".into(), &9.into())
    );
    let c = task_file(&t, &ids[2]);
    assert!(c.get("tasker").is_none(), "a flow gets no default tasker");
    assert_eq!(c["priority"], -2);
}

#[test]
fn one_bad_line_refuses_the_whole_batch_and_names_every_bad_line() {
    let t = served();
    let input = concat!(
        "{\"domain\":\"org\"}\n",
        "{\"domain\":\"org\",\"prioity\":1}\n",
        "{\"domain\":\"org\"}\n",
        "{\"domain\":\"org\",\"payload\": }\n",
        "[1]\n",
        "{\"payload\":{}}\n",
    );
    let o = batch(&t, &[], input);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(stdout(&o), "", "no id is printed");
    let err = stderr(&o);
    for needle in [
        "line 2: unknown key \"prioity\" (did you mean \"priority\"?)",
        "line 4: invalid JSON at column 28: expected value",
        "line 5: a task file must hold a JSON object, not an array",
        "line 6: no domain",
        "nothing submitted: 4 of 6 tasks are bad",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    assert!(
        !err.contains("line 1:") && !err.contains("line 3:"),
        "{err}"
    );
    assert!(everything_in(&t).is_empty(), "{:?}", everything_in(&t));
}

#[test]
fn duplicate_ids_in_the_batch_or_the_spool_refuse_it() {
    let t = served();
    t.drop_task_in("org.x", "held.json", r#"{"payload":{}}"#);
    let o = t
        .cmd()
        .args(["submit", "--domain", "org", "--id", "taken"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = batch(
        &t,
        &["--domain", "org"],
        "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"a\"}\n{\"id\":\"taken\"}\n{\"id\":\"held\"}\n",
    );
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("line 3: duplicate id a: line 1 has it too"),
        "{err}"
    );
    assert!(err.contains("line 4: duplicate id taken"), "{err}");
    assert!(err.contains("line 5: duplicate id held"), "{err}");
    assert_eq!(everything_in(&t), ["org.x", "taken.json"]);
}

#[test]
fn a_domain_nothing_serves_is_refused_once_unless_forced() {
    let t = served();
    let input = "{\"domain\":\"ogr\"}\n{\"domain\":\"org\"}\n{\"domain\":\"ogr\"}\n";
    let o = batch(&t, &[], input);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("line 1: nothing serves domain ogr"), "{err}");
    assert!(err.contains("did you mean \"org\"?"), "{err}");
    assert!(err.contains("1 more line has this domain"), "{err}");
    assert!(everything_in(&t).is_empty());
    assert_eq!(ids_of(&batch(&t, &["--force"], input)).len(), 3);
}

#[test]
fn usage_mistakes_and_an_empty_batch() {
    let t = served();
    for args in [
        &["submit", "--batch", "-", "--id", "x"][..],
        &["submit", "--batch", "-", "{}"],
        &["submit", "--tasker", "stamp"],
    ] {
        let o = t.cmd().args(args).stdin(Stdio::null()).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    let o = t
        .cmd()
        .args(["submit", "--batch", "no-such-file.jsonl"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no-such-file.jsonl"), "{}", stderr(&o));
    let o = batch(&t, &[], "\n\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    assert!(everything_in(&t).is_empty());
    let help = t.cmd().args(["submit", "--help"]).output().unwrap();
    let help = stdout(&help);
    assert!(
        help.contains("--batch") && help.contains("nothing is submitted"),
        "{help}"
    );
}

#[test]
fn the_engine_runs_every_task_of_a_batch() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "double",
        "#!/bin/sh\nsed 's/\"n\":\\([0-9]*\\)/\"n\":\\1,\"done\":true/'\n",
    );
    let input: String = (0..40)
        .map(|i| format!("{{\"id\":\"job-{i}\",\"payload\":{{\"n\":{i}}}}}\n"))
        .collect();
    let ids = ids_of(&batch(
        &t,
        &["--domain", "org", "--tasker", "double"],
        &input,
    ));
    assert_eq!(ids.len(), 40);
    t.run_drain(2);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(id, &format!("job-{i}"));
        let record = t.must_record(id);
        assert_eq!(record["state"], "completed", "{record}");
        assert_eq!(record["payload"]["n"], i);
        assert_eq!(record["payload"]["done"], true);
    }
    assert!(everything_in(&t).is_empty());
}

/// `submit --domain org --batch -` of ids `<prefix>-0`… with a disk fault
/// injected (`SPOOLFLOW_FAULT`): exit 2 expected; returns stdout and
/// stderr.
fn faulty_batch(t: &TestRoot, prefix: &str, n: usize, fault: &str) -> (String, String) {
    let input: String = (0..n)
        .map(|i| format!("{{\"id\":\"{prefix}-{i}\"}}\n"))
        .collect();
    let o = with_stdin(
        t.cmd()
            .args(["submit", "--domain", "org", "--batch", "-"])
            .env("SPOOLFLOW_FAULT", fault),
        &input,
    );
    assert_eq!(o.status.code(), Some(2), "{fault}: {}", stderr(&o));
    (stdout(&o), stderr(&o))
}

#[test]
fn a_failed_sync_or_rename_is_reported_and_leaves_no_half_batch_unsaid() {
    let t = served();
    // The one sync of the batch fails: nothing was visible, nothing is.
    let (out, err) = faulty_batch(&t, "f", 20, "fsync:1@.spoolflow-batch-");
    assert!(err.contains("failed to fsync"), "{err}");
    assert_eq!(out, "");
    assert!(everything_in(&t).is_empty(), "{:?}", everything_in(&t));
    // The third rename fails: the two tasks before it are submitted (their
    // ids printed), the others are not, and nothing is left staged.
    let (out, err) = faulty_batch(&t, "f", 20, "rename:3@/spool/in/f-");
    assert_eq!(out, "f-0\nf-1\n");
    assert!(err.contains("2 of 20 tasks were submitted"), "{err}");
    assert_eq!(everything_in(&t), ["f-0.json", "f-1.json"]);
    // The fsync of in/ after the renames fails: every task is there, and
    // the message says that durability is unknown.
    let (out, err) = faulty_batch(&t, "g", 10, "fsync:2@/spool/in");
    assert_eq!(out.lines().count(), 10);
    assert!(err.contains("all 10 tasks are in var/spool/in/"), "{err}");
}

#[test]
fn gc_removes_what_an_interrupted_batch_left_and_the_engine_ignores_it() {
    let t = served();
    // What a batch killed before its renames leaves: a staging directory.
    let staging = t.join("var/spool/in/.spoolflow-batch-abc123.tmp");
    fs::create_dir_all(staging.join("0")).unwrap();
    fs::write(
        staging.join("0/t1.json"),
        r#"{"domain":"org","tasker":"stamp"}"#,
    )
    .unwrap();
    let fresh = t.join("var/spool/in/.spoolflow-batch-new.tmp");
    fs::create_dir_all(fresh.join("0")).unwrap();
    t.drop_task("real.json", r#"{"domain":"org","tasker":"stamp"}"#);
    t.run_drain(1);
    assert_eq!(t.must_record("real")["state"], "completed");
    assert!(
        staging.join("0/t1.json").exists(),
        "the engine leaves it alone"
    );
    assert!(t.record("t1").is_none());

    let hour_ago = nix::sys::time::TimeVal::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 3600,
        0,
    );
    for p in [&staging, &staging.join("0"), &staging.join("0/t1.json")] {
        nix::sys::stat::utimes(p.as_path(), &hour_ago, &hour_ago).unwrap();
    }
    let o = t
        .cmd()
        .args(["gc", "--older-than", "30m"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("removed var/spool/in/.spoolflow-batch-abc123.tmp/0/t1.json"),
        "{}",
        stdout(&o)
    );
    assert!(!staging.exists(), "the emptied staging directory goes too");
    assert!(
        fresh.exists(),
        "a recent one may belong to a batch running now"
    );
}
