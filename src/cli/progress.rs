//! The progress line of `spoolflow run --drain` on a terminal (issue 9,
//! item 11): `12 done, 1 failed, 2 running, 40 queued, 8.3/s`, redrawn in
//! place on stderr four times a second by a thread of its own, from the
//! counters the engine keeps (`spoolflow::engine::Progress`), so that
//! drawing costs the engine's loop nothing. Log lines clear it before they
//! are written ([`LogWriter`]) and the next tick draws it again below them.
//! Off when stderr is not a terminal.

use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spoolflow::engine::{Options, Progress};

/// How often the line is redrawn.
const TICK: Duration = Duration::from_millis(250);
/// Moves to the start of the line and clears it.
const CLEAR: &[u8] = b"\r\x1b[2K";

/// Whether a progress line can be drawn: stderr is a terminal.
pub fn wanted() -> bool {
    std::io::stderr().is_terminal()
}

/// The thread that draws the line.
pub struct Drawer {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Drawer {
    /// Gives the engine its counters and starts drawing them.
    pub fn start(options: &mut Options) -> Drawer {
        let progress = Arc::new(Progress::default());
        options.progress = Some(progress.clone());
        let (stop, rx) = mpsc::channel::<()>();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            // A tick, not a synchronisation: the line is redrawn until the
            // engine is done (the sender sends or drops).
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(TICK) {
                draw(&progress, started, false);
            }
            draw(&progress, started, true);
        });
        Drawer { stop, thread }
    }

    /// Draws the last line (kept, with a newline) and stops.
    pub fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn draw(progress: &Progress, started: Instant, last: bool) {
    let line = progress.counts().line(started.elapsed());
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(CLEAR);
    let _ = err.write_all(line.as_bytes());
    if last {
        let _ = err.write_all(b"\n");
    }
    let _ = err.flush();
}

/// stderr for one log event: with a progress line on screen, the line is
/// cleared first (the event then starts at the left margin).
pub struct LogWriter {
    err: std::io::StderrLock<'static>,
    clear: bool,
}

impl LogWriter {
    pub fn new(progress: bool) -> LogWriter {
        LogWriter {
            err: std::io::stderr().lock(),
            clear: progress,
        }
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.clear {
            self.clear = false;
            self.err.write_all(CLEAR)?;
        }
        self.err.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.err.flush()
    }
}
