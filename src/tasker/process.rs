//! Running one tasker process: a new process group, a clean environment,
//! stdin put in its pipe before the spawn as far as the pipe holds it
//! (the rest written while stdout is read, up to the reply limit), stderr
//! copied line by line, a run timeout, and stop requests ending in SIGTERM
//! then SIGKILL of the group. When the task ends, whatever the tasker
//! started is killed: its group, and what left the group (see `contain`).
//!
//! The reply is what the tasker wrote on stdout before it exited: stdout is
//! read (see `pipes`: at once after a quick exit, else as it comes) into a
//! buffer the driver owns, so that a pipe held open by something the
//! tasker left behind costs the reply nothing (what was read is used once
//! the pipes' linger is over). A tasker that exited
//! before its run timeout is judged by its exit, however late the engine
//! gets to look (a stopped or busy engine): the timeout first checks
//! whether the tasker has exited.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::{oneshot, Notify};

use super::contain::Tracked;
use super::pipes::{output_pipe, read_output, stdin_pipe, ChildIo, Sinks, Stdout};
use super::stderr::StderrCopy;
use super::vfork;

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
    /// What keeps track of the tasker's descendants.
    pub tracked: Tracked,
}

/// How a tasker process ended.
#[derive(Debug)]
pub enum Exit {
    /// It could not be spawned; `transient` for resource shortages.
    SpawnFailed { message: String, transient: bool },
    /// The cluster ended it without its exit status (a Slurm job lost
    /// with its node, out of memory, past its Slurm time limit).
    Lost {
        kind: crate::model::task::ErrorKind,
        message: String,
    },
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
/// already; closing them in each child instead, between its clone and its
/// exec (`vfork`), would cost a pass over the descriptor table per task.
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
pub fn spawn(
    mut launch: Launch,
) -> Result<(Handle, impl std::future::Future<Output = Exit>), Exit> {
    let (stdin, stdin_rest) = match stdin_pipe(&mut launch.stdin) {
        Ok(pipe) => pipe,
        Err(e) => {
            return Err(Exit::SpawnFailed {
                message: format!("cannot make the tasker's stdin: {e}"),
                transient: true,
            })
        }
    };
    let pipes = match (output_pipe(), output_pipe()) {
        (Ok(stdout), Ok(stderr)) => (stdout, stderr),
        (Err(e), _) | (_, Err(e)) => {
            return Err(Exit::SpawnFailed {
                message: format!("cannot make the tasker's pipes: {e}"),
                transient: true,
            })
        }
    };
    let ((stdout_read, stdout_write), (stderr_read, stderr_write)) = pipes;
    // With cgroups the child enters its cgroup before it execs.
    let procs = match launch.tracked.cgroup_procs() {
        Ok(procs) => procs,
        Err(e) => {
            return Err(Exit::SpawnFailed {
                message: format!("cannot prepare the tasker's cgroup: {e}"),
                transient: true,
            })
        }
    };
    // The child's ends (its stdin's read end included) are closed once it
    // has exec'd: the engine keeps only its own.
    let spawned = vfork::spawn(vfork::Command {
        argv: &launch.argv,
        env: &launch.env,
        dir: &launch.dir,
        stdio: [stdin, stdout_write, stderr_write],
        cgroup_procs: procs.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
    });
    drop(procs);
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let transient = is_transient(&e);
            return Err(Exit::SpawnFailed {
                message: format!(
                    "cannot spawn {}: {e}",
                    crate::text::quoted(&launch.argv[0].to_string_lossy())
                ),
                transient,
            });
        }
    };
    let pid = child.id();
    if pid > 0 {
        launch.tracked.spawned(pid);
    }
    let (stop_tx, stop_rx) = oneshot::channel();
    let fut = drive(
        ChildIo {
            stdin: stdin_rest,
            stdout: Some(stdout_read),
            stderr: Some(stderr_read),
        },
        child,
        pid,
        launch,
        stop_rx,
    );
    Ok((
        Handle {
            pgid: pid,
            stop: stop_tx,
        },
        fut,
    ))
}

/// Whether a spawn failure may pass: a shortage of processes, memory or
/// descriptors, or the tasker's file being written (an update in place:
/// it is runnable once closed).
fn is_transient(e: &std::io::Error) -> bool {
    use nix::libc::{EAGAIN, EMFILE, ENFILE, ENOMEM, ETXTBSY};
    matches!(
        e.raw_os_error(),
        Some(EAGAIN | ENOMEM | EMFILE | ENFILE | ETXTBSY)
    )
}

/// A signal to the tasker's process group (none for a pid not yet known).
pub(super) fn signal_group(pgid: i32, sig: Signal) {
    if pgid > 0 {
        // ESRCH (the group is gone) is fine.
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
}

/// Drives one tasker to its end: its I/O, its exit, and the engine's
/// timers and stop request, all in one task so that no state is shared.
async fn drive(
    io: ChildIo,
    mut child: vfork::Child,
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
        tracked,
        ..
    } = launch;
    let mut stdout = Stdout::default();
    let mut stderr = StderrCopy::new(stderr_path, stderr_prefix);
    let mut run = Run::new(pgid, timeout, kill_grace, tracked);
    let (oversized, exited) = (Notify::new(), Notify::new());
    {
        let sinks = Sinks {
            stdout: &mut stdout,
            stderr: &mut stderr,
            oversized: &oversized,
            exited: &exited,
        };
        let io_done = read_output(io, input, pgid, sinks);
        tokio::pin!(io_done);
        let (mut io_over, mut exit_told) = (false, false);
        while run.status.is_none() || !io_over {
            let kill_at = run.kill_at();
            tokio::select! {
                // The exit first: when the engine looks late, an exit and a
                // timer may both be ready, and the exit came first.
                biased;
                s = child.wait(), if run.status.is_none() => run.exited(s),
                () = &mut io_done, if !io_over => io_over = true,
                _ = sleep_until(run.deadline), if run.deadline_armed() => {
                    match child.try_wait() {
                        Ok(Some(status)) => run.exited(Ok(status)),
                        Err(e) => run.exited(Err(e)),
                        Ok(None) => run.time_out(),
                    }
                }
                reason = &mut stop_rx, if run.stop_open => run.stop_requested(reason),
                // The group got SIGKILL from the reader: the leader too,
                // should it have left its group.
                () = oversized.notified(), if !run.killed && run.status.is_none() => run.kill(),
                _ = sleep_until(kill_at), if kill_at.is_some() && !run.killed => run.kill(),
                _ = sleep_until(run.linger), if run.linger.is_some() => {
                    if run.linger_over() {
                        break;
                    }
                }
            }
            if run.status.is_some() && !exit_told {
                // The output is read at once now (see `pipes`).
                exited.notify_one();
                exit_told = true;
            }
        }
        if !io_over {
            // The pipes are still held: take what they hold now, without
            // waiting for their end.
            tokio::select! {
                biased;
                () = &mut io_done => {}
                () = std::future::ready(()) => {}
            }
        }
    }
    let stderr_tail = stderr.finish();
    end_all(&run, pgid).await;
    run.into_exit(stdout, stderr_tail)
}

/// Nothing the tasker started outlives its task: most leave nothing,
/// which a look on this thread tells; killing and reaping what is left
/// blocks, on a blocking thread.
async fn end_all(run: &Run, pgid: i32) {
    run.end_group();
    if run.tracked.nothing_left(pgid) {
        // Nothing to end.
    } else if run.tracked.end_blocks() {
        let tracked = run.tracked.clone();
        let _ = tokio::task::spawn_blocking(move || tracked.end(pgid)).await;
    } else {
        run.tracked.end(pgid);
    }
}

/// The state of [`drive`]'s loop: what happened to the tasker so far and
/// which timers are armed. Each event of the loop is one method.
struct Run {
    pgid: i32,
    kill_grace: Duration,
    /// When the run timeout fires.
    deadline: Option<tokio::time::Instant>,
    timed_out: bool,
    stopped: Option<StopReason>,
    /// When the group got SIGTERM; SIGKILL follows `kill_grace` later.
    term_sent_at: Option<tokio::time::Instant>,
    killed: bool,
    /// Whether the stop channel may still be polled (a oneshot receiver
    /// must not be polled again once it resolved).
    stop_open: bool,
    /// The leader's wait status, once seen.
    status: Option<std::io::Result<ExitStatus>>,
    /// Once the leader has exited, how long its pipes may stay open (held by
    /// a background child) before the rest of its group is killed.
    linger: Option<tokio::time::Instant>,
    /// What keeps track of the processes that leave the group.
    tracked: Tracked,
}

impl Run {
    fn new(pgid: i32, timeout: Option<Duration>, kill_grace: Duration, tracked: Tracked) -> Run {
        Run {
            pgid,
            kill_grace,
            deadline: timeout.map(|t| tokio::time::Instant::now() + t),
            timed_out: false,
            stopped: None,
            term_sent_at: None,
            killed: false,
            stop_open: true,
            status: None,
            linger: None,
            tracked,
        }
    }

    /// When SIGKILL follows the SIGTERM already sent.
    fn kill_at(&self) -> Option<tokio::time::Instant> {
        self.term_sent_at.map(|t| t + self.kill_grace)
    }

    /// The run timeout applies until the tasker exits or is asked to stop.
    fn deadline_armed(&self) -> bool {
        self.deadline.is_some() && self.term_sent_at.is_none() && self.status.is_none()
    }

    /// The leader exited: its pipes get [`LINGER`] to close.
    fn exited(&mut self, status: std::io::Result<ExitStatus>) {
        self.tracked.reaped(self.pgid);
        self.status = Some(status);
        self.linger = Some(tokio::time::Instant::now() + LINGER);
    }

    /// The leader exited but something still holds its stdout or stderr:
    /// end the group; if a process escaped the group, give up on its output
    /// (`true`: stop waiting).
    fn linger_over(&mut self) -> bool {
        if self.killed {
            return true;
        }
        self.kill();
        self.linger = Some(tokio::time::Instant::now() + LINGER);
        false
    }

    fn time_out(&mut self) {
        self.timed_out = true;
        self.terminate();
    }

    /// A stop request (or the engine dropping the sender, which is none).
    /// Once the leader has exited, the tasker is judged by its exit: a stop
    /// that comes while its pipes linger changes nothing.
    fn stop_requested(&mut self, reason: Result<StopReason, oneshot::error::RecvError>) {
        self.stop_open = false;
        if let (Ok(reason), None) = (reason, &self.status) {
            self.stopped = Some(reason);
            if self.term_sent_at.is_none() {
                self.terminate();
            }
        }
    }

    /// SIGTERM to the group, starting the kill grace.
    fn terminate(&mut self) {
        self.signal(Signal::SIGTERM);
        self.term_sent_at = Some(tokio::time::Instant::now());
    }

    fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        self.tracked.kill();
        self.killed = true;
    }

    /// A signal to the tasker's group, and to its leader while it is not
    /// reaped (its number cannot be another process's then): a leader
    /// that moved itself into another group (`setpgid`) is not spared.
    fn signal(&self, sig: Signal) {
        signal_group(self.pgid, sig);
        if self.status.is_none() && self.pgid > 0 {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pgid), sig);
        }
    }

    /// Nothing of the tasker's group outlives its task (its leader has
    /// exited: only what it left behind is hit).
    fn end_group(&self) {
        signal_group(self.pgid, Signal::SIGKILL);
    }

    /// The tasker's [`Exit`] from the loop's state and what it wrote.
    fn into_exit(self, stdout: Stdout, stderr_tail: Vec<String>) -> Exit {
        match self.status {
            Some(Ok(status)) => Exit::Exited {
                status,
                stdout: stdout.bytes,
                oversized: stdout.oversized,
                stderr_tail,
                timed_out: self.timed_out,
                stopped: self.stopped,
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
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
