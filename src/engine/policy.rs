//! What follows an outcome (SPEC 7): a node's effective options (the task
//! file over `tasker.json` over defaults), retries with their backoff, the
//! refusal rules, the limit on `uncompleted` replies in a row, and the
//! `start_timeout`. Pure: no file, clock or process (elapsed time is
//! passed in); the engine keeps the counts and acts on the decisions.

use std::time::Duration;

use crate::model::names::Taskee;
use crate::model::task::{Dur, ErrorKind, Refusal, TaskError, TaskOptions};
use crate::tasker::TaskerConfig;

/// Refusals after which a task fails `refused` (SPEC 7).
pub const MAX_REFUSALS: usize = 10;
/// `uncompleted` replies in a row after which a task fails `user` (SPEC 7).
pub const MAX_UNCOMPLETED: u32 = 100;
/// `retries` when neither the task nor its tasker sets it (SPEC 7).
pub const DEFAULT_RETRIES: u32 = 3;

/// A node's options once its tasker is known: the task file over
/// `tasker.json` over defaults. Computed once, at allocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effective {
    /// One run's bound; none by default.
    pub timeout: Option<Dur>,
    /// From `created` to `started`; none by default.
    pub start_timeout: Option<Dur>,
    /// Retries of `work` (and, with `retry_on_timeout`, `timeout`) errors.
    pub retries: u32,
    pub retry_on_timeout: bool,
}

impl Effective {
    /// The task's options over its tasker's config over the defaults.
    pub fn of(task: &TaskOptions, config: &TaskerConfig) -> Effective {
        Effective {
            timeout: task.timeout.or(config.timeout),
            start_timeout: task.start_timeout.or(config.start_timeout),
            retries: task.retries.or(config.retries).unwrap_or(DEFAULT_RETRIES),
            retry_on_timeout: task
                .retry_on_timeout
                .or(config.retry_on_timeout)
                .unwrap_or(false),
        }
    }

    /// Before a tasker is known: the task's own options over defaults.
    pub fn of_task(task: &TaskOptions) -> Effective {
        Effective::of(task, &TaskerConfig::default())
    }
}

impl Default for Effective {
    /// The defaults alone (SPEC 7): no timeouts, 3 retries, no retry on
    /// timeout.
    fn default() -> Effective {
        Effective::of_task(&TaskOptions::default())
    }
}

/// What follows a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterError {
    /// A new attempt after `delay`; `error` is the reason for the
    /// `retried` point.
    Retry { delay: Duration, error: TaskError },
    /// The task fails for good with this error.
    Fail(TaskError),
}

/// Whether a failed attempt is retried (SPEC 7). `retries_done`: retries
/// already used. `work` is retried while `retries_done < retries`, after
/// `backoff(retries_done + 1)`; `timeout` likewise, only with
/// `retry_on_timeout`; `user`, `config`, `refused` and `aborted` never.
pub fn after_error(err: TaskError, retries_done: u32, eff: &Effective) -> AfterError {
    let retryable = match err.kind {
        ErrorKind::Work => true,
        ErrorKind::Timeout => eff.retry_on_timeout,
        ErrorKind::User | ErrorKind::Config | ErrorKind::Refused | ErrorKind::Aborted => false,
    };
    if !retryable || retries_done >= eff.retries {
        return AfterError::Fail(err);
    }
    AfterError::Retry {
        delay: backoff(retries_done.saturating_add(1)),
        error: err,
    }
}

/// The delay before retry number `retry` (1 for the first): 1 s, 2 s, 4 s
/// … capped at 5 min.
pub fn backoff(retry: u32) -> Duration {
    let exp = retry.saturating_sub(1).min(20);
    Duration::from_secs((1u64 << exp).min(300))
}

/// The re-offer rule (SPEC 7): offering a task to a taskee that refused it
/// already fails the task (`refused`), naming that taskee's (first) reason.
pub fn check_offer(taskee: &Taskee, refusals: &[Refusal]) -> Result<(), TaskError> {
    match refusals.iter().find(|r| r.taskee == *taskee) {
        Some(r) => Err(TaskError::new(
            ErrorKind::Refused,
            format!("offered again to {taskee}, which refused it: {}", r.reason),
        )),
        None => Ok(()),
    }
}

/// After a refusal was added (last in `refusals`): the error once
/// [`MAX_REFUSALS`] are reached.
pub fn after_refusal(refusals: &[Refusal]) -> Option<TaskError> {
    let n = refusals.len();
    let last = refusals.last()?;
    (n >= MAX_REFUSALS).then(|| {
        TaskError::new(
            ErrorKind::Refused,
            format!(
                "refused {n} times; last by {}: {}",
                last.taskee, last.reason
            ),
        )
    })
}

/// After an `uncompleted` reply, `in_a_row` counting it: the error at
/// [`MAX_UNCOMPLETED`]. The row is broken (the count goes back to 0) by a
/// completion, a refusal or a failed attempt.
pub fn after_uncompleted(in_a_row: u32) -> Option<TaskError> {
    (in_a_row >= MAX_UNCOMPLETED).then(|| {
        TaskError::new(
            ErrorKind::User,
            format!("{in_a_row} uncompleted replies in a row"),
        )
    })
}

/// `start_timeout` bounds the time from `created` to `started` (SPEC 7).
/// Given how long ago the task was created: the time left, or the error if
/// it has passed already (at exactly `start_timeout`, it has).
pub fn start_time_left(start_timeout: Dur, elapsed: Duration) -> Result<Duration, TaskError> {
    if elapsed >= start_timeout.0 {
        return Err(start_timed_out(Some(start_timeout)));
    }
    Ok(start_timeout.0 - elapsed)
}

/// The error of a start timeout that fired (`timeout`). Without a
/// `start_timeout` the duration is empty, as today.
pub fn start_timed_out(start_timeout: Option<Dur>) -> TaskError {
    let st = start_timeout.map(|d| d.to_string()).unwrap_or_default();
    TaskError::new(
        ErrorKind::Timeout,
        format!("not started within start_timeout {st}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Option<Dur> {
        Some(Dur(Duration::from_secs(s)))
    }

    fn taskee(name: &str) -> Taskee {
        name.parse().expect("a valid taskee")
    }

    fn refusal(by: &str, reason: &str) -> Refusal {
        Refusal {
            taskee: taskee(by),
            reason: reason.into(),
        }
    }

    fn err(kind: ErrorKind) -> TaskError {
        TaskError::new(kind, "it broke")
    }

    fn eff(retries: u32, retry_on_timeout: bool) -> Effective {
        Effective {
            timeout: None,
            start_timeout: None,
            retries,
            retry_on_timeout,
        }
    }

    fn retry(delay_secs: u64, kind: ErrorKind) -> AfterError {
        AfterError::Retry {
            delay: Duration::from_secs(delay_secs),
            error: err(kind),
        }
    }

    // ---------------------------------------------------- effective options

    fn full_task() -> TaskOptions {
        TaskOptions {
            timeout: secs(1),
            start_timeout: secs(2),
            retries: Some(7),
            retry_on_timeout: Some(true),
        }
    }

    fn full_config() -> TaskerConfig {
        TaskerConfig {
            timeout: secs(10),
            start_timeout: secs(20),
            retries: Some(5),
            retry_on_timeout: Some(true),
            ..TaskerConfig::default()
        }
    }

    #[test]
    fn defaults_without_task_or_config_options() {
        let e = Effective::of(&TaskOptions::default(), &TaskerConfig::default());
        assert_eq!(e, eff(DEFAULT_RETRIES, false));
        assert_eq!(e.retries, 3);
        assert_eq!(Effective::default(), e);
        assert_eq!(Effective::of_task(&TaskOptions::default()), e);
    }

    #[test]
    fn task_options_win_over_the_config() {
        let e = Effective::of(&full_task(), &full_config());
        assert_eq!(
            e,
            Effective {
                timeout: secs(1),
                start_timeout: secs(2),
                retries: 7,
                retry_on_timeout: true,
            }
        );
    }

    #[test]
    fn config_wins_over_defaults() {
        let e = Effective::of(&TaskOptions::default(), &full_config());
        assert_eq!(
            e,
            Effective {
                timeout: secs(10),
                start_timeout: secs(20),
                retries: 5,
                retry_on_timeout: true,
            }
        );
    }

    /// The field of `Effective` that `pick` reads, for: the task and the
    /// config both set it, only the config sets it, neither does.
    fn three_ways<T>(
        task: TaskOptions,
        config: TaskerConfig,
        pick: impl Fn(Effective) -> T,
    ) -> (T, T, T) {
        (
            pick(Effective::of(&task, &config)),
            pick(Effective::of(&TaskOptions::default(), &config)),
            pick(Effective::of(
                &TaskOptions::default(),
                &TaskerConfig::default(),
            )),
        )
    }

    #[test]
    fn timeout_task_over_config_over_none() {
        let task = TaskOptions {
            timeout: secs(1),
            ..TaskOptions::default()
        };
        let config = TaskerConfig {
            timeout: secs(10),
            ..TaskerConfig::default()
        };
        assert_eq!(
            three_ways(task, config, |e| e.timeout),
            (secs(1), secs(10), None)
        );
    }

    #[test]
    fn start_timeout_task_over_config_over_none() {
        let task = TaskOptions {
            start_timeout: secs(2),
            ..TaskOptions::default()
        };
        let config = TaskerConfig {
            start_timeout: secs(20),
            ..TaskerConfig::default()
        };
        assert_eq!(
            three_ways(task, config, |e| e.start_timeout),
            (secs(2), secs(20), None)
        );
    }

    #[test]
    fn retries_task_over_config_over_three() {
        // An explicit 0 in the task wins.
        let task = TaskOptions {
            retries: Some(0),
            ..TaskOptions::default()
        };
        let config = TaskerConfig {
            retries: Some(5),
            ..TaskerConfig::default()
        };
        assert_eq!(three_ways(task, config, |e| e.retries), (0, 5, 3));
    }

    #[test]
    fn retry_on_timeout_task_over_config_over_false() {
        // An explicit false in the task wins.
        let task = TaskOptions {
            retry_on_timeout: Some(false),
            ..TaskOptions::default()
        };
        let config = TaskerConfig {
            retry_on_timeout: Some(true),
            ..TaskerConfig::default()
        };
        assert_eq!(
            three_ways(task, config, |e| e.retry_on_timeout),
            (false, true, false)
        );
    }

    #[test]
    fn each_field_is_taken_on_its_own() {
        // The task sets only the timeout: the rest come from the config.
        let task = TaskOptions {
            timeout: secs(1),
            ..TaskOptions::default()
        };
        assert_eq!(
            Effective::of(&task, &full_config()),
            Effective {
                timeout: secs(1),
                start_timeout: secs(20),
                retries: 5,
                retry_on_timeout: true,
            }
        );
    }

    #[test]
    fn of_task_ignores_any_config() {
        assert_eq!(
            Effective::of_task(&full_task()),
            Effective::of(&full_task(), &TaskerConfig::default())
        );
        let e = Effective::of_task(&TaskOptions {
            timeout: secs(4),
            ..TaskOptions::default()
        });
        assert_eq!(e.timeout, secs(4));
        assert_eq!(
            (e.start_timeout, e.retries, e.retry_on_timeout),
            (None, 3, false)
        );
    }

    // ---------------------------------------------------- retries

    #[test]
    fn work_errors_are_retried_with_backoff() {
        let e = eff(3, false);
        assert_eq!(
            after_error(err(ErrorKind::Work), 0, &e),
            retry(1, ErrorKind::Work)
        );
        assert_eq!(
            after_error(err(ErrorKind::Work), 1, &e),
            retry(2, ErrorKind::Work)
        );
        assert_eq!(
            after_error(err(ErrorKind::Work), 2, &e),
            retry(4, ErrorKind::Work)
        );
    }

    #[test]
    fn work_errors_fail_once_the_budget_is_spent() {
        let e = eff(3, false);
        assert_eq!(
            after_error(err(ErrorKind::Work), 3, &e),
            AfterError::Fail(err(ErrorKind::Work))
        );
        assert_eq!(
            after_error(err(ErrorKind::Work), 4, &e),
            AfterError::Fail(err(ErrorKind::Work))
        );
    }

    #[test]
    fn no_retries_means_the_first_work_error_fails() {
        assert_eq!(
            after_error(err(ErrorKind::Work), 0, &eff(0, true)),
            AfterError::Fail(err(ErrorKind::Work))
        );
    }

    #[test]
    fn a_run_of_work_errors_gets_exactly_retries_attempts_more() {
        let e = eff(12, false);
        let mut delays = Vec::new();
        let mut done = 0;
        while let AfterError::Retry { delay, .. } = after_error(err(ErrorKind::Work), done, &e) {
            delays.push(delay.as_secs());
            done += 1;
        }
        assert_eq!(done, 12);
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn timeouts_are_not_retried_by_default() {
        assert_eq!(
            after_error(err(ErrorKind::Timeout), 0, &eff(3, false)),
            AfterError::Fail(err(ErrorKind::Timeout))
        );
    }

    #[test]
    fn timeouts_are_retried_with_retry_on_timeout_on_the_same_budget() {
        let e = eff(2, true);
        assert_eq!(
            after_error(err(ErrorKind::Timeout), 0, &e),
            retry(1, ErrorKind::Timeout)
        );
        assert_eq!(
            after_error(err(ErrorKind::Timeout), 1, &e),
            retry(2, ErrorKind::Timeout)
        );
        assert_eq!(
            after_error(err(ErrorKind::Timeout), 2, &e),
            AfterError::Fail(err(ErrorKind::Timeout))
        );
    }

    #[test]
    fn user_errors_are_never_retried() {
        assert_eq!(
            after_error(err(ErrorKind::User), 0, &eff(3, true)),
            AfterError::Fail(err(ErrorKind::User))
        );
    }

    #[test]
    fn config_errors_are_never_retried() {
        assert_eq!(
            after_error(err(ErrorKind::Config), 0, &eff(3, true)),
            AfterError::Fail(err(ErrorKind::Config))
        );
    }

    #[test]
    fn refused_errors_are_never_retried() {
        assert_eq!(
            after_error(err(ErrorKind::Refused), 0, &eff(3, true)),
            AfterError::Fail(err(ErrorKind::Refused))
        );
    }

    #[test]
    fn aborted_errors_are_never_retried() {
        assert_eq!(
            after_error(err(ErrorKind::Aborted), 0, &eff(3, true)),
            AfterError::Fail(err(ErrorKind::Aborted))
        );
    }

    #[test]
    fn backoff_doubles_from_one_second() {
        let secs: Vec<u64> = (1..=9).map(|r| backoff(r).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256]);
        // Retry 0 does not exist; it is treated as the first.
        assert_eq!(backoff(0), Duration::from_secs(1));
    }

    #[test]
    fn backoff_is_capped_at_five_minutes() {
        assert_eq!(backoff(10), Duration::from_secs(300));
        assert_eq!(backoff(11), Duration::from_secs(300));
        assert_eq!(backoff(21), Duration::from_secs(300));
        assert_eq!(backoff(64), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }

    // ---------------------------------------------------- refusals

    #[test]
    fn offer_to_a_taskee_that_did_not_refuse_is_fine() {
        assert_eq!(check_offer(&taskee("stamp"), &[]), Ok(()));
        let refusals = [refusal("ink", "empty"), refusal("press", "busy")];
        assert_eq!(check_offer(&taskee("stamp"), &refusals), Ok(()));
    }

    #[test]
    fn offer_again_to_a_taskee_that_refused_fails_refused() {
        let refusals = [
            refusal("ink", "empty"),
            refusal("stamp", "busy"),
            refusal("stamp", "still busy"),
        ];
        assert_eq!(
            check_offer(&taskee("stamp"), &refusals),
            Err(TaskError::new(
                ErrorKind::Refused,
                "offered again to stamp, which refused it: busy"
            ))
        );
    }

    fn refusals(n: usize) -> Vec<Refusal> {
        (1..=n)
            .map(|i| refusal(&format!("t{i}"), &format!("reason {i}")))
            .collect()
    }

    #[test]
    fn nine_refusals_are_not_yet_a_failure() {
        assert_eq!(after_refusal(&[]), None);
        assert_eq!(after_refusal(&refusals(1)), None);
        assert_eq!(after_refusal(&refusals(MAX_REFUSALS - 1)), None);
        assert_eq!(MAX_REFUSALS, 10);
    }

    #[test]
    fn ten_refusals_fail_refused_naming_the_last() {
        assert_eq!(
            after_refusal(&refusals(10)),
            Some(TaskError::new(
                ErrorKind::Refused,
                "refused 10 times; last by t10: reason 10"
            ))
        );
        assert_eq!(
            after_refusal(&refusals(11)),
            Some(TaskError::new(
                ErrorKind::Refused,
                "refused 11 times; last by t11: reason 11"
            ))
        );
    }

    // ---------------------------------------------------- uncompleted

    #[test]
    fn ninety_nine_uncompleted_in_a_row_go_on() {
        assert_eq!(after_uncompleted(0), None);
        assert_eq!(after_uncompleted(1), None);
        assert_eq!(after_uncompleted(99), None);
        assert_eq!(MAX_UNCOMPLETED, 100);
    }

    #[test]
    fn a_hundred_uncompleted_in_a_row_fail_user() {
        assert_eq!(
            after_uncompleted(100),
            Some(TaskError::new(
                ErrorKind::User,
                "100 uncompleted replies in a row"
            ))
        );
        assert_eq!(
            after_uncompleted(101),
            Some(TaskError::new(
                ErrorKind::User,
                "101 uncompleted replies in a row"
            ))
        );
    }

    // ---------------------------------------------------- start timeout

    #[test]
    fn start_timeout_not_passed_leaves_the_rest() {
        let st = Dur(Duration::from_secs(600));
        assert_eq!(
            start_time_left(st, Duration::ZERO),
            Ok(Duration::from_secs(600))
        );
        assert_eq!(
            start_time_left(st, Duration::from_secs(599)),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(
            start_time_left(st, Duration::from_millis(599_999)),
            Ok(Duration::from_millis(1))
        );
    }

    #[test]
    fn start_timeout_passed_is_a_timeout_error() {
        let st = Dur(Duration::from_secs(600));
        let expected = TaskError::new(ErrorKind::Timeout, "not started within start_timeout 600s");
        // At exactly start_timeout, it has passed.
        assert_eq!(
            start_time_left(st, Duration::from_secs(600)),
            Err(expected.clone())
        );
        assert_eq!(
            start_time_left(st, Duration::from_secs(3600)),
            Err(expected)
        );
        assert_eq!(
            start_time_left(Dur(Duration::ZERO), Duration::ZERO),
            Err(TaskError::new(
                ErrorKind::Timeout,
                "not started within start_timeout 0ms"
            ))
        );
    }

    #[test]
    fn start_timeout_that_fired_names_the_timeout() {
        assert_eq!(
            start_timed_out(Some(Dur(Duration::from_millis(1500)))),
            TaskError::new(
                ErrorKind::Timeout,
                "not started within start_timeout 1500ms"
            )
        );
        assert_eq!(
            start_timed_out(secs(10)),
            TaskError::new(ErrorKind::Timeout, "not started within start_timeout 10s")
        );
        // As today: without one, the duration is empty.
        assert_eq!(
            start_timed_out(None),
            TaskError::new(ErrorKind::Timeout, "not started within start_timeout ")
        );
    }
}
