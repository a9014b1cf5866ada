//! SPEC 8 and 10 through the built binary, with a real `kill -9`: a cancel
//! the engine accepted is not lost when the engine dies before the
//! task's `aborted` record is durable. The request stays in `cancel/`
//! until then, so the next start applies it again.

use std::fs;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::*;

/// `held`: the first run notes its pid in `held-pid`, and on SIGTERM
/// notes `termed` and holds on (at most ~30 s; the engine runs with a
/// longer kill grace, so only the test ends it). A later run replies at
/// once: a run again would complete the task.
const HELD: &str = r#"#!/bin/sh
cat >/dev/null
r="$SPOOLFLOW_ROOT"
echo run >> "$r/runs"
if [ -e "$r/held-pid" ]; then echo '{"ran":"again"}'; exit 0; fi
trap 'touch "$r/termed"' TERM
echo $$ > "$r/held-pid.tmp"; mv "$r/held-pid.tmp" "$r/held-pid"
i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
exit 1
"#;

#[test]
fn a_cancel_accepted_before_a_kill_9_is_applied_at_the_next_start() {
    let t = TestRoot::new();
    t.tasker("org", "held", HELD);
    t.drop_task("c1.json", r#"{"domain":"org","tasker":"held"}"#);
    let engine = t.spawn_engine(&["--workers", "1", "--kill-grace", "60s"]);
    wait_for("the tasker to run", DEADLINE, || {
        t.join("held-pid").exists()
    });
    let cancel = t.join("var/spool/cancel");
    fs::write(cancel.join(".c1.tmp"), "stop it").unwrap();
    fs::rename(cancel.join(".c1.tmp"), cancel.join("c1")).unwrap();
    // The engine stopped the tasker (SIGTERM); it holds on, so no record.
    wait_for("the tasker to get SIGTERM", DEADLINE, || {
        t.join("termed").exists()
    });
    assert!(t.record("c1").is_none());
    assert_eq!(
        t.list("var/spool/cancel"),
        ["c1"],
        "the request stays until the record is durable"
    );
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    let pid: i32 = fs::read_to_string(t.join("held-pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);

    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "1"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    let rec = t.must_record("c1");
    assert_eq!(rec["state"], "aborted", "{rec:#}");
    assert_eq!(rec["error"]["kind"], "aborted");
    assert_eq!(rec["error"]["message"], "stop it");
    assert_eq!(
        fs::read_to_string(t.join("runs")).unwrap().lines().count(),
        1,
        "the cancelled task never ran again"
    );
    assert!(t.list("var/spool/cancel").is_empty());
    assert!(t.list("var/spool/rejected").is_empty());
}
