//! SPEC 3 (submitting a task): in/ and in/<domain>/, ignored names, ids,
//! defaults, unknown keys, `spoolflow submit`, and files written in place
//! while the engine runs.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// A tasker that replies with its input (the payload) unchanged.
fn cat_tasker(t: &TestRoot, domain: &str, name: &str) {
    t.tasker(domain, name, "#!/bin/sh\ncat\n");
}

/// All records in `done/`, parsed.
fn done_records(t: &TestRoot) -> Vec<Value> {
    t.list("var/spool/done")
        .iter()
        .map(|n| {
            serde_json::from_slice(&fs::read(t.join(&format!("var/spool/done/{n}"))).unwrap())
                .unwrap()
        })
        .collect()
}

#[test]
fn tasks_in_in_and_in_a_domain_directory_are_taken() {
    let t = TestRoot::new();
    cat_tasker(&t, "org", "echo");
    t.drop_task(
        "top.json",
        r#"{"domain":"org.example","tasker":"echo","payload":{"k":"top"}}"#,
    );
    // The directory implies the domain.
    t.drop_task_in(
        "org.example",
        "implied.json",
        r#"{"tasker":"echo","payload":{"k":"implied"}}"#,
    );
    // A domain in the directory's branch is accepted.
    t.drop_task_in(
        "org.example",
        "branch.json",
        r#"{"domain":"org.example.sales","tasker":"echo","payload":{"k":"branch"}}"#,
    );
    // The directory's own domain, given explicitly.
    t.drop_task_in(
        "org.example",
        "same.json",
        r#"{"domain":"org.example","tasker":"echo"}"#,
    );
    t.run_drain(2);

    let top = t.must_record("top");
    assert_eq!(top["state"], "completed");
    assert_eq!(top["domain"], "org.example");
    assert_eq!(top["payload"], json!({"k":"top"}));

    let implied = t.must_record("implied");
    assert_eq!(implied["state"], "completed");
    assert_eq!(implied["domain"], "org.example");
    assert_eq!(implied["payload"], json!({"k":"implied"}));

    let branch = t.must_record("branch");
    assert_eq!(branch["state"], "completed");
    assert_eq!(branch["domain"], "org.example.sales");

    assert_eq!(t.must_record("same")["domain"], "org.example");
    assert!(t.list("var/spool/rejected").is_empty());
    assert!(t.list("var/spool/in/org.example").is_empty());
}

#[test]
fn a_domain_outside_the_directorys_branch_is_rejected() {
    let t = TestRoot::new();
    cat_tasker(&t, "org", "echo");
    let bytes = br#"{"domain":"org.other","tasker":"echo"}"#;
    t.drop_bytes("org.example", "other.json", bytes);
    // A parent of the directory's domain is outside its branch too.
    t.drop_task_in(
        "org.example",
        "parent.json",
        r#"{"domain":"org","tasker":"echo"}"#,
    );
    // A name that only shares a prefix is not in the branch.
    t.drop_task_in(
        "org.example",
        "prefix.json",
        r#"{"domain":"org.examples","tasker":"echo"}"#,
    );
    t.run_drain(1);

    assert_eq!(
        t.reason("other.json"),
        "domain org.other is outside in/org.example"
    );
    assert_eq!(
        fs::read(t.join("var/spool/rejected/other.json")).unwrap(),
        bytes
    );
    assert_eq!(
        t.reason("parent.json"),
        "domain org is outside in/org.example"
    );
    assert_eq!(
        t.reason("prefix.json"),
        "domain org.examples is outside in/org.example"
    );
    assert!(t.record("other").is_none());
    assert!(t.record("parent").is_none());
    assert!(t.record("prefix").is_none());
}

#[test]
fn dotfiles_and_tmp_names_are_ignored_and_left_in_place() {
    let t = TestRoot::new();
    cat_tasker(&t, "org", "echo");
    let good = r#"{"domain":"org","tasker":"echo"}"#;
    let inn = t.join("var/spool/in");
    fs::write(inn.join(".hidden.json"), good).unwrap();
    fs::write(inn.join("half.tmp"), good).unwrap();
    fs::write(inn.join("x.json.tmp"), "{ not json").unwrap();
    fs::create_dir_all(inn.join("org.example")).unwrap();
    fs::write(inn.join("org.example/.dot.json"), good).unwrap();
    fs::write(inn.join("org.example/y.tmp"), good).unwrap();
    // A real task beside them, so the run does something.
    t.drop_task("real.json", good);
    t.run_drain(1);

    assert_eq!(t.must_record("real")["state"], "completed");
    assert_eq!(
        t.list("var/spool/in"),
        [".hidden.json", "half.tmp", "org.example", "x.json.tmp"]
    );
    assert_eq!(t.list("var/spool/in/org.example"), [".dot.json", "y.tmp"]);
    assert!(
        t.list("var/spool/rejected").is_empty(),
        "{:?}",
        t.list("var/spool/rejected")
    );
    assert_eq!(t.list("var/spool/done"), ["real.json"]);
    assert!(t.list("var/spool/failed").is_empty());
}

#[test]
fn the_id_defaults_to_a_valid_stem_else_is_generated() {
    let t = TestRoot::new();
    cat_tasker(&t, "org", "echo");
    t.drop_task(
        "order-1234.json",
        r#"{"domain":"org","tasker":"echo","payload":{"which":"stem"}}"#,
    );
    // "bad name!" is not a valid id: the engine generates one.
    t.drop_task(
        "bad name!.json",
        r#"{"domain":"org","tasker":"echo","payload":{"which":"generated"}}"#,
    );
    t.run_drain(1);

    let stem = t.must_record("order-1234");
    assert_eq!(stem["id"], "order-1234");
    assert_eq!(stem["exid"], "order-1234");
    assert_eq!(stem["payload"]["which"], "stem");

    let records = done_records(&t);
    assert_eq!(records.len(), 2, "{records:?}");
    let gen = records
        .iter()
        .find(|r| r["payload"]["which"] == "generated")
        .expect("a record for the file with an invalid stem");
    let id = gen["id"].as_str().unwrap();
    assert_ne!(id, "bad name!");
    assert_eq!(gen["state"], "completed");
    // The generated id is a valid id, names its record and its points log.
    assert!(id.chars().next().unwrap().is_ascii_alphanumeric());
    assert!(
        id.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)),
        "{id}"
    );
    assert!(t.join(&format!("var/spool/done/{id}.json")).exists());
    assert_eq!(
        t.point_names(id).last().map(String::as_str),
        Some("completed")
    );
    assert!(t.list("var/spool/rejected").is_empty());
}

#[test]
fn an_explicit_id_wins_over_the_stem() {
    let t = TestRoot::new();
    cat_tasker(&t, "org", "echo");
    t.drop_task(
        "stem.json",
        r#"{"domain":"org","tasker":"echo","id":"explicit-1"}"#,
    );
    t.run_drain(1);
    assert_eq!(t.must_record("explicit-1")["id"], "explicit-1");
    assert!(t.record("stem").is_none());
    assert!(t.points("stem").is_empty());
    assert_eq!(t.list("var/spool/done"), ["explicit-1.json"]);
}

#[test]
fn a_duplicate_id_is_rejected_and_the_first_record_kept() {
    let t = TestRoot::new();
    cat_tasker(&t, "org", "echo");
    t.drop_task(
        "first.json",
        r#"{"domain":"org","tasker":"echo","id":"dupe","payload":{"n":1}}"#,
    );
    t.run_drain(1);
    assert_eq!(t.must_record("dupe")["payload"], json!({"n":1}));

    let second = br#"{"domain":"org","tasker":"echo","id":"dupe","payload":{"n":2}}"#;
    t.drop_bytes("", "second.json", second);
    // The stem of this one is the id of the existing record.
    t.drop_task(
        "dupe.json",
        r#"{"domain":"org","tasker":"echo","payload":{"n":3}}"#,
    );
    t.run_drain(1);

    assert_eq!(t.reason("second.json"), "duplicate id dupe");
    assert_eq!(
        fs::read(t.join("var/spool/rejected/second.json")).unwrap(),
        second
    );
    assert_eq!(t.reason("dupe.json"), "duplicate id dupe");
    let rec = t.must_record("dupe");
    assert_eq!(
        rec["payload"],
        json!({"n":1}),
        "the first record is never overwritten"
    );
    assert_eq!(rec["attempts"], 1);
    // The duplicates added no points to the first task's log.
    assert_eq!(
        t.point_names("dupe")
            .iter()
            .filter(|p| *p == "created")
            .count(),
        1
    );
}

#[test]
fn the_payload_defaults_to_an_empty_object() {
    let t = TestRoot::new();
    // Wraps what it read on stdin, so the record shows what the tasker got.
    t.tasker(
        "org",
        "wrap",
        "#!/bin/sh\nin=$(cat)\nprintf '{\"seen\":%s}' \"$in\"\n",
    );
    t.drop_task("nopayload.json", r#"{"domain":"org","tasker":"wrap"}"#);
    t.drop_task(
        "nullpayload.json",
        r#"{"domain":"org","tasker":"wrap","payload":null}"#,
    );
    t.run_drain(1);
    assert_eq!(t.must_record("nopayload")["payload"], json!({"seen":{}}));
    assert_eq!(t.must_record("nullpayload")["payload"], json!({"seen":{}}));
}

#[test]
fn an_unknown_key_is_rejected() {
    let t = TestRoot::new();
    cat_tasker(&t, "org", "echo");
    let bytes = br#"{"domain":"org","tasker":"echo","prioity":5}"#;
    t.drop_bytes("", "typo.json", bytes);
    t.run_drain(1);
    assert_eq!(
        t.reason("typo.json"),
        r#"unknown key "prioity" (did you mean "priority"?)"#
    );
    assert_eq!(
        fs::read(t.join("var/spool/rejected/typo.json")).unwrap(),
        bytes
    );
    assert!(t.record("typo").is_none());
    assert!(t.points("typo").is_empty());
}

#[test]
fn submit_without_an_engine_writes_a_task_file_and_prints_its_id() {
    let t = TestRoot::new();
    cat_tasker(&t, "org", "echo");
    let out = t
        .cmd()
        .args([
            "submit",
            "--domain",
            "org.example",
            "--tasker",
            "echo",
            r#"{"book":"moby-dick"}"#,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "{id:?}"
    );
    // The file is in in/ under the id, with no temporary left behind.
    assert_eq!(t.list("var/spool/in"), [format!("{id}.json")]);
    let file: Value =
        serde_json::from_slice(&fs::read(t.join(&format!("var/spool/in/{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(file["domain"], "org.example");
    assert_eq!(file["payload"], json!({"book":"moby-dick"}));

    t.run_drain(1);
    let rec = t.must_record(&id);
    assert_eq!(rec["state"], "completed");
    assert_eq!(rec["taskee"], "echo");
    assert_eq!(rec["domain"], "org.example");
    assert_eq!(rec["payload"], json!({"book":"moby-dick"}));
}

#[test]
fn submit_reads_the_payload_from_stdin_with_a_dash() {
    let t = TestRoot::new();
    cat_tasker(&t, "org", "echo");
    let mut child = t
        .cmd()
        .args([
            "submit",
            "--domain",
            "org",
            "--tasker",
            "echo",
            "--id",
            "from-stdin",
            "-",
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
        .write_all(b"{\"lines\": [1, 2, 3],\n \"nested\": {\"a\": \"b\"}}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "from-stdin");
    assert!(t.join("var/spool/in/from-stdin.json").exists());
    t.run_drain(1);
    let rec = t.must_record("from-stdin");
    assert_eq!(rec["state"], "completed");
    assert_eq!(rec["payload"], json!({"lines":[1,2,3],"nested":{"a":"b"}}));
}

#[test]
fn a_file_written_in_place_is_taken_only_once_closed() {
    let t = TestRoot::new();
    cat_tasker(&t, "org", "echo");
    let engine = t.spawn_engine(&["--workers", "2"]);
    // Wait until the engine runs and watches in/.
    t.drop_task("warm.json", r#"{"domain":"org","tasker":"echo"}"#);
    wait_for("warm's record", DEADLINE, || t.record("warm").is_some());

    let body = br#"{"domain":"org","tasker":"echo","payload":{"written":"in place"}}"#;
    let (first, rest) = body.split_at(body.len() / 2);
    let path = t.join("var/spool/in/x.json");
    let mut f = fs::File::create(&path).unwrap();
    f.write_all(first).unwrap();
    f.sync_all().unwrap();

    // A task dropped after the open and the first half: once it is done,
    // the engine has seen every event of x.json so far.
    t.drop_task("marker.json", r#"{"domain":"org","tasker":"echo"}"#);
    wait_for("marker's record", DEADLINE, || t.record("marker").is_some());
    assert!(path.exists(), "the half-written file is still in in/");
    assert!(
        t.list("var/spool/rejected").is_empty(),
        "{:?}",
        t.list("var/spool/rejected")
    );
    assert!(t.record("x").is_none());
    assert!(t.points("x").is_empty());

    // A cancel request for an unknown id makes the engine scan in/: the
    // half-written file is still left alone, and the request waits for it
    // (the file's id is not known until it is read).
    let cancel = t.join("var/spool/cancel");
    fs::write(cancel.join(".nosuch.tmp"), "").unwrap();
    fs::rename(cancel.join(".nosuch.tmp"), cancel.join("nosuch")).unwrap();
    t.drop_task("marker2.json", r#"{"domain":"org","tasker":"echo"}"#);
    wait_for("marker2's record", DEADLINE, || {
        t.record("marker2").is_some()
    });
    assert!(path.exists(), "the half-written file is still in in/");
    assert!(cancel.join("nosuch").exists(), "the request waits");
    assert!(t.list("var/spool/rejected").is_empty());

    f.write_all(rest).unwrap();
    drop(f);
    wait_for("x's record", DEADLINE, || t.record("x").is_some());
    let rec = t.must_record("x");
    assert_eq!(rec["state"], "completed");
    assert_eq!(rec["payload"], json!({"written":"in place"}));
    assert!(!path.exists());
    // x was not nosuch: once it is taken, the request is rejected.
    wait_for("the cancel request's rejection", DEADLINE, || {
        t.rejected_reason("nosuch").is_some()
    });
    assert_eq!(t.list("var/spool/rejected"), ["nosuch", "nosuch.reason"]);
    drop(engine);
}

/// A domain's directory built elsewhere and renamed into `in/` with its
/// task files inside: they have no event of their own (written before the
/// directory was watched); the engine lists the directory when it appears
/// and takes them at once, since nobody has them open for writing — never
/// left to the safety rescan (set out of reach here).
#[test]
fn a_domain_directory_renamed_in_whole_is_taken_without_the_safety_rescan() {
    let t = TestRoot::new();
    cat_tasker(&t, "org", "cat");
    let engine = engine_without_rescan(&t);
    let staging = t.join("staging/org.example");
    fs::create_dir_all(&staging).unwrap();
    for i in 0..20 {
        fs::write(
            staging.join(format!("m{i:02}.json")),
            r#"{"tasker":"cat","payload":{"moved":true}}"#,
        )
        .unwrap();
    }
    fs::rename(&staging, t.join("var/spool/in/org.example")).unwrap();
    let moved = std::time::Instant::now();
    // Taken at once; at worst (no lease) 2 s after they were written.
    wait_for(
        "the moved tasks' records",
        std::time::Duration::from_secs(10),
        || (0..20).all(|i| t.record(&format!("m{i:02}")).is_some()),
    );
    eprintln!("taken {:?} after the rename", moved.elapsed());
    engine.stop();
    for i in 0..20 {
        assert_eq!(t.must_record(&format!("m{i:02}"))["state"], "completed");
    }
}

/// The engine with the safety rescan out of reach, once it watches `in/`
/// (a first task has its record).
fn engine_without_rescan(t: &TestRoot) -> InProcessEngine {
    let engine = t.start_in_process(spoolflow::Options {
        workers: 2,
        rescan: std::time::Duration::from_secs(3600),
        ..spoolflow::Options::default()
    });
    t.drop_task("warm.json", r#"{"domain":"org","tasker":"cat"}"#);
    wait_for("warm's record", DEADLINE, || t.record("warm").is_some());
    engine
}

/// A task file and a cancel request published by a hard link (`link(2)`,
/// as maildir writers do: written whole elsewhere, then linked in) have
/// only a creation event, no close: both are taken at once, nobody having
/// them open for writing, not at the safety rescan (out of reach here).
#[test]
fn a_task_and_a_cancel_published_by_a_hard_link_are_taken_without_the_safety_rescan() {
    let t = TestRoot::new();
    cat_tasker(&t, "org", "cat");
    let gate = t.join("gate");
    t.tasker(
        "org",
        "held",
        &format!(
            "#!/bin/sh\ni=0\nwhile [ ! -e {} ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done\ncat\n",
            gate.display()
        ),
    );
    let engine = engine_without_rescan(&t);
    let staging = t.join("staging");
    fs::create_dir_all(&staging).unwrap();

    fs::write(
        staging.join("linked.json"),
        r#"{"domain":"org","tasker":"cat","payload":{"linked":true}}"#,
    )
    .unwrap();
    fs::hard_link(
        staging.join("linked.json"),
        t.join("var/spool/in/linked.json"),
    )
    .unwrap();
    wait_for("the linked task's record", Duration::from_secs(10), || {
        t.record("linked").is_some()
    });
    let rec = t.must_record("linked");
    assert_eq!(rec["state"], "completed");
    assert_eq!(rec["payload"], json!({"linked": true}));

    t.drop_task("held.json", r#"{"domain":"org","tasker":"held"}"#);
    wait_for("held's start", DEADLINE, || {
        t.point_names("held").iter().any(|n| n == "started")
    });
    fs::write(staging.join("held"), "linked cancel").unwrap();
    fs::hard_link(staging.join("held"), t.join("var/spool/cancel/held")).unwrap();
    wait_for("held's record", Duration::from_secs(10), || {
        t.record("held").is_some()
    });
    let rec = t.must_record("held");
    assert_eq!(rec["state"], "aborted", "{rec}");
    assert!(!gate.exists());
    engine.stop();
}

/// A file made with `O_TMPFILE`, linked into `in/` with `linkat` while
/// its writer still has it open, then closed: left alone while open (it
/// might not be whole), taken once closed, without the safety rescan.
#[test]
fn a_file_linked_in_while_still_open_is_taken_once_closed() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let t = TestRoot::new();
    cat_tasker(&t, "org", "cat");
    let engine = engine_without_rescan(&t);
    let in_dir = t.join("var/spool/in");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o644)
        .open(&in_dir)
        .unwrap();
    f.write_all(br#"{"domain":"org","tasker":"cat","payload":{"tmpfile":1}}"#)
        .unwrap();
    nix::unistd::linkat(
        None,
        Path::new(&format!("/proc/self/fd/{}", f.as_raw_fd())),
        None,
        &in_dir.join("tmpfile.json"),
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
    .expect("linkat");

    // A task dropped after the link: once it is done, the engine has seen
    // the link's event, and left the open file alone.
    t.drop_task("marker.json", r#"{"domain":"org","tasker":"cat"}"#);
    wait_for("marker's record", DEADLINE, || t.record("marker").is_some());
    assert!(t.record("tmpfile").is_none());
    assert!(in_dir.join("tmpfile.json").exists());

    drop(f);
    wait_for("the linked file's record", Duration::from_secs(10), || {
        t.record("tmpfile").is_some()
    });
    assert_eq!(t.must_record("tmpfile")["payload"], json!({"tmpfile": 1}));
    engine.stop();
}
