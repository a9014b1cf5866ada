//! A started tasker process until it is reaped: its exit watched through
//! a pidfd on the runtime (or, on kernels without pidfds, `SIGCHLD`).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// A started process, not yet reaped.
pub struct Child {
    pub(super) pid: i32,
    pub(super) exit: ExitWatch,
    pub(super) status: Option<ExitStatus>,
}

pub(super) enum ExitWatch {
    Pidfd(AsyncFd<OwnedFd>),
    Sigchld(Signal),
}

/// Reaps a child that failed before its exec.
pub(super) fn reap(pid: i32) {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a plain int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

pub(super) fn watch_exit(pid: i32) -> io::Result<ExitWatch> {
    // SAFETY: pidfd_open takes a pid and flags; its result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: a descriptor just made, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: an `OwnedFd`, open and the same for the `AsyncFd`'s life.
        let watched = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
        return watched.map(ExitWatch::Pidfd).map_err(|e| e.into_parts().1);
    }
    Ok(ExitWatch::Sigchld(signal(SignalKind::child())?))
}

impl Child {
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Its wait status if it has exited (it is reaped then).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        reaped(self.pid, &mut self.status)
    }

    /// Waits for it to exit, and reaps it. With a pidfd, nothing is asked
    /// before it is readable (an exit before its registration makes it
    /// readable at once).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            match &mut self.exit {
                ExitWatch::Pidfd(fd) => {
                    let mut ready = fd.readable().await?;
                    if let Some(status) = reaped(self.pid, &mut self.status)? {
                        return Ok(status);
                    }
                    ready.clear_ready();
                }
                ExitWatch::Sigchld(sigchld) => {
                    if let Some(status) = reaped(self.pid, &mut self.status)? {
                        return Ok(status);
                    }
                    sigchld.recv().await;
                }
            }
        }
    }
}

impl Drop for Child {
    /// A child dropped before it was reaped (its driver ended early) is
    /// reaped by a thread of its own once it exits, never left a zombie.
    fn drop(&mut self) {
        if matches!(reaped(self.pid, &mut self.status), Ok(None)) {
            let pid = self.pid;
            let _ = std::thread::Builder::new()
                .name("reap".into())
                .spawn(move || reap(pid));
        }
    }
}

/// `status`, or the child's wait status if it has exited since (it is
/// reaped then).
fn reaped(pid: i32, status: &mut Option<ExitStatus>) -> io::Result<Option<ExitStatus>> {
    if status.is_some() {
        return Ok(*status);
    }
    let mut raw = 0;
    // SAFETY: waits for our own child without blocking.
    let r = unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if r == pid {
        *status = Some(ExitStatus::from_raw(raw));
    }
    Ok(*status)
}
