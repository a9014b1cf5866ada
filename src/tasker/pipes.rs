//! A tasker's three pipes, from the engine's side: made before the spawn
//! (stdin filled as far as its pipe holds), then read until their end.
//!
//! Most taskers exit within a few milliseconds. Their output is read once,
//! after the exit, straight from the pipes, which are never registered
//! with the runtime: that saves the registrations and removals of stdout
//! and stderr and the loop's wake-ups for their writes and their ends. A
//! tasker still running after [`UNWATCHED`], or one whose payload did not
//! fit in its stdin pipe, has its pipes watched as they come; so does one
//! that left something behind holding them open (its pipes then linger,
//! see `process`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe::Receiver;
use tokio::sync::Notify;

use super::reply::REPLY_LIMIT;
use super::stderr::{copy_stderr, StderrCopy};

/// How long a running tasker's output may wait in its pipes before they
/// are watched: a tasker that writes more than a pipe holds (64 KiB)
/// waits about this long once (more when the engine is busy), and its
/// stderr lines reach the `.err` file about this late.
pub(super) const UNWATCHED: Duration = Duration::from_millis(10);

/// The most read from one pipe at once after the exit: more than a pipe
/// holds, so that the output of a tasker that exited is read to its end,
/// but a bound, since the read runs on the engine's only thread and
/// something the tasker left behind may keep writing (that pipe is then
/// watched, and its writer ended by the pipes' linger, see `process`).
const READ_AT_ONCE: usize = 256 * 1024;

/// The engine's ends of a tasker's pipes.
pub(super) struct ChildIo {
    /// The write end of stdin, when the payload did not fit in the pipe.
    pub(super) stdin: Option<OwnedFd>,
    /// The read ends of stdout and stderr (non-blocking).
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
}

/// What a tasker wrote on stdout, so far.
#[derive(Default)]
pub(super) struct Stdout {
    pub(super) bytes: Vec<u8>,
    /// It went over [`REPLY_LIMIT`] (the group was killed, the bytes
    /// dropped).
    pub(super) oversized: bool,
}

impl Stdout {
    /// Takes bytes read; over the limit, kills the tasker's group, drops
    /// the bytes and returns `false` (nothing more is to be read).
    fn take(&mut self, bytes: &[u8], pgid: i32) -> bool {
        self.bytes.extend_from_slice(bytes);
        if self.bytes.len() > REPLY_LIMIT {
            self.over_limit(pgid);
            return false;
        }
        true
    }

    fn over_limit(&mut self, pgid: i32) {
        self.oversized = true;
        self.bytes = Vec::new();
        super::process::signal_group(pgid, Signal::SIGKILL);
    }
}

/// Where the tasker's output goes, and what the driver tells the reader.
pub(super) struct Sinks<'a> {
    pub(super) stdout: &'a mut Stdout,
    pub(super) stderr: &'a mut StderrCopy,
    /// Told by the reader when stdout went over the limit (the driver
    /// kills the leader too, which may have left its group).
    pub(super) oversized: &'a Notify,
    /// Told by the driver once the tasker has exited.
    pub(super) exited: &'a Notify,
}

/// All of the tasker's I/O until the ends of its pipes: what is read lands
/// in the sinks as it comes. Unwatched until the tasker exits (then read
/// at once) or [`UNWATCHED`] passes; then stdin written while stdout is
/// read and stderr copied, so that a tasker blocked on one pipe never
/// stalls the others.
pub(super) async fn read_output(mut io: ChildIo, input: Vec<u8>, pgid: i32, sinks: Sinks<'_>) {
    if io.stdin.is_none() {
        tokio::select! {
            () = sinks.exited.notified() => read_now(&mut io, pgid, sinks.stdout, sinks.stderr),
            () = tokio::time::sleep(UNWATCHED) => {}
        }
    }
    tokio::join!(
        write_stdin(io.stdin, input),
        read_reply(
            io.stdout.and_then(receiver),
            pgid,
            sinks.stdout,
            sinks.oversized
        ),
        copy_stderr(io.stderr.and_then(receiver), sinks.stderr)
    );
}

/// Reads what stdout and stderr hold now; a pipe read to its end is
/// dropped (closed), one still held open by something else is left to be
/// watched.
fn read_now(io: &mut ChildIo, pgid: i32, stdout: &mut Stdout, stderr: &mut StderrCopy) {
    if io
        .stdout
        .as_ref()
        .is_some_and(|fd| read_available(fd, |b| stdout.take(b, pgid)))
    {
        io.stdout = None;
    }
    if io.stderr.as_ref().is_some_and(|fd| {
        read_available(fd, |b| {
            stderr.take_chunk(b);
            true
        })
    }) {
        io.stderr = None;
    }
}

/// Reads a non-blocking pipe until it would block or [`READ_AT_ONCE`]
/// bytes were read (`false`: more may come), or its end (`true`; also on
/// an error, or when `take` wants no more: nothing more will be read from
/// it).
fn read_available(fd: &OwnedFd, mut take: impl FnMut(&[u8]) -> bool) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    let mut read = 0;
    while read < READ_AT_ONCE {
        match nix::unistd::read(fd.as_raw_fd(), &mut chunk) {
            Ok(0) => return true,
            Ok(n) if !take(&chunk[..n]) => return true,
            Ok(n) => read += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return false,
            Err(_) => return true,
        }
    }
    false
}

/// A close-on-exec pipe for a tasker's output: (read end, the engine's,
/// which does not block; write end, the tasker's, which does).
pub(super) fn output_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    fcntl(read.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok((read, write))
}

/// The engine's end of a tasker's output pipe (from [`output_pipe`]: a
/// pipe's read end, non-blocking, which tokio's checks would ask again),
/// on the runtime; none if it cannot be registered (the descriptor is then
/// closed: the tasker's next write to it gets `SIGPIPE`).
fn receiver(fd: OwnedFd) -> Option<Receiver> {
    Receiver::from_owned_fd_unchecked(fd).ok()
}

/// The tasker's stdin: a pipe the payload is written into before the
/// spawn, as far as the pipe holds it (64 KiB unless the user's pipes are
/// short of pages), so that most taskers find all of it there and end of
/// file after it, and nothing of stdin is left for the engine to watch.
/// Returns the read end (the child's) and, when some of the payload did
/// not fit, the write end; `input` keeps what is still to write.
pub(super) fn stdin_pipe(input: &mut Vec<u8>) -> std::io::Result<(OwnedFd, Option<OwnedFd>)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // A fresh pipe holds at least a page: up to PIPE_BUF bytes go in
    // whole by one blocking write. Only a longer payload needs the pipe
    // non-blocking, so that a full pipe says so instead of waiting.
    if input.len() > libc::PIPE_BUF {
        fcntl(write.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    }
    let mut written = 0;
    while written < input.len() {
        match nix::unistd::write(&write, &input[written..]) {
            Ok(n) => written += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    input.drain(..written);
    Ok((read, (!input.is_empty()).then_some(write)))
}

/// stdin: what did not fit in the pipe before the spawn, written
/// concurrently; a tasker that exits without reading is not an error
/// (EPIPE is ignored).
async fn write_stdin(stdin: Option<OwnedFd>, rest: Vec<u8>) {
    let Some(fd) = stdin else {
        return;
    };
    if let Ok(mut pipe) = tokio::net::unix::pipe::Sender::from_owned_fd(fd) {
        let _ = pipe.write_all(&rest).await;
    }
}

/// stdout: read up to the reply limit, as it comes. A tasker that writes
/// more has its group killed and its reply dropped (and `oversized` told:
/// the driver kills the leader too, which may have left its group).
async fn read_reply(stdout: Option<Receiver>, pgid: i32, into: &mut Stdout, oversized: &Notify) {
    let Some(mut stdout) = stdout else {
        return;
    };
    loop {
        if into.bytes.capacity() - into.bytes.len() < 8 * 1024 {
            into.bytes.reserve(8 * 1024);
        }
        match stdout.read_buf(&mut into.bytes).await {
            Ok(0) | Err(_) => break,
            Ok(_) if into.bytes.len() > REPLY_LIMIT => {
                into.over_limit(pgid);
                oversized.notify_one();
                break;
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn read_all(fd: OwnedFd) -> Vec<u8> {
        let mut out = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn a_payload_that_fits_is_all_in_the_pipe_before_the_spawn() {
        let mut input = br#"{"i":1}"#.to_vec();
        let (read, rest) = stdin_pipe(&mut input).unwrap();
        assert!(rest.is_none() && input.is_empty());
        // The write end is closed: the reader gets the payload, then EOF.
        assert_eq!(read_all(read), br#"{"i":1}"#);
    }

    #[test]
    fn a_payload_of_pipe_buf_bytes_goes_in_whole_by_a_blocking_write() {
        let payload = vec![b'x'; libc::PIPE_BUF];
        let mut input = payload.clone();
        let (read, rest) = stdin_pipe(&mut input).unwrap();
        assert!(rest.is_none() && input.is_empty());
        assert_eq!(read_all(read), payload);
    }

    #[test]
    fn what_does_not_fit_is_kept_with_the_write_end() {
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut input = payload.clone();
        let (read, rest) = stdin_pipe(&mut input).unwrap();
        let rest_fd = rest.expect("a megabyte does not fit in a pipe");
        assert!(!input.is_empty() && input.len() < payload.len());
        let tail = input.clone();
        // The rest written as the engine would, while the reader reads.
        let writer = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(write_stdin(Some(rest_fd), tail));
        });
        let got = read_all(read);
        writer.join().unwrap();
        assert_eq!(got, payload);
    }

    /// After the exit, a pipe is read to its end without the runtime; one
    /// still held open is read as far as it holds and left to be watched.
    #[test]
    fn after_the_exit_a_pipe_is_read_at_once_and_one_held_open_is_left() {
        let (read, write) = output_pipe().unwrap();
        let mut w = std::fs::File::from(write);
        w.write_all(b"{\"a\":1}").unwrap();
        let mut got = Vec::new();
        // Still held open (by `w`): what it holds, then "would block".
        assert!(!read_available(&read, |b| {
            got.extend_from_slice(b);
            true
        }));
        assert_eq!(got, b"{\"a\":1}");
        w.write_all(b" more").unwrap();
        drop(w);
        // Closed: the rest, then its end.
        assert!(read_available(&read, |b| {
            got.extend_from_slice(b);
            true
        }));
        assert_eq!(got, b"{\"a\":1} more");
    }

    /// A pipe that never runs dry (a writer left behind) is read only up
    /// to the bound, and left to be watched.
    #[test]
    fn a_pipe_that_keeps_filling_is_read_only_up_to_a_bound() {
        let (read, write) = output_pipe().unwrap();
        let mut w = std::fs::File::from(write);
        w.write_all(&[b'x'; 16 * 1024]).unwrap();
        let mut got = 0;
        // Refilled as it is read: it would never say "would block".
        let done = read_available(&read, |b| {
            got += b.len();
            w.write_all(&vec![b'x'; b.len()]).unwrap();
            true
        });
        assert!(!done);
        assert!(
            (READ_AT_ONCE..READ_AT_ONCE + 16 * 1024).contains(&got),
            "{got}"
        );
    }

    /// Over the reply limit, the bytes are dropped and the reading stops.
    #[test]
    fn a_reply_over_the_limit_read_at_once_is_dropped() {
        let mut stdout = Stdout::default();
        let big = vec![b'x'; REPLY_LIMIT];
        assert!(stdout.take(&big, 0));
        assert!(!stdout.take(b"y", 0));
        assert!(stdout.oversized && stdout.bytes.is_empty());
    }
}
