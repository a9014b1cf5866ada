//! The Slurm development cluster for the SPEC 14 tests (`scripts/slurm-dev
//! start`). [`cluster`] finds it through `SLURM_CONF` (or the script's
//! default configuration); without one a test is skipped, loudly, and in
//! CI (`CI` set) it fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The script's default configuration file.
pub const DEFAULT_CONF: &str = "/tmp/spoolflow-slurm/slurm.conf";

/// One Slurm test at a time: they share the cluster (one stops its
/// controller) and count its jobs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A cluster that answered, held by this test until it is dropped.
pub struct SlurmCluster {
    conf: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

/// The cluster, or `None` (after saying so, loudly) when none answers; in
/// CI (`CI` set) a missing cluster is a failure.
pub fn cluster() -> Option<SlurmCluster> {
    let conf = std::env::var_os("SLURM_CONF")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONF));
    if conf.is_file() && ping(&conf) {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        return Some(SlurmCluster { conf, _turn: turn });
    }
    let why = format!(
        "no Slurm cluster answers `scontrol ping` with SLURM_CONF={}",
        conf.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!(
            "the Slurm development cluster is required in CI: {why}; \
             .ci/run starts it with `scripts/slurm-dev start`"
        );
    }
    let bar = "!".repeat(76);
    let banner = format!(
        "\n{bar}\n!! SKIPPED: this test needs a Slurm cluster (SPEC 14).\n\
         !! {why}.\n\
         !! Start the development cluster (root; Debian packages slurmctld \
         slurmd slurm-client munge):\n\
         !!     sudo scripts/slurm-dev start\n\
         !!     export SLURM_CONF={DEFAULT_CONF}\n\
         !! then run the tests again.\n{bar}\n"
    );
    // Straight to the process's stderr: the test harness captures
    // `eprintln!` of a passing test, and a skip must be seen.
    let _ = std::io::stderr().write_all(banner.as_bytes());
    None
}

/// Whether the controller of `conf` answers (bounded by `timeout`).
fn ping(conf: &Path) -> bool {
    Command::new("timeout")
        .args(["10", "scontrol", "ping"])
        .env("SLURM_CONF", conf)
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("is UP"))
}

impl SlurmCluster {
    /// The cluster's configuration file.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// What a spawned engine (or any process) needs to talk to the cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SLURM_CONF".into(), self.conf.display().to_string())]
    }

    /// A Slurm command (`sbatch`, `squeue`, `scancel`, ...) for this
    /// cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// The jobs (pending, running, or ended within `MinJobAge`) whose name
    /// starts with `prefix`: (job id, Slurm state).
    pub fn squeue_jobs(&self, prefix: &str) -> Vec<(u64, String)> {
        let out = self
            .command("squeue")
            .args(["-h", "--states=all", "-o", "%i|%T|%j"])
            .output()
            .expect("run squeue");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.trim().splitn(3, '|');
                let id = f.next()?.parse().ok()?;
                let state = f.next()?;
                let name = f.next()?;
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

    /// Stops the controller only (`scripts/slurm-dev stop-ctld`): running
    /// jobs go on, and nothing answers `squeue` until [`Self::start_ctld`].
    pub fn stop_ctld(&self) {
        self.script("stop-ctld");
    }

    /// Starts the controller again (`scripts/slurm-dev start-ctld`), which
    /// reloads its saved state, and waits until it answers.
    pub fn start_ctld(&self) {
        self.script("start-ctld");
        crate::common::wait_for("slurmctld answers", Duration::from_secs(60), || {
            ping(&self.conf)
        });
    }

    /// Runs `scripts/slurm-dev <what>` on this cluster's directory.
    fn script(&self, what: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-dev");
        let dir = self.conf.parent().unwrap_or(Path::new("/"));
        let out = Command::new(&script)
            .arg(what)
            .env("SPOOLFLOW_SLURM_DIR", dir)
            .env("SLURM_CONF", &self.conf)
            .output()
            .unwrap_or_else(|e| panic!("run {} {what}: {e}", script.display()));
        assert!(
            out.status.success(),
            "scripts/slurm-dev {what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}
