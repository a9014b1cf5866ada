//! The Slurm development cluster for the SPEC 14 tests (`scripts/slurm-dev
//! start`). [`cluster`] finds it through `SLURM_CONF` (or the script's
//! default configuration); without one a test is skipped, loudly, and in
//! CI (`CI` set) it fails.

use std::path::PathBuf;
use std::process::Command;

/// The script's default configuration file.
const DEFAULT_CONF: &str = "/tmp/spoolflow-slurm/slurm.conf";

/// One Slurm test at a time: they share the cluster (one stops its
/// controller) and count its jobs.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A cluster that answered, held by this test until it is dropped.
pub struct SlurmCluster {
    conf: PathBuf,
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// The cluster, or `None` (after saying so) when none answers.
pub fn cluster() -> Option<SlurmCluster> {
    let conf = std::env::var_os("SLURM_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONF));
    let answers = conf.is_file()
        && Command::new("timeout")
            .args(["10", "scontrol", "ping"])
            .env("SLURM_CONF", &conf)
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("UP"));
    if answers {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        return Some(SlurmCluster { conf, _turn: turn });
    }
    let why = format!(
        "no Slurm cluster answers (SLURM_CONF={}): start the development cluster with \
         `sudo scripts/slurm-dev start` and `export SLURM_CONF={DEFAULT_CONF}`",
        conf.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("CI runs the Slurm tests: {why}");
    }
    eprintln!(
        "\n{}\nSKIPPED: a SPEC 14 test needs Slurm; {why}\n{}\n",
        "!".repeat(72),
        "!".repeat(72)
    );
    None
}

impl SlurmCluster {
    /// What a process needs to talk to the cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SLURM_CONF".into(), self.conf.display().to_string())]
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// This user's jobs whose name starts with `prefix`: (id, state).
    pub fn squeue_jobs(&self, prefix: &str) -> Vec<(u64, String)> {
        let out = self
            .command("squeue")
            .args(["-h", "--me", "--states=all", "-o", "%i|%j|%T"])
            .output()
            .expect("run squeue");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.trim().split('|');
                let id = f.next()?.parse().ok()?;
                let name = f.next()?;
                let state = f.next()?;
                name.starts_with(prefix).then(|| (id, state.to_string()))
            })
            .collect()
    }

    /// Runs `scontrol` with these arguments; panics when it fails.
    pub fn scontrol(&self, args: &[&str]) {
        let out = self
            .command("scontrol")
            .args(args)
            .output()
            .expect("run scontrol");
        assert!(
            out.status.success(),
            "scontrol {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `scontrol`, whatever it answers.
    pub fn scontrol_lenient(&self, args: &[&str]) {
        let _ = self.command("scontrol").args(args).output();
    }

    /// Stops the controller (running jobs go on).
    pub fn stop_ctld(&self) {
        let ok = self
            .command("scontrol")
            .args(["shutdown", "slurmctld"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "scontrol shutdown slurmctld failed");
    }

    /// Starts the controller again and waits until it answers.
    pub fn start_ctld(&self) {
        let ok = self
            .command("slurmctld")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "slurmctld did not start");
        crate::common::wait_for(
            "slurmctld answers",
            std::time::Duration::from_secs(60),
            || {
                self.command("scontrol")
                    .arg("ping")
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("UP"))
            },
        );
    }
}
