//! Running one tasker process: a new process group, a clean environment,
//! stdin written while stdout is read (up to the reply limit), stderr
//! copied line by line, a run timeout, and stop requests ending in SIGTERM
//! then SIGKILL of the group.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::reply::REPLY_LIMIT;
use super::stderr::copy_stderr;

/// How long a tasker's pipes may outlive it before its group is killed.
const LINGER: Duration = Duration::from_secs(2);

/// Why the engine stops a running tasker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A cancel request (SPEC 8).
    Cancel,
    /// The engine is stopping (the task stays in `run/`).
    Shutdown,
}

/// What the engine needs to spawn a tasker.
#[derive(Debug)]
pub struct Launch {
    pub argv: Vec<OsString>,
    pub dir: PathBuf,
    pub env: Vec<(String, OsString)>,
    pub stdin: Vec<u8>,
    /// The `.err` file, opened (and created) only if the tasker writes to
    /// stderr.
    pub stderr_path: PathBuf,
    /// Prefix for each stderr line (the task id).
    pub stderr_prefix: String,
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
}

/// How a tasker process ended.
#[derive(Debug)]
pub enum Exit {
    /// It could not be spawned; `transient` for resource shortages.
    SpawnFailed { message: String, transient: bool },
    /// It ran; `status` is its wait status.
    Exited {
        status: ExitStatus,
        stdout: Vec<u8>,
        /// stdout went over [`REPLY_LIMIT`] (the group was killed).
        oversized: bool,
        /// The last lines it wrote on stderr.
        stderr_tail: Vec<String>,
        /// The run timeout fired (the group got SIGTERM, then SIGKILL).
        timed_out: bool,
        /// The engine asked it to stop.
        stopped: Option<StopReason>,
    },
}

/// A spawned tasker: its process group id and the way to stop it.
pub struct Handle {
    pub pgid: i32,
    pub stop: oneshot::Sender<StopReason>,
}

/// Marks every descriptor above 2 close-on-exec, so that taskers inherit
/// none of what the engine's parent left open (SPEC 6). Called once at
/// start-up: the engine's own descriptors are opened close-on-exec by Rust
/// already, and spawning keeps using `posix_spawn` (a `pre_exec` hook that
/// closed descriptors would force a full fork of the engine per task).
pub fn close_inherited_descriptors() {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFD) {
            let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
            let _ = fcntl(fd, FcntlArg::F_SETFD(flags));
        }
    }
}

/// Spawns the tasker. On success returns its handle and a future that
/// drives its I/O and resolves to its [`Exit`]; the caller spawns that
/// future on the runtime.
pub fn spawn(launch: Launch) -> Result<(Handle, impl std::future::Future<Output = Exit>), Exit> {
    let mut cmd = tokio::process::Command::new(&launch.argv[0]);
    cmd.args(&launch.argv[1..])
        .current_dir(&launch.dir)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let transient = matches!(
                e.raw_os_error(),
                Some(nix::libc::EAGAIN | nix::libc::ENOMEM | nix::libc::EMFILE | nix::libc::ENFILE)
            );
            return Err(Exit::SpawnFailed {
                message: format!("cannot spawn {:?}: {e}", launch.argv[0]),
                transient,
            });
        }
    };
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let (stop_tx, stop_rx) = oneshot::channel();
    let fut = drive(child_io(&mut child), child, pid, launch, stop_rx);
    Ok((
        Handle {
            pgid: pid,
            stop: stop_tx,
        },
        fut,
    ))
}

struct ChildIo {
    stdin: Option<tokio::process::ChildStdin>,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
}

fn child_io(child: &mut tokio::process::Child) -> ChildIo {
    ChildIo {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
    }
}

fn signal_group(pgid: i32, sig: Signal) {
    if pgid > 0 {
        // ESRCH (the group is gone) is fine.
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
}

async fn drive(
    io: ChildIo,
    mut child: tokio::process::Child,
    pgid: i32,
    launch: Launch,
    mut stop_rx: oneshot::Receiver<StopReason>,
) -> Exit {
    let Launch {
        stdin: input,
        stderr_path,
        stderr_prefix,
        timeout,
        kill_grace,
        ..
    } = launch;

    // stdin: written concurrently; a tasker that exits without reading is
    // not an error (EPIPE is ignored).
    let writer = async move {
        if let Some(mut stdin) = io.stdin {
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        }
    };
    // stdout: read up to the reply limit.
    let reader = async move {
        let mut buf = Vec::new();
        let mut oversized = false;
        if let Some(stdout) = io.stdout {
            let mut limited = stdout.take(REPLY_LIMIT as u64 + 1);
            let _ = limited.read_to_end(&mut buf).await;
            if buf.len() > REPLY_LIMIT {
                oversized = true;
                buf.clear();
                signal_group(pgid, Signal::SIGKILL);
            }
        }
        (buf, oversized)
    };
    let errors = copy_stderr(io.stderr, stderr_path, stderr_prefix);
    let io_done = async { tokio::join!(writer, reader, errors) };

    let mut timed_out = false;
    let mut stopped = None;
    let mut term_sent_at: Option<tokio::time::Instant> = None;
    let mut killed = false;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut stop_open = true;
    let mut status = None;
    // Once the leader has exited, how long its pipes may stay open (held by
    // a background child) before the rest of its group is killed.
    let mut linger: Option<tokio::time::Instant> = None;

    tokio::pin!(io_done);
    let mut io_result = None;
    while status.is_none() || io_result.is_none() {
        let kill_at = term_sent_at.map(|t| t + kill_grace);
        tokio::select! {
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                linger = Some(tokio::time::Instant::now() + LINGER);
            }
            r = &mut io_done, if io_result.is_none() => { io_result = Some(r); }
            _ = sleep_until(linger), if linger.is_some() => {
                // The leader exited but something still holds its stdout or
                // stderr: end the group; if a process escaped the group, give
                // up on its output.
                if killed {
                    break;
                }
                signal_group(pgid, Signal::SIGKILL);
                killed = true;
                linger = Some(tokio::time::Instant::now() + LINGER);
            }
            _ = sleep_until(deadline), if deadline.is_some() && term_sent_at.is_none() && status.is_none() => {
                timed_out = true;
                signal_group(pgid, Signal::SIGTERM);
                term_sent_at = Some(tokio::time::Instant::now());
            }
            reason = &mut stop_rx, if stop_open => {
                stop_open = false;
                if let Ok(reason) = reason {
                    stopped = Some(reason);
                    if term_sent_at.is_none() && status.is_none() {
                        signal_group(pgid, Signal::SIGTERM);
                        term_sent_at = Some(tokio::time::Instant::now());
                    }
                }
            }
            _ = sleep_until(kill_at), if kill_at.is_some() && !killed => {
                signal_group(pgid, Signal::SIGKILL);
                killed = true;
            }
        }
    }
    // When the engine ended the tasker, nothing of its group outlives it.
    if timed_out || stopped.is_some() {
        signal_group(pgid, Signal::SIGKILL);
    }
    let ((), (stdout, oversized), stderr_tail) = io_result.unwrap_or_default();
    match status {
        Some(Ok(status)) => Exit::Exited {
            status,
            stdout,
            oversized,
            stderr_tail,
            timed_out,
            stopped,
        },
        Some(Err(e)) => Exit::SpawnFailed {
            message: format!("waiting for the tasker failed: {e}"),
            transient: true,
        },
        // The loop ends only once the leader's exit is seen.
        None => Exit::SpawnFailed {
            message: "the tasker's exit was never seen".into(),
            transient: true,
        },
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
