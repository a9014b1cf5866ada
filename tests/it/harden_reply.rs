//! Issue 15, A2, A3 and the stderr half of A4: a tasker's verdict is its
//! own, whatever it leaves behind and however late the engine looks.
//!
//! - A2: a tasker that replies and then leaves a detached child (`setsid`)
//!   holding its stderr or its stdout is judged by the reply it wrote before
//!   it exited, without waiting for the child.
//! - A3: a tasker that exited before its run timeout, while the engine was
//!   stopped (SIGSTOP) past that timeout, is judged by its exit, not timed
//!   out.
//! - A4: a tasker's `.err` file keeps the beginning and the end of a flood
//!   of stderr, with a line saying how many bytes were cut between them.
//!
//! All through the built binary, with real processes and signals.

use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::common::{process_gone, wait_file, wait_for, TestRoot, DEADLINE};

// ------------------------------------------------------------------ A2

/// Runs one task `a` (payload `{"in":1}`) with a tasker of body `body`
/// through `spoolflow run --drain`; returns its record and how long the
/// engine took.
fn run_detaching(body: &str) -> (Value, Duration) {
    let t = TestRoot::new();
    t.tasker("org", "t", &format!("#!/bin/sh\ncat >/dev/null\n{body}\n"));
    t.drop_task(
        "a.json",
        r#"{"domain":"org","tasker":"t","payload":{"in":1}}"#,
    );
    let began = Instant::now();
    let engine = t.spawn_engine(&["--drain"]);
    let (code, err) = engine.wait(DEADLINE);
    let took = began.elapsed();
    assert_eq!(code, Some(0), "{err}");
    (t.must_record("a"), took)
}

/// The detached child must not hold the task for its 20 s (the engine
/// gives a tasker's pipes 2 s after it exits, then kills its group and
/// gives 2 s more).
fn assert_quick(took: Duration) {
    assert!(
        took < Duration::from_secs(15),
        "the engine waited {took:?} for a detached child"
    );
}

fn assert_failed_by_reply(rec: &Value) {
    assert_eq!(rec["state"], "failed", "{rec:#}");
    assert_eq!(rec["error"]["kind"], "user", "{rec:#}");
    assert_eq!(rec["error"]["message"], "the work failed", "{rec:#}");
}

#[test]
fn a_failed_reply_stands_when_a_detached_child_holds_stderr() {
    let (rec, took) = run_detaching(
        "echo '{\"point\":\"failed\",\"reason\":\"the work failed\"}'\nsetsid sleep 20 >/dev/null &",
    );
    assert_failed_by_reply(&rec);
    assert_quick(took);
}

#[test]
fn a_failed_reply_stands_when_a_detached_child_holds_stdout() {
    let (rec, took) = run_detaching(
        "echo '{\"point\":\"failed\",\"reason\":\"the work failed\"}'\nsetsid sleep 20 2>/dev/null &",
    );
    assert_failed_by_reply(&rec);
    assert_quick(took);
}

#[test]
fn a_completed_reply_keeps_its_payload_when_a_detached_child_holds_stdout() {
    let (rec, took) = run_detaching(
        "echo '{\"point\":\"completed\",\"payload\":{\"out\":2}}'\nsetsid sleep 20 2>/dev/null &",
    );
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"out": 2}), "{rec:#}");
    assert_quick(took);
}

/// A detached child that keeps writing to the stderr it was left, as fast
/// as it can: the engine never stalls on the flood, and ends the task by
/// its reply. (Whether the flood is under way when the engine first reads
/// after the exit is left to timing; the bound on that read is shown by
/// `tasker::pipes::tests::a_pipe_that_keeps_filling_is_read_only_up_to_a_bound`.)
#[test]
fn a_reply_stands_when_a_detached_child_floods_stderr() {
    let (rec, took) = run_detaching(
        "echo '{\"point\":\"completed\",\"payload\":{\"out\":2}}'\nsetsid yes flood >&2 &",
    );
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"out": 2}), "{rec:#}");
    assert_quick(took);
}

// ------------------------------------------------------------------ A3

#[test]
fn taskers_that_exited_in_time_are_judged_by_their_exit_after_a_stalled_engine() {
    const TASKS: usize = 6;
    const TIMEOUT: Duration = Duration::from_secs(2);
    let t = TestRoot::new();
    // Each tasker says it began, waits for the gate `go`, replies, and
    // leaves its pid in `done.<id>` as its last act before it exits.
    t.tasker(
        "org",
        "t",
        &format!(
            r#"#!/bin/sh
cat >/dev/null
: > "$SPOOLFLOW_ROOT/begun.$SPOOLFLOW_ID"
{gate}
echo '{{"point":"completed","payload":{{"replied":true}}}}'
echo $$ > "$SPOOLFLOW_ROOT/.done.$SPOOLFLOW_ID" && mv "$SPOOLFLOW_ROOT/.done.$SPOOLFLOW_ID" "$SPOOLFLOW_ROOT/done.$SPOOLFLOW_ID"
"#,
            gate = wait_file("go")
        ),
    );
    let ids: Vec<String> = (0..TASKS).map(|i| format!("s{i}")).collect();
    for id in &ids {
        t.drop_task(
            &format!("{id}.json"),
            r#"{"domain":"org","tasker":"t","timeout":"2s"}"#,
        );
    }
    let engine = t.spawn_engine(&["--drain", "--workers", &TASKS.to_string()]);
    wait_for("every tasker to begin", DEADLINE, || {
        ids.iter().all(|id| t.join(&format!("begun.{id}")).exists())
    });
    // Every run timeout was armed before its tasker began, so before now.
    engine.signal(Signal::SIGSTOP);
    let stopped_at = Instant::now();
    fs::write(t.join("go"), "").unwrap();
    // Each tasker finishes while the engine is stopped: it wrote its
    // reply, then its pid, then exited (a zombie nobody can reap yet).
    wait_for("every tasker to finish", DEADLINE, || {
        ids.iter().all(|id| t.join(&format!("done.{id}")).exists())
    });
    for id in &ids {
        let pid: i32 = fs::read_to_string(t.join(&format!("done.{id}")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_for(&format!("the tasker of {id} to exit"), DEADLINE, || {
            process_gone(pid)
        });
    }
    // The engine stays stopped until every run timeout is behind it: it
    // cannot act while stopped, so this races nothing.
    wait_for("the run timeouts to pass", DEADLINE, || {
        stopped_at.elapsed() > TIMEOUT + Duration::from_millis(500)
    });
    engine.signal(Signal::SIGCONT);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    for id in &ids {
        let rec = t.must_record(id);
        assert_eq!(rec["state"], "completed", "{id}: {rec:#}");
        assert_eq!(rec["payload"], json!({"replied": true}), "{id}: {rec:#}");
    }
}

// ------------------------------------------------------------------ A4

#[test]
fn a_flood_of_stderr_keeps_its_beginning_and_end_and_says_what_was_cut() {
    use spoolflow::tasker::stderr::{ERR_HEAD, ERR_TAIL};
    const LINES: usize = 20_000;
    const WIDTH: usize = 1000;
    let t = TestRoot::new();
    t.tasker(
        "org",
        "loud",
        &format!(
            "#!/bin/sh\necho 'the first line' >&2\n{{ head -c {} /dev/zero | tr '\\0' x | fold -w {WIDTH}; echo; }} >&2\necho 'the last line' >&2\necho '{{}}'\n",
            LINES * WIDTH
        ),
    );
    t.drop_task("n.json", r#"{"domain":"org","tasker":"loud"}"#);
    let engine = t.spawn_engine(&["--drain"]);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(t.must_record("n")["state"], "completed");

    let text = fs::read_to_string(t.join("var/log/tsk/n.err")).unwrap();
    let written = "n: the first line\n".len()
        + LINES * ("n: ".len() + WIDTH + 1)
        + "n: the last line\n".len();
    assert!(
        text.len() <= ERR_HEAD + ERR_TAIL + 200,
        "the .err file holds {} bytes",
        text.len()
    );
    assert!(
        text.starts_with("n: the first line\nn: xxx"),
        "its beginning: {:?}",
        &text[..text.len().min(100)]
    );
    assert!(
        text.ends_with("xxx\nn: the last line\n"),
        "its end: {:?}",
        &text[text.len().saturating_sub(300)..]
    );
    // Whole lines on either side of one line that says what was cut.
    let cut_lines: Vec<&str> = text.lines().filter(|l| l.contains("cut here")).collect();
    assert_eq!(cut_lines.len(), 1, "{cut_lines:?}");
    let cut_line = cut_lines[0];
    for line in text.lines().filter(|l| *l != cut_line) {
        assert!(
            line == "n: the first line"
                || line == "n: the last line"
                || line.len() == "n: ".len() + WIDTH,
            "a line cut in the middle: {:?}",
            &line[..line.len().min(80)]
        );
    }
    let cut: usize = cut_line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no count in {cut_line:?}"));
    assert_eq!(
        written,
        text.len() - cut_line.len() - 1 + cut,
        "kept plus cut is what the tasker wrote: {cut_line:?}"
    );
}
