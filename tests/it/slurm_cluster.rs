//! The Slurm development cluster itself (`scripts/slurm-dev`, SPEC 14): a
//! real batch job submitted with `sbatch --parsable --no-requeue` runs on
//! the cluster's node and writes its output file. Skipped loudly without a
//! cluster, a failure in CI (see `common::slurm`).

use std::fs;
use std::time::Duration;

use crate::common::*;

#[test]
fn slurm_cluster_runs_a_batch_job_to_completion() {
    let Some(c) = slurm::cluster() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let out_file = dir.path().join("job.out");
    let name = format!("devcluster-check-{}", std::process::id());
    let out = c
        .command("sbatch")
        .args(["--parsable", "--no-requeue", "--job-name", &name])
        .arg(format!("--output={}", out_file.display()))
        .args(["--wrap", "echo \"job=$SLURM_JOB_ID node=$SLURMD_NODENAME\""])
        .output()
        .expect("run sbatch");
    assert!(
        out.status.success(),
        "sbatch failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // `--parsable` prints `id` or `id;cluster`.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id: u64 = stdout
        .trim()
        .split(';')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("sbatch --parsable printed {stdout:?}"));
    assert!(
        c.squeue_jobs(&name).iter().any(|(j, _)| *j == id),
        "squeue does not list job {id} named {name}"
    );

    let want = format!("job={id} node=");
    wait_for("the job's output file", Duration::from_secs(60), || {
        fs::read_to_string(&out_file).is_ok_and(|s| s.contains(&want) && s.ends_with('\n'))
    });
    let text = fs::read_to_string(&out_file).expect("read the job's output");
    let node = text.trim().strip_prefix(&want).unwrap_or_default();
    assert!(!node.is_empty(), "no node name in {text:?}");

    // Slurm records the job's end: COMPLETED (kept in squeue for MinJobAge).
    wait_for("squeue says COMPLETED", Duration::from_secs(30), || {
        c.squeue_jobs(&name)
            .iter()
            .any(|(j, state)| *j == id && state == "COMPLETED")
    });
}
