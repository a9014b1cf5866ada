//! A tasker's stderr: split into lines prefixed with the task id, appended
//! to the execution's `.err` file (created only when something arrives),
//! the last lines kept for a failure's reason. Each run's share of the file
//! is capped: its first [`ERR_HEAD`] bytes are written as they arrive, its
//! last [`ERR_TAIL`] bytes are kept in memory and written when the run
//! ends, after one line saying how many bytes were cut between them.

use std::collections::VecDeque;
use std::path::PathBuf;

use tokio::io::AsyncReadExt;

/// How many of the last stderr lines a failure's reason quotes.
pub const STDERR_TAIL_LINES: usize = 5;
/// The longest stderr line kept whole; longer ones are split.
const STDERR_LINE_LIMIT: usize = 64 * 1024;
/// How much of a run's stderr lines the `.err` file keeps from their
/// beginning (written as they arrive)...
pub const ERR_HEAD: usize = 512 * 1024;
/// ... and from their end (written when the run ends).
pub const ERR_TAIL: usize = 512 * 1024;

/// One run's stderr on its way to the `.err` file. Owned by the tasker's
/// driver, so that what was read survives the reading: [`finish`] writes
/// the rest even when the pipe never reached its end (a detached child
/// holding it).
///
/// [`finish`]: StderrCopy::finish
pub(super) struct StderrCopy {
    path: PathBuf,
    lines: StderrLines,
    cap: Cap,
    /// `None` until the first line arrives; then the file, or `None` if
    /// refused.
    file: Option<Option<std::fs::File>>,
}

impl StderrCopy {
    pub(super) fn new(path: PathBuf, prefix: String) -> StderrCopy {
        StderrCopy {
            path,
            lines: StderrLines::new(prefix),
            cap: Cap::new(ERR_HEAD, ERR_TAIL),
            file: None,
        }
    }

    /// Takes bytes read (with `end`, the unterminated rest too): one write
    /// per chunk read, however many lines it holds.
    fn take(&mut self, bytes: &[u8], end: bool) {
        let out = self.lines.push(bytes, end);
        let head = self.cap.admit(&out);
        self.write(head);
    }

    /// A chunk read.
    pub(super) fn take_chunk(&mut self, bytes: &[u8]) {
        self.take(bytes, false);
    }

    fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        if bytes.is_empty() {
            return;
        }
        let path = &self.path;
        if let Some(f) = self.file.get_or_insert_with(|| open_err_file(path)) {
            let _ = f.write_all(bytes);
        }
    }

    /// The run ended: writes its last line, the kept end of its stderr
    /// (after the line saying what was cut), and returns its last lines.
    pub(super) fn finish(mut self) -> Vec<String> {
        self.take(&[], true);
        let rest = self.cap.end(&self.lines.prefix);
        self.write(&rest);
        self.lines.tail.into_iter().collect()
    }
}

/// Copies stderr into `copy` until its end (or until the caller stops
/// polling: what was read is in `copy` already).
pub(super) async fn copy_stderr(
    stderr: Option<tokio::net::unix::pipe::Receiver>,
    copy: &mut StderrCopy,
) {
    let Some(mut stderr) = stderr else {
        return;
    };
    // Not zeroed: most taskers write nothing, and 64 KiB of memset per
    // task showed in the profile.
    let mut chunk: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        chunk.clear();
        match stderr.read_buf(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => copy.take(&chunk[..n], false),
        };
    }
}

/// Copies a finished run's stderr file (a Slurm job's, SPEC 14) into the
/// `.err` file as a local tasker's pipe would be, within the same caps;
/// returns its last lines. Read in chunks: the file may be of any size.
pub(crate) fn copy_stderr_file(
    from: &std::path::Path,
    err_path: PathBuf,
    prefix: String,
) -> Vec<String> {
    use std::io::Read;
    let mut copy = StderrCopy::new(err_path, prefix);
    if let Ok(mut f) = crate::userfile::open(from) {
        let mut chunk = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = f.read(&mut chunk) {
            copy.take(&chunk[..n], false);
        }
    }
    copy.finish()
}

/// What of a run's stderr lines reaches the `.err` file: the first `head`
/// bytes (whole lines) at once, the last `tail` bytes at the end, and the
/// count of what was cut between them. Pure: bytes in, bytes out.
struct Cap {
    head_max: usize,
    tail_max: usize,
    /// Room left in the head; `None` once the head is closed.
    head_left: Option<usize>,
    /// The last bytes past the head.
    tail: VecDeque<u8>,
    /// Bytes cut so far.
    cut: u64,
    /// Whether the last byte cut ended a line (what is kept then starts
    /// with a whole line).
    cut_at_line_end: bool,
}

impl Cap {
    fn new(head_max: usize, tail_max: usize) -> Cap {
        Cap {
            head_max,
            tail_max,
            head_left: Some(head_max),
            tail: VecDeque::new(),
            cut: 0,
            cut_at_line_end: true,
        }
    }

    /// Takes whole prefixed lines; returns the part to write now.
    fn admit<'a>(&mut self, out: &'a [u8]) -> &'a [u8] {
        let Some(left) = self.head_left else {
            self.keep(out);
            return &[];
        };
        if out.len() <= left {
            self.head_left = Some(left - out.len());
            return out;
        }
        // The head ends with the last whole line that fits.
        let fits = out[..left]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        self.head_left = None;
        self.keep(&out[fits..]);
        &out[..fits]
    }

    /// Keeps the last `tail_max` bytes past the head; counts what goes.
    fn keep(&mut self, bytes: &[u8]) {
        let skip = bytes.len().saturating_sub(self.tail_max);
        let (gone, kept) = bytes.split_at(skip);
        let over = (self.tail.len() + kept.len()).saturating_sub(self.tail_max);
        if let Some(last) = gone.last() {
            self.cut_at_line_end = *last == b'\n';
        } else if over > 0 {
            self.cut_at_line_end = self.tail[over - 1] == b'\n';
        }
        self.tail.drain(..over);
        self.cut += (skip + over) as u64;
        self.tail.extend(kept);
    }

    /// At the end: what was kept past the head, after a line saying how
    /// many bytes were cut when some were (from a line's start).
    fn end(&mut self, prefix: &str) -> Vec<u8> {
        let mut tail: Vec<u8> = self.tail.drain(..).collect();
        if self.cut == 0 {
            return tail;
        }
        if !self.cut_at_line_end {
            // The first line kept lost its beginning: it goes too.
            let start = tail
                .iter()
                .position(|b| *b == b'\n')
                .map_or(tail.len(), |i| i + 1);
            tail.drain(..start);
            self.cut += start as u64;
        }
        let mut out = format!(
            "{prefix}: [spoolflow] {} bytes cut here: the .err file keeps the first {} KiB and the last {} KiB of each run's stderr\n",
            self.cut,
            self.head_max / 1024,
            self.tail_max / 1024
        )
        .into_bytes();
        out.extend(tail);
        out
    }
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

    /// Runs `chunks` through a cap of `head` and `tail` bytes: what the
    /// file gets.
    fn capped(head: usize, tail: usize, chunks: &[&[u8]]) -> Vec<u8> {
        let mut cap = Cap::new(head, tail);
        let mut file = Vec::new();
        for c in chunks {
            file.extend_from_slice(cap.admit(c));
        }
        file.extend(cap.end("t"));
        file
    }

    #[test]
    fn what_fits_is_kept_whole() {
        assert_eq!(
            capped(8, 8, &[b"a\nb\n", b"cc\n", b"dd\n"]),
            b"a\nb\ncc\ndd\n"
        );
        assert_eq!(capped(8, 8, &[]), b"");
    }

    #[test]
    fn the_middle_is_cut_at_line_ends_and_counted() {
        // head 6: "h1\nh2\n"; then 6 lines of 3 bytes, of which a tail of
        // 7 holds "\nl5\nl6\n": the end of "l4\n" goes too.
        let lines: Vec<Vec<u8>> = (1..=6).map(|i| format!("l{i}\n").into_bytes()).collect();
        let mut chunks: Vec<&[u8]> = vec![b"h1\nh2\n"];
        chunks.extend(lines.iter().map(Vec::as_slice));
        let file = String::from_utf8(capped(6, 7, &chunks)).unwrap();
        assert_eq!(
            file,
            "h1\nh2\nt: [spoolflow] 12 bytes cut here: the .err file keeps the first 0 KiB and the last 0 KiB of each run's stderr\nl5\nl6\n"
        );
    }

    #[test]
    fn a_cut_that_falls_on_a_line_end_keeps_the_next_line() {
        // tail 6 holds exactly "l5\nl6\n": nothing more goes.
        let file = capped(3, 6, &[b"h1\n", b"l4\nl5\nl6\n"]);
        assert!(
            file.starts_with(b"h1\nt: [spoolflow] 3 bytes cut here"),
            "{}",
            String::from_utf8_lossy(&file)
        );
        assert!(file.ends_with(b"\nl5\nl6\n"));
        // One chunk larger than the whole tail.
        let file = capped(3, 6, &[b"h1\nl3\nl4\nl5\nl6\n"]);
        assert!(
            file.starts_with(b"h1\nt: [spoolflow] 6 bytes cut here"),
            "{}",
            String::from_utf8_lossy(&file)
        );
        assert!(file.ends_with(b"\nl5\nl6\n"));
    }

    #[test]
    fn the_head_stops_before_a_line_that_does_not_fit() {
        // "long-line\n" does not fit the 6 bytes left after "h\n": the head
        // closes, and everything after it is the tail's.
        let file = capped(8, 32, &[b"h\n", b"long-line\nx\n"]);
        assert_eq!(file, b"h\nlong-line\nx\n");
    }
}
