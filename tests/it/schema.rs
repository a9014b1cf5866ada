//! The published JSON Schemas (`spoolflow schema`, `docs/schemas/`) against
//! what a real run writes: every record, every point, every task file and
//! every `tasker.json` validates; the committed schemas are the generated
//! ones (no drift).
//!
//! To refresh the committed schemas after a change of the model types:
//! `SPOOLFLOW_BLESS=1 cargo test --test it schema_files_do_not_drift`.

use std::fs;
use std::path::{Path, PathBuf};

use jsonschema::Validator;
use serde_json::Value;
use spoolflow::model::schema::Format;
use spoolflow::model::task::{Task, TaskFile};

use crate::common::TestRoot;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The validator of the committed schema of `format`, as a user would load it.
fn committed(format: Format) -> Validator {
    let path = repo().join(format!("docs/schemas/{}.schema.json", format.name()));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("a schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

/// Panics with every error when `value` does not validate.
fn assert_valid(v: &Validator, value: &Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not validate: {errors:?}\n{value:#}"
    );
}

#[test]
fn schema_files_do_not_drift() {
    let bless = std::env::var_os("SPOOLFLOW_BLESS").is_some();
    for format in Format::ALL {
        let path = repo().join(format!("docs/schemas/{}.schema.json", format.name()));
        let generated = format.pretty();
        if bless {
            fs::write(&path, &generated).unwrap();
        }
        let on_disk = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{} differs from `spoolflow schema {}`; refresh it with \
             SPOOLFLOW_BLESS=1 cargo test --test it schema_files_do_not_drift",
            path.display(),
            format.name()
        );
        // What the command prints is the same text.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spoolflow"))
            .args(["schema", format.name()])
            .output()
            .expect("run spoolflow schema");
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), generated);
    }
}

/// Copies the repository's `tsk/` and `examples/tasks/` into the root (the
/// examples' flows list and checksum `examples/tasks`).
fn copy_examples(t: &TestRoot) {
    for rel in ["tsk", "examples/tasks"] {
        for entry in walkdir::WalkDir::new(repo().join(rel)) {
            let entry = entry.unwrap();
            let dst = t.path().join(entry.path().strip_prefix(repo()).unwrap());
            if entry.file_type().is_dir() {
                fs::create_dir_all(&dst).unwrap();
            } else {
                fs::copy(entry.path(), &dst).unwrap();
            }
        }
    }
}

/// Taskers and tasks of the outcomes the examples do not cover: a retry
/// (exit 75), a failure by status, an uncompleted reply, a timeout, a cancel
/// (aborted), informative points, and a flow with an `each` and an error
/// that continues.
fn drop_more(t: &TestRoot) -> Vec<(String, String)> {
    t.tasker("org.more", "tempfail", "#!/bin/sh\nexit 75\n");
    t.tasker("org.more", "crash", "#!/bin/sh\necho broken >&2\nexit 3\n");
    t.tasker(
        "org.more",
        "twice",
        "#!/bin/sh\nif grep -q again; then echo '{\"done\":true}'; \
         else echo '{\"point\":\"uncompleted\",\"payload\":{\"again\":1},\"after\":\"10ms\"}'; fi\n",
    );
    t.tasker("org.more", "slow", "#!/bin/sh\nexec sleep 5\n");
    t.tasker(
        "org.more",
        "chatty",
        "#!/bin/sh\necho '{\"point\":\"progress\",\"done\":0.5}' >> \"$SPOOLFLOW_POINTS\"\n\
         echo '{\"point\":\"refused\",\"reason\":\"not mine\"}'\n",
    );
    t.tasker("org.more", "plain", "#!/bin/sh\ncat\n");
    t.taskmaster(
        "org.more",
        "if task.tasker == \"chatty\" && task.refusals.len() > 0 { _taskee_ = \"plain\"; }",
    );
    let tasks = [
        (
            "m-retry",
            r#"{"domain":"org.more","tasker":"tempfail","retries":1}"#,
        ),
        ("m-crash", r#"{"domain":"org.more","tasker":"crash"}"#),
        (
            "m-twice",
            r#"{"domain":"org.more","tasker":"twice","priority":-2}"#,
        ),
        (
            "m-timeout",
            r#"{"domain":"org.more","tasker":"slow","timeout":"100ms"}"#,
        ),
        ("m-cancel", r#"{"domain":"org.more","tasker":"plain"}"#),
        (
            "m-chatty",
            r#"{"domain":"org.more","tasker":"chatty","headers":{"by":"test"}}"#,
        ),
        (
            "m-flow",
            r#"{"domain":"org.more","flow":{"sequence":[
                {"set":{"xs":[1,2,3]}},
                {"each":"xs","do":{"task":"plain"},"concurrency":2,"into":"ys"},
                {"task":"crash","on_error":"continue"},
                {"if":"payload.ys.len() > 2","then":{"set":{"big":true}}}
            ]}}"#,
        ),
        (
            "m-flow-fails",
            r#"{"domain":"org.more","flow":{"concurrence":[{"task":"crash"},{"task":"plain"}]}}"#,
        ),
    ];
    let mut dropped = Vec::new();
    for (id, json) in tasks {
        t.drop_task(&format!("{id}.json"), json);
        dropped.push((id.to_string(), json.to_string()));
    }
    // A cancel for a task still in in/ is applied when the engine takes it.
    fs::write(t.join("var/spool/cancel/m-cancel"), "no longer wanted").unwrap();
    dropped
}

/// A task file as `spoolflow submit` writes it.
fn submitted(t: &TestRoot) -> (String, Vec<u8>) {
    let out = t
        .cmd()
        .args(["submit", "--domain", "org.more", "--tasker", "plain"])
        .args(["--id", "m-submit", "--priority", "3", r#"{"a":1}"#])
        .output()
        .expect("run spoolflow submit");
    assert!(out.status.success(), "{out:?}");
    let path = t.join("var/spool/in/m-submit.json");
    (
        "m-submit".into(),
        fs::read(path).expect("submit wrote in/m-submit.json"),
    )
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn every_file_a_real_run_writes_validates() {
    let t = TestRoot::new();
    copy_examples(&t);
    let (task_v, record_v, point_v) = (
        committed(Format::Task),
        committed(Format::Record),
        committed(Format::Point),
    );
    // The task files: those dropped, the examples, and what submit writes;
    // also each as the engine rewrites it in run/ (`Task::to_file_json`).
    let mut task_files: Vec<(String, Vec<u8>)> = drop_more(&t)
        .into_iter()
        .map(|(id, json)| (id, json.into_bytes()))
        .collect();
    task_files.push(submitted(&t));
    for p in files_in(&t.join("examples/tasks")) {
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        let bytes = fs::read(&p).unwrap();
        t.drop_bytes("", &format!("{name}.json"), &bytes);
        task_files.push((name, bytes));
    }
    for (name, bytes) in &task_files {
        let value: Value = serde_json::from_slice(bytes).unwrap();
        let Ok(file) = TaskFile::parse(bytes) else {
            assert!(
                !task_v.is_valid(&value),
                "{name}: refused by the engine, not by the schema"
            );
            continue;
        };
        assert_valid(&task_v, &value, &format!("task file {name}"));
        let task = Task::from_file(file, Some(name), None).unwrap();
        assert_valid(
            &task_v,
            &task.to_file_json(),
            &format!("run/ file of {name}"),
        );
    }

    t.run_drain(4);

    let mut records = 0;
    let mut states = std::collections::BTreeSet::new();
    for dir in ["done", "failed"] {
        for p in files_in(&t.join(&format!("var/spool/{dir}"))) {
            let value: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
            assert_valid(&record_v, &value, &p.display().to_string());
            states.insert(value["state"].as_str().unwrap().to_string());
            records += 1;
        }
    }
    assert_eq!(
        states.into_iter().collect::<Vec<_>>(),
        ["aborted", "completed", "failed"],
        "the run produced every final state"
    );
    assert!(records >= 15, "{records} records");

    let mut names = std::collections::BTreeSet::new();
    for p in files_in(&t.join("var/log/tsk")) {
        if p.extension().is_some_and(|e| e == "log") {
            let text = fs::read_to_string(&p).unwrap();
            for (i, line) in text.lines().enumerate() {
                let value: Value = serde_json::from_str(line).unwrap();
                assert_valid(&point_v, &value, &format!("{}:{}", p.display(), i + 1));
                names.insert(value["point"].as_str().unwrap().to_string());
            }
        }
    }
    for expected in [
        "created",
        "offered",
        "allocated",
        "started",
        "refused",
        "uncompleted",
        "retried",
        "completed",
        "failed",
        "aborted",
        "progress",
    ] {
        assert!(names.contains(expected), "no {expected} point in {names:?}");
    }
}

#[test]
fn every_tasker_json_and_example_validates() {
    let tasker_v = committed(Format::Tasker);
    let task_v = committed(Format::Task);
    let mut seen = 0;
    for entry in walkdir::WalkDir::new(repo().join("tsk")) {
        let entry = entry.unwrap();
        if entry.file_name() == "tasker.json" {
            let value: Value = serde_json::from_slice(&fs::read(entry.path()).unwrap()).unwrap();
            assert_valid(&tasker_v, &value, &entry.path().display().to_string());
            seen += 1;
        }
    }
    assert!(seen > 0);
    for p in files_in(&repo().join("examples/tasks")) {
        let bytes = fs::read(&p).unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            task_v.is_valid(&value),
            TaskFile::parse(&bytes).is_ok(),
            "the schema and the engine agree on {}",
            p.display()
        );
    }
}

/// The ```json blocks of a page of docs/.
fn json_blocks(page: &str) -> Vec<String> {
    let text = fs::read_to_string(repo().join("docs").join(page)).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```json") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn the_examples_in_the_docs_validate() {
    let task_v = committed(Format::Task);
    for (page, take) in [("task-files.md", usize::MAX), ("flows.md", 1)] {
        let blocks = json_blocks(page);
        assert!(!blocks.is_empty(), "{page} shows a task file");
        for block in blocks.iter().take(take) {
            TaskFile::parse(block.as_bytes())
                .unwrap_or_else(|e| panic!("{page}: the engine refuses {block}: {e}"));
            let value: Value = serde_json::from_str(block).unwrap();
            assert_valid(&task_v, &value, &format!("{page}: {block}"));
        }
    }
    let tasker_v = committed(Format::Tasker);
    for block in json_blocks("taskers.md") {
        spoolflow::tasker::TaskerConfig::parse(block.as_bytes())
            .unwrap_or_else(|e| panic!("taskers.md: the engine refuses {block}: {e}"));
        let value: Value = serde_json::from_str(&block).unwrap();
        assert_valid(&tasker_v, &value, &format!("taskers.md: {block}"));
    }
    let blocks = json_blocks("records.md");
    let record: Value = serde_json::from_str(&blocks[0]).unwrap();
    serde_json::from_value::<spoolflow::model::task::Record>(record.clone())
        .expect("records.md shows a record the engine reads");
    assert_valid(&committed(Format::Record), &record, "records.md's record");
    let point_v = committed(Format::Point);
    let lines: Vec<&str> = blocks[1].lines().collect();
    assert!(lines.len() >= 5, "records.md shows a points log");
    for line in lines {
        let value: Value = serde_json::from_str(line).unwrap();
        assert_valid(&point_v, &value, &format!("records.md: {line}"));
    }
}
