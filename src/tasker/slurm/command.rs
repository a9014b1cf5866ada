//! Running Slurm's client commands (`sbatch`, `squeue`, `sacct`,
//! `scancel`): each with a time bound, its output or its message, so that
//! a hung controller never holds the engine.

use std::time::Duration;

/// How long a Slurm command may take before it counts as unanswered.
pub const LIMIT: Duration = Duration::from_secs(30);

/// The arguments of the one `squeue` that shows all of this user's jobs,
/// in every state the controller still keeps.
pub fn squeue_args() -> Vec<String> {
    ["-h", "--me", "--states=all", "-o", super::squeue::FORMAT]
        .map(String::from)
        .to_vec()
}

/// Runs `program` (stdin closed); its stdout when it succeeded, else its
/// message: its stderr, or its status when it said nothing.
pub async fn run(program: &str, args: &[String]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(LIMIT, cmd.output()).await {
        // Worded as Slurm words a timeout, so that it is waited for.
        Err(_) => Err(format!(
            "{program} did not answer within {} s: Socket timed out",
            LIMIT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("cannot run {program}: {e}")),
        Ok(Ok(out)) => answer(out),
    }
}

/// [`run`] without the runtime (start-up, before the loop runs), within
/// the same bound.
pub fn run_blocking(program: &str, args: &[String]) -> Result<String, String> {
    let child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(Ok(out)) => answer(out),
        Ok(Err(e)) => Err(format!("cannot run {program}: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(format!(
                "{program} did not answer within {} s: Socket timed out",
                LIMIT.as_secs()
            ))
        }
    }
}

fn answer(out: std::process::Output) -> Result<String, String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(if err.is_empty() {
        format!("{} {}", out.status, stdout.trim())
    } else {
        err
    })
}
