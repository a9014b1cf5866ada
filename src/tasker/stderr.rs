//! A tasker's stderr: split into lines prefixed with the task id, appended
//! to the execution's `.err` file (created only when something arrives),
//! the last lines kept for a failure's reason.

use std::collections::VecDeque;
use std::path::PathBuf;

use tokio::io::AsyncReadExt;

/// How many of the last stderr lines a failure's reason quotes.
pub const STDERR_TAIL_LINES: usize = 5;
/// The longest stderr line kept whole; longer ones are split.
const STDERR_LINE_LIMIT: usize = 64 * 1024;

/// Copies stderr into the `.err` file, each line prefixed, opening the
/// file only when the first byte arrives. Returns the last lines.
pub(super) async fn copy_stderr(
    stderr: Option<tokio::process::ChildStderr>,
    path: PathBuf,
    prefix: String,
) -> Vec<String> {
    use std::io::Write;
    let Some(mut stderr) = stderr else {
        return Vec::new();
    };
    let mut lines = StderrLines::new(prefix);
    // `None` until the first line arrives; then the file, or `None` if refused.
    let mut file: Option<Option<std::fs::File>> = None;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stderr.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // One write per chunk read, however many lines it holds.
        let out = lines.push(&chunk[..n], false);
        if !out.is_empty() {
            if let Some(f) = file.get_or_insert_with(|| open_err_file(&path)) {
                let _ = f.write_all(&out);
            }
        }
    }
    let out = lines.push(&[], true);
    if !out.is_empty() {
        if let Some(f) = file.get_or_insert_with(|| open_err_file(&path)) {
            let _ = f.write_all(&out);
        }
    }
    lines.tail.into_iter().collect()
}

/// Opens the `.err` file for appending without following a link and
/// without blocking (a FIFO put in its place never holds the engine up);
/// anything but a regular file is refused, and its lines are dropped.
fn open_err_file(path: &std::path::Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if file.metadata().ok()?.is_file() {
        Some(file)
    } else {
        tracing::warn!("{} is not a regular file; stderr not kept", path.display());
        None
    }
}

/// Splits a tasker's stderr into prefixed lines (long lines cut at
/// [`STDERR_LINE_LIMIT`]) and keeps the last few for a failure's reason.
struct StderrLines {
    prefix: String,
    pending: Vec<u8>,
    tail: VecDeque<String>,
}

impl StderrLines {
    fn new(prefix: String) -> StderrLines {
        StderrLines {
            prefix,
            pending: Vec::new(),
            tail: VecDeque::new(),
        }
    }

    /// Takes bytes read; returns the complete lines among them, prefixed
    /// (with `end`, also the unterminated rest).
    fn push(&mut self, bytes: &[u8], end: bool) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::with_capacity(self.pending.len() + 64);
        let mut start = 0;
        let data = std::mem::take(&mut self.pending);
        loop {
            let rest = &data[start..];
            let cut = match rest.iter().position(|b| *b == b'\n') {
                Some(i) if i <= STDERR_LINE_LIMIT => Some((i, i + 1)),
                _ if rest.len() > STDERR_LINE_LIMIT => Some((STDERR_LINE_LIMIT, STDERR_LINE_LIMIT)),
                _ if end && !rest.is_empty() => Some((rest.len(), rest.len())),
                _ => None,
            };
            let Some((len, consumed)) = cut else { break };
            let line = &rest[..len];
            out.extend_from_slice(self.prefix.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(line);
            out.push(b'\n');
            if self.tail.len() == STDERR_TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail
                .push_back(String::from_utf8_lossy(&line[..line.len().min(512)]).into_owned());
            start += consumed;
        }
        self.pending = data[start..].to_vec();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_lines_are_prefixed_cut_and_tailed() {
        let mut l = StderrLines::new("t1".into());
        assert_eq!(l.push(b"one\ntw", false), b"t1: one\n");
        assert_eq!(l.push(b"o\n\nthree", false), b"t1: two\nt1: \n");
        assert_eq!(l.push(b"", true), b"t1: three\n");
        assert_eq!(l.tail, ["one", "two", "", "three"]);
        let long = vec![b'x'; STDERR_LINE_LIMIT + 10];
        let out = l.push(&long, false);
        assert_eq!(out.len(), 4 + STDERR_LINE_LIMIT + 1);
        assert_eq!(l.push(b"", true).len(), 4 + 10 + 1);
        assert_eq!(l.tail.len(), STDERR_TAIL_LINES);
    }
}
