//! What one run of a tasker came to (SPEC 6): its exit (spawn failure,
//! wait status, timeout, oversized reply, a stop the engine asked for) and,
//! on exit status 0, its reply, read by the reply table. Pure: no file,
//! clock or process; the retry and limit rules that follow an outcome are
//! in [`super::policy`].

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::Signal;

use crate::model::task::{Dur, ErrorKind, Object, TaskError};
use crate::tasker::{parse_reply, Exit, Reply, StopReason, REPLY_LIMIT};

/// What one run of a tasker came to, before policy (retries, limits) applies.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Completed, with the new payload.
    Completed(Object),
    /// The tasker refused the task (it goes back to the taskmaster).
    Refused(String),
    /// Some work done, more expected: queue again with this payload, after `after`.
    Uncompleted { payload: Object, after: Option<Dur> },
    /// The attempt failed with this error (policy decides: retry or fail).
    Error(TaskError),
    /// The engine stopped it: `Cancel` -> the task is aborted, `Shutdown` ->
    /// left in `run/` for the next start.
    Stopped(StopReason),
}

/// The outcome of one run.
///
/// `exit`: how the process ended. `asked`: a stop the engine asked for
/// (possibly before the process handle existed). For a tasker that
/// exited, only the `stopped` of [`Exit::Exited`] counts: its driver tells
/// whether the stop reached the tasker before its exit; one that came
/// later (the tasker exited first, on its own) changes nothing. `payload`: the input payload (kept by an
/// empty reply). `timeout`: the effective run timeout, for the message
/// "run timed out after {t}".
///
/// The rules apply in this order: a stop asked while the tasker was being
/// spawned, if the spawn failed (nothing ran: a cancel accepted then still
/// aborts the task, SPEC 8), a spawn failure, a stop, the run timeout, an
/// oversized reply, the exit status, and last the reply.
pub fn outcome(
    exit: Exit,
    asked: Option<StopReason>,
    payload: &Object,
    timeout: Option<Dur>,
) -> Outcome {
    let (status, stdout, oversized, stderr_tail, timed_out, stopped) = match exit {
        Exit::SpawnFailed { message, transient } => {
            if let Some(reason) = asked {
                return Outcome::Stopped(reason);
            }
            // A resource shortage is worth a retry; a missing or
            // non-executable program is not.
            let kind = if transient {
                ErrorKind::Work
            } else {
                ErrorKind::Config
            };
            return Outcome::Error(TaskError::new(kind, message));
        }
        // A stop the engine asked for wins: the cluster ended the job
        // because the engine cancelled it.
        Exit::Lost { kind, message } => {
            return match asked {
                Some(reason) => Outcome::Stopped(reason),
                None => Outcome::Error(TaskError::new(kind, message)),
            }
        }
        Exit::Exited {
            status,
            stdout,
            oversized,
            stderr_tail,
            timed_out,
            stopped,
        } => (status, stdout, oversized, stderr_tail, timed_out, stopped),
    };
    // The driver tells whether the stop reached the tasker before it
    // exited. One asked after its exit (while its pipes lingered, or on
    // the way) keeps a completed reply; any other end (a failure, a
    // refusal, `uncompleted`, each of which would run it again) yields to
    // the stop, as a cancel accepted for a running task must end it.
    if let Some(reason) = stopped {
        return Outcome::Stopped(reason);
    }
    match judged(
        status,
        &stdout,
        oversized,
        &stderr_tail,
        timed_out,
        payload,
        timeout,
    ) {
        Outcome::Completed(payload) => Outcome::Completed(payload),
        other => asked.map_or(other, Outcome::Stopped),
    }
}

/// How a tasker that exited on its own ended: its timeout, an oversized
/// reply, its exit status, and last its reply.
fn judged(
    status: ExitStatus,
    stdout: &[u8],
    oversized: bool,
    stderr_tail: &[String],
    timed_out: bool,
    payload: &Object,
    timeout: Option<Dur>,
) -> Outcome {
    if timed_out {
        let t = timeout.map(|d| d.to_string()).unwrap_or_default();
        return Outcome::Error(TaskError::new(
            ErrorKind::Timeout,
            format!("run timed out after {t}"),
        ));
    }
    if oversized {
        return Outcome::Error(TaskError::new(
            ErrorKind::User,
            format!("reply larger than {REPLY_LIMIT} bytes"),
        ));
    }
    if let Some(err) = status_error(status, stderr_tail) {
        return Outcome::Error(err);
    }
    match parse_reply(stdout, payload) {
        Reply::Completed(payload) => Outcome::Completed(payload),
        Reply::Failed(reason) | Reply::Invalid(reason) => {
            Outcome::Error(TaskError::new(ErrorKind::User, reason))
        }
        Reply::Refused(reason) => Outcome::Refused(reason),
        Reply::Uncompleted { payload, after } => Outcome::Uncompleted { payload, after },
    }
}

/// The error of a wait status other than 0, with the last lines of stderr:
/// 75 (EX_TEMPFAIL) is `work`, any other code `user`, a signal `work`.
fn status_error(status: ExitStatus, stderr_tail: &[String]) -> Option<TaskError> {
    let tail = if stderr_tail.is_empty() {
        String::new()
    } else {
        format!(": {}", stderr_tail.join(" | "))
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => None,
        (Some(75), _) => Some(TaskError::new(
            ErrorKind::Work,
            format!("exit status 75 (temporary failure){tail}"),
        )),
        (Some(n), _) => Some(TaskError::new(
            ErrorKind::User,
            format!("exit status {n}{tail}"),
        )),
        (None, sig) => {
            let name = sig
                .and_then(|s| Signal::try_from(s).ok())
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|| "an unknown signal".into());
            Some(TaskError::new(
                ErrorKind::Work,
                format!("killed by {name}{tail}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::time::Duration;

    fn obj(v: Value) -> Object {
        v.as_object().expect("a JSON object").clone()
    }

    fn input() -> Object {
        obj(json!({"book": "moby-dick"}))
    }

    /// A process that exited with `code`, wrote `stdout` and `tail` on stderr.
    fn exited(code: i32, stdout: &[u8], tail: &[&str]) -> Exit {
        Exit::Exited {
            status: ExitStatus::from_raw(code << 8),
            stdout: stdout.to_vec(),
            oversized: false,
            stderr_tail: tail.iter().map(|s| s.to_string()).collect(),
            timed_out: false,
            stopped: None,
        }
    }

    /// A process killed by signal `sig`.
    fn killed(sig: i32, tail: &[&str]) -> Exit {
        Exit::Exited {
            status: ExitStatus::from_raw(sig),
            stdout: Vec::new(),
            oversized: false,
            stderr_tail: tail.iter().map(|s| s.to_string()).collect(),
            timed_out: false,
            stopped: None,
        }
    }

    /// The outcome of a reply on exit status 0.
    fn reply(stdout: &[u8]) -> Outcome {
        outcome(exited(0, stdout, &[]), None, &input(), None)
    }

    fn error(kind: ErrorKind, message: &str) -> Outcome {
        Outcome::Error(TaskError::new(kind, message))
    }

    fn secs(s: u64) -> Option<Dur> {
        Some(Dur(Duration::from_secs(s)))
    }

    // ---------------------------------------------------- reply table (SPEC 6)

    #[test]
    fn empty_reply_completes_with_the_payload_unchanged() {
        assert_eq!(reply(b""), Outcome::Completed(input()));
        assert_eq!(reply(b" \n\t"), Outcome::Completed(input()));
    }

    #[test]
    fn object_without_point_completes_with_it_as_the_payload() {
        assert_eq!(
            reply(br#"{"stamped":true}"#),
            Outcome::Completed(obj(json!({"stamped": true})))
        );
    }

    #[test]
    fn completed_point_completes_with_its_payload() {
        assert_eq!(
            reply(br#"{"point":"completed","payload":{"n":2}}"#),
            Outcome::Completed(obj(json!({"n": 2})))
        );
        // Without a payload, the input payload stands.
        assert_eq!(
            reply(br#"{"point":"completed"}"#),
            Outcome::Completed(input())
        );
    }

    #[test]
    fn failed_point_is_a_user_error_with_its_reason() {
        assert_eq!(
            reply(br#"{"point":"failed","reason":"no ink"}"#),
            error(ErrorKind::User, "no ink")
        );
        assert_eq!(
            reply(br#"{"point":"failed"}"#),
            error(ErrorKind::User, "no reason given")
        );
    }

    #[test]
    fn refused_point_goes_back_to_the_taskmaster() {
        assert_eq!(
            reply(br#"{"point":"refused","reason":"busy"}"#),
            Outcome::Refused("busy".into())
        );
    }

    #[test]
    fn uncompleted_point_queues_again_with_its_payload_and_after() {
        assert_eq!(
            reply(br#"{"point":"uncompleted","payload":{"page":3},"after":"30s"}"#),
            Outcome::Uncompleted {
                payload: obj(json!({"page": 3})),
                after: secs(30),
            }
        );
        assert_eq!(
            reply(br#"{"point":"uncompleted"}"#),
            Outcome::Uncompleted {
                payload: input(),
                after: None,
            }
        );
    }

    #[test]
    fn anything_else_is_a_user_error_naming_the_problem() {
        assert_eq!(
            reply(br#"{"point":"exploded"}"#),
            error(ErrorKind::User, "reply names unknown point \"exploded\"")
        );
        assert_eq!(
            reply(b"[1,2]"),
            error(ErrorKind::User, "reply is JSON but not an object")
        );
        assert_eq!(
            reply(br#"{"point":"completed","payload":"x"}"#),
            error(ErrorKind::User, "reply's \"payload\" is not a JSON object")
        );
        let Outcome::Error(e) = reply(b"hello") else {
            panic!("not JSON is an error");
        };
        assert_eq!(e.kind, ErrorKind::User);
        assert!(
            e.message.starts_with("reply is not JSON ("),
            "{}",
            e.message
        );
        assert!(e.message.ends_with(": \"hello\""), "{}", e.message);
    }

    // ---------------------------------------------------- exit status (SPEC 6)

    #[test]
    fn non_zero_exit_is_a_user_error_with_the_status_and_stderr_tail() {
        assert_eq!(
            outcome(exited(3, b"", &[]), None, &input(), None),
            error(ErrorKind::User, "exit status 3")
        );
        assert_eq!(
            outcome(
                exited(1, b"", &["no such book", "giving up"]),
                None,
                &input(),
                None
            ),
            error(ErrorKind::User, "exit status 1: no such book | giving up")
        );
    }

    #[test]
    fn non_zero_exit_ignores_the_reply() {
        assert_eq!(
            outcome(exited(2, br#"{"ok":true}"#, &[]), None, &input(), None),
            error(ErrorKind::User, "exit status 2")
        );
    }

    #[test]
    fn exit_75_is_a_work_error() {
        assert_eq!(
            outcome(exited(75, b"", &[]), None, &input(), None),
            error(ErrorKind::Work, "exit status 75 (temporary failure)")
        );
        assert_eq!(
            outcome(exited(75, b"", &["db locked"]), None, &input(), None),
            error(
                ErrorKind::Work,
                "exit status 75 (temporary failure): db locked"
            )
        );
    }

    #[test]
    fn killed_by_a_signal_is_a_work_error_naming_it() {
        assert_eq!(
            outcome(killed(9, &[]), None, &input(), None),
            error(ErrorKind::Work, "killed by SIGKILL")
        );
        assert_eq!(
            outcome(killed(11, &["oops"]), None, &input(), None),
            error(ErrorKind::Work, "killed by SIGSEGV: oops")
        );
        // A core dump (0x80) changes nothing.
        assert_eq!(
            outcome(killed(6 | 0x80, &[]), None, &input(), None),
            error(ErrorKind::Work, "killed by SIGABRT")
        );
    }

    #[test]
    fn killed_by_a_signal_without_a_name() {
        // A real-time signal has no name in nix's Signal.
        assert_eq!(
            outcome(killed(34, &[]), None, &input(), None),
            error(ErrorKind::Work, "killed by an unknown signal")
        );
    }

    #[test]
    fn exit_0_ignores_the_stderr_tail() {
        assert_eq!(
            outcome(exited(0, b"", &["a warning"]), None, &input(), None),
            Outcome::Completed(input())
        );
    }

    // ---------------------------------------------------- spawn failures

    #[test]
    fn transient_spawn_failure_is_a_work_error() {
        let exit = Exit::SpawnFailed {
            message: "cannot spawn \"x\": resource temporarily unavailable".into(),
            transient: true,
        };
        assert_eq!(
            outcome(exit, None, &input(), None),
            error(
                ErrorKind::Work,
                "cannot spawn \"x\": resource temporarily unavailable"
            )
        );
    }

    #[test]
    fn permanent_spawn_failure_is_a_config_error() {
        let exit = Exit::SpawnFailed {
            message: "cannot spawn \"x\": permission denied".into(),
            transient: false,
        };
        assert_eq!(
            outcome(exit, None, &input(), None),
            error(ErrorKind::Config, "cannot spawn \"x\": permission denied")
        );
    }

    #[test]
    fn a_stop_asked_while_spawning_wins_over_the_spawn_failing() {
        // A cancel accepted while the spawn was under way aborts the task
        // (SPEC 8) instead of retrying it (transient) or failing it.
        for (transient, reason) in [
            (true, StopReason::Cancel),
            (false, StopReason::Cancel),
            (true, StopReason::Shutdown),
        ] {
            let exit = Exit::SpawnFailed {
                message: "cannot spawn".into(),
                transient,
            };
            assert_eq!(
                outcome(exit, Some(reason), &input(), None),
                Outcome::Stopped(reason)
            );
        }
    }

    // ---------------------------------------------------- stops

    fn stopped_exit(stopped: Option<StopReason>) -> Exit {
        // What a stopped tasker looks like: killed by SIGTERM, maybe past
        // its timeout, with a reply.
        Exit::Exited {
            status: ExitStatus::from_raw(15),
            stdout: br#"{"ok":true}"#.to_vec(),
            oversized: true,
            stderr_tail: vec!["terminated".into()],
            timed_out: true,
            stopped,
        }
    }

    #[test]
    fn stopped_by_the_engine_is_a_stop_not_an_error() {
        for reason in [StopReason::Cancel, StopReason::Shutdown] {
            assert_eq!(
                outcome(stopped_exit(Some(reason)), None, &input(), secs(1)),
                Outcome::Stopped(reason)
            );
        }
    }

    #[test]
    fn a_stop_that_reached_the_tasker_only_after_its_exit_changes_nothing() {
        for reason in [StopReason::Cancel, StopReason::Shutdown] {
            // The driver saw the exit first (it did not pass the stop on):
            // a completed reply stands; any other end yields to the stop
            // (it would run the task again).
            assert_eq!(
                outcome(exited(0, b"", &[]), Some(reason), &input(), None),
                Outcome::Completed(input())
            );
            for other in [
                exited(3, b"", &[]),
                exited(75, b"", &[]),
                exited(0, br#"{"point":"refused","reason":"busy"}"#, &[]),
                exited(
                    0,
                    br#"{"point":"uncompleted","payload":{},"after":"1s"}"#,
                    &[],
                ),
            ] {
                assert_eq!(
                    outcome(other, Some(reason), &input(), None),
                    Outcome::Stopped(reason)
                );
            }
            assert!(matches!(
                outcome(exited(3, b"", &[]), None, &input(), None),
                Outcome::Error(_)
            ));
            // The stop reached it: a stop, whatever its exit.
            assert_eq!(
                outcome(stopped_exit(Some(reason)), Some(reason), &input(), secs(1)),
                Outcome::Stopped(reason)
            );
        }
    }

    #[test]
    fn stopped_wins_over_asked() {
        assert_eq!(
            outcome(
                stopped_exit(Some(StopReason::Shutdown)),
                Some(StopReason::Cancel),
                &input(),
                None
            ),
            Outcome::Stopped(StopReason::Shutdown)
        );
        assert_eq!(
            outcome(
                stopped_exit(Some(StopReason::Cancel)),
                Some(StopReason::Shutdown),
                &input(),
                None
            ),
            Outcome::Stopped(StopReason::Cancel)
        );
    }

    // ---------------------------------------------------- timeout, oversized

    fn timed_out_exit() -> Exit {
        Exit::Exited {
            status: ExitStatus::from_raw(15),
            stdout: Vec::new(),
            oversized: true,
            stderr_tail: vec!["terminated".into()],
            timed_out: true,
            stopped: None,
        }
    }

    #[test]
    fn run_timeout_is_a_timeout_error_naming_the_timeout() {
        assert_eq!(
            outcome(timed_out_exit(), None, &input(), secs(30)),
            error(ErrorKind::Timeout, "run timed out after 30s")
        );
        assert_eq!(
            outcome(
                timed_out_exit(),
                None,
                &input(),
                Some(Dur(Duration::from_millis(250)))
            ),
            error(ErrorKind::Timeout, "run timed out after 250ms")
        );
    }

    #[test]
    fn run_timeout_without_a_timeout_has_an_empty_duration() {
        // As today: the message ends with "after ".
        assert_eq!(
            outcome(timed_out_exit(), None, &input(), None),
            error(ErrorKind::Timeout, "run timed out after ")
        );
    }

    #[test]
    fn oversized_reply_is_a_user_error() {
        let exit = Exit::Exited {
            status: ExitStatus::from_raw(9),
            stdout: b"{".to_vec(),
            oversized: true,
            stderr_tail: vec!["x".into()],
            timed_out: false,
            stopped: None,
        };
        assert_eq!(
            outcome(exit, None, &input(), None),
            error(ErrorKind::User, "reply larger than 16777216 bytes")
        );
    }
}
