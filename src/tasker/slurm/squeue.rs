//! What Slurm says of the engine's jobs (SPEC 14), read from one
//! `squeue` per poll for all of them, and what an ended job means for its
//! task. Pure: the text in, the phases and errors out.

use crate::model::task::ErrorKind;

/// The `squeue` output format the poller asks for: id, name, state,
/// nodes, reason, separated by `|` (none of them holds one), then the
/// working directory (last: a path may hold a `|`).
pub const FORMAT: &str = "%i|%j|%T|%N|%r|%Z";

/// One job as `squeue` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: u64,
    pub name: String,
    pub state: String,
    pub node: String,
    pub reason: String,
    /// Its working directory: the engine's jobs run in their own job
    /// directory (`--chdir`), which tells one root's job from another's
    /// of the same name (two roots may hold tasks of the same id).
    pub dir: String,
}

impl Row {
    /// Whether this is the job of the run whose files are in `dir`, named
    /// `name`. A row without a directory (an older `sacct`) is judged by
    /// its name alone.
    pub fn is_run(&self, name: &str, dir: &str) -> bool {
        self.name == name && (self.dir.is_empty() || same_dir(&self.dir, dir))
    }
}

fn same_dir(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The newest job of a run, by its name and directory (there is one,
/// unless a controller that lost its state took a submission twice).
pub fn newest_run<'a>(rows: &'a [Row], name: &str, dir: &str) -> Option<&'a Row> {
    rows.iter()
        .filter(|r| r.name == name && same_dir(&r.dir, dir))
        .max_by_key(|r| r.id)
}

/// The `sacct` output format asked for jobs `squeue` no longer shows:
/// `sacct -n -P -X -o SACCT_FORMAT` (`|`-separated, allocations only).
pub const SACCT_FORMAT: &str = "JobID,JobName,State,NodeList,WorkDir";

/// [`SACCT_FORMAT`] for an `sacct` that does not know `WorkDir` (its rows
/// are judged by their name alone).
pub const SACCT_FORMAT_OLD: &str = "JobID,JobName,State,NodeList";

/// Whether `sacct` refused a field it does not know.
pub fn unknown_field(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("invalid field")
}

/// Parses `sacct -n -P -X -o SACCT_FORMAT` as rows; a state such as
/// `CANCELLED by 0` keeps its first word.
pub fn parse_sacct(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim_start().splitn(5, '|');
            let id = f.next()?.trim().parse().ok()?;
            let name = f.next()?.trim().to_string();
            let state = f.next()?.split_whitespace().next()?.to_string();
            let node = f.next().unwrap_or("").trim();
            let dir = f.next().unwrap_or("").to_string();
            Some(Row {
                id,
                name,
                state,
                node: if node == "None assigned" {
                    String::new()
                } else {
                    node.to_string()
                },
                reason: String::new(),
                dir,
            })
        })
        .collect()
}

/// Whether `sacct` failed because the cluster keeps no accounting (then
/// it is not asked again).
pub fn accounting_off(stderr: &str) -> bool {
    stderr
        .to_ascii_lowercase()
        .contains("accounting storage is disabled")
}

/// Where a job is in its life, as far as the engine cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a node (or requeued, or held).
    Pending,
    /// On a node (running, suspended, being signalled).
    Running,
    /// Its script has ended; Slurm is cleaning up (`COMPLETING`).
    Completing,
    /// Ended, in a final state.
    Ended,
}

/// Parses `squeue -h -o FORMAT`; lines that are not rows are skipped.
pub fn parse(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim_start().splitn(6, '|');
            let id = f.next()?.trim().parse().ok()?;
            Some(Row {
                id,
                name: f.next()?.trim().to_string(),
                state: f.next()?.trim().to_string(),
                node: f.next().unwrap_or("").trim().to_string(),
                reason: f.next().unwrap_or("").trim().to_string(),
                dir: f.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// The phase of a Slurm job state (long form, as `%T` prints it).
pub fn phase(state: &str) -> Phase {
    match state {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
        | "RESV_DEL_HOLD" => Phase::Pending,
        "COMPLETING" | "STAGE_OUT" => Phase::Completing,
        "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL" | "PREEMPTED"
        | "BOOT_FAIL" | "DEADLINE" | "OUT_OF_MEMORY" | "SPECIAL_EXIT" | "REVOKED" => Phase::Ended,
        // RUNNING, SUSPENDED, STOPPED, SIGNALING, RESIZING, and any state
        // a later Slurm adds: the job holds a node until it says otherwise.
        _ => Phase::Running,
    }
}

/// What ended a job whose state decides the outcome whatever the tasker's
/// status says: a Slurm time limit, a deadline, memory, the cluster itself
/// (a lost node, a preemption: the tasker was killed, its status says
/// nothing of its work).
pub fn overriding_end(state: &str) -> Option<(ErrorKind, String)> {
    match state {
        "NODE_FAIL" | "BOOT_FAIL" | "PREEMPTED" | "REVOKED" => Some((
            ErrorKind::Work,
            format!("the cluster ended the job ({state})"),
        )),
        "TIMEOUT" => Some((
            ErrorKind::Timeout,
            "the job reached its Slurm time limit (TIMEOUT)".into(),
        )),
        "DEADLINE" => Some((
            ErrorKind::Timeout,
            "the job reached its Slurm deadline (DEADLINE)".into(),
        )),
        "OUT_OF_MEMORY" => Some((
            ErrorKind::User,
            "the job ran out of memory (OUT_OF_MEMORY)".into(),
        )),
        _ => None,
    }
}

/// The error of a job that ended without the tasker's exit status (its
/// script never ran, or ran on a node that failed): `state` is its last
/// state, `None` when the cluster no longer knows the job.
pub fn lost(state: Option<&str>) -> (ErrorKind, String) {
    if let Some(end) = state.and_then(overriding_end) {
        return end;
    }
    let msg = match state {
        None => "the cluster no longer knows the job and it left no exit status".to_string(),
        Some("CANCELLED") => "the job was cancelled outside the engine (CANCELLED)".to_string(),
        Some(s) => format!("the job ended ({s}) without the tasker's exit status"),
    };
    (ErrorKind::Work, msg)
}

/// Whether `squeue`'s error means the controller cannot be reached (to be
/// waited for) rather than a bad request.
pub fn unreachable(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "unable to contact slurm controller",
        "socket timed out",
        "connection refused",
        "connection timed out",
        "communication connection failure",
        "slurm backup controller in standby mode",
        "zero bytes were transmitted",
    ]
    .iter()
    .any(|m| s.contains(m))
}

/// Whether `sbatch`'s refusal means the cluster takes no more jobs of
/// this user for now: a submit limit of the QOS or the association
/// (`QOSMaxSubmitJobPerUserLimit`, `AssocGrpSubmitJobsLimit`, …), or a
/// full job table. Such a submission waits and is tried again; any other
/// refusal fails the task `config`.
pub fn submit_limited(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "maxsubmitjob",
        "grpsubmitjob",
        "temporarily unable to accept job",
    ]
    .iter()
    .any(|m| s.contains(m))
}

/// The job id `sbatch --parsable` printed (`123` or `123;cluster`).
pub fn parse_job_id(stdout: &str) -> Option<u64> {
    stdout.trim().split(';').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_parsed_and_noise_skipped() {
        let rows = parse("17|spoolflow.a.0.1|RUNNING|vm|None\n  18|spoolflow.b.0.1|PENDING||Resources\nslurm_load_jobs error\n");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, 17);
        assert_eq!(rows[0].node, "vm");
        assert_eq!(rows[1].state, "PENDING");
        assert_eq!(rows[1].reason, "Resources");
    }

    #[test]
    fn a_run_is_found_by_its_name_and_directory_not_by_its_name_alone() {
        // Two roots with a task of the same id: the same job name; the
        // other root's job is newer.
        let rows = parse(
            "40|spoolflow.t.0.1.1|COMPLETED|vm|None|/srv/a|b/var/slurm/t.0.1.1\n\
             41|spoolflow.t.0.1.1|RUNNING|vm|None|/srv/other/var/slurm/t.0.1.1\n",
        );
        assert_eq!(
            rows[0].dir, "/srv/a|b/var/slurm/t.0.1.1",
            "a path with a `|`"
        );
        let mine = newest_run(&rows, "spoolflow.t.0.1.1", "/srv/a|b/var/slurm/t.0.1.1");
        assert_eq!(mine.map(|r| r.id), Some(40));
        assert!(newest_run(&rows, "spoolflow.t.0.1.1", "/srv/b/var/slurm/t.0.1.1").is_none());
        assert!(rows[1].is_run("spoolflow.t.0.1.1", "/srv/other/var/slurm/t.0.1.1/"));
        assert!(!rows[1].is_run("spoolflow.t.0.1.1", "/srv/a|b/var/slurm/t.0.1.1"));
        // An accounting row without its directory is judged by its name.
        let old = parse_sacct("41|spoolflow.t.0.1.1|COMPLETED|vm\n");
        assert!(old[0].is_run("spoolflow.t.0.1.1", "/anywhere"));
    }

    #[test]
    fn a_submit_limit_is_waited_for_and_other_refusals_are_not() {
        for limited in [
            "sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)",
            "sbatch: error: AssocGrpSubmitJobsLimit",
            "sbatch: error: AssocMaxSubmitJobLimit",
            "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying",
        ] {
            assert!(submit_limited(limited), "{limited}");
        }
        for refused in [
            "sbatch: error: Batch job submission failed: Invalid partition name specified",
            "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)",
            "sbatch: error: QOSMaxWallDurationPerJobLimit",
        ] {
            assert!(!submit_limited(refused), "{refused}");
        }
    }

    #[test]
    fn sacct_rows_are_parsed() {
        let rows = parse_sacct(
            "17|spoolflow.a.0.1|COMPLETED|vm|/r/var/slurm/a.0.1\n18|spoolflow.b.0.1|CANCELLED by 0|None assigned|/r\n",
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].dir, "/r/var/slurm/a.0.1");
        assert_eq!(rows[0].state, "COMPLETED");
        assert_eq!(rows[1].state, "CANCELLED");
        assert_eq!(rows[1].node, "");
        assert!(accounting_off("Slurm accounting storage is disabled"));
        assert!(unknown_field(
            "sacct: fatal: Invalid field requested: \"WorkDir\""
        ));
        assert!(!unknown_field(
            "sacct: error: Problem talking to the database"
        ));
        assert!(!accounting_off(
            "sacct: error: Problem talking to the database"
        ));
    }

    #[test]
    fn states_map_to_phases() {
        assert_eq!(phase("PENDING"), Phase::Pending);
        assert_eq!(phase("RUNNING"), Phase::Running);
        assert_eq!(phase("SUSPENDED"), Phase::Running);
        assert_eq!(phase("COMPLETING"), Phase::Completing);
        for s in [
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
        ] {
            assert_eq!(phase(s), Phase::Ended, "{s}");
        }
    }

    #[test]
    fn jobs_ended_by_the_cluster_are_work_errors_and_limits_keep_their_kind() {
        assert_eq!(lost(Some("NODE_FAIL")).0, ErrorKind::Work);
        assert_eq!(lost(Some("PREEMPTED")).0, ErrorKind::Work);
        assert_eq!(lost(Some("BOOT_FAIL")).0, ErrorKind::Work);
        assert_eq!(lost(None).0, ErrorKind::Work);
        assert_eq!(lost(Some("OUT_OF_MEMORY")).0, ErrorKind::User);
        assert_eq!(lost(Some("TIMEOUT")).0, ErrorKind::Timeout);
        assert!(lost(Some("NODE_FAIL")).1.contains("NODE_FAIL"));
        assert_eq!(overriding_end("COMPLETED"), None);
    }

    #[test]
    fn controller_outages_are_told_from_bad_requests() {
        assert!(unreachable(
            "squeue: error: Unable to contact slurm controller (connect failure)"
        ));
        assert!(!unreachable(
            "sbatch: error: invalid partition specified: nope"
        ));
        assert_eq!(parse_job_id("42\n"), Some(42));
        assert_eq!(parse_job_id("42;cl\n"), Some(42));
        assert_eq!(parse_job_id("Submitted"), None);
    }
}
