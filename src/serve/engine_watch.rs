//! Whether an engine runs, told to open pages as it changes: a thread
//! waits for the running engine's process to end (a pidfd) and for the
//! engine's pid record (`var/run/engine.lock`, which a starting engine
//! writes) to change, which the spool's watcher tells it through a
//! socket. Either way the pages get a `change` event and read the
//! engine's state again. Nothing is polled on a timer.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use spoolflow::layout::Root;

use super::sse::Live;

/// What the spool's watcher pokes when the pid record changed.
pub struct Nudge(UnixStream);

impl Nudge {
    pub fn poke(&self) {
        // A byte already waiting says the same: a full buffer is fine.
        let _ = (&self.0).write(&[1]);
    }
}

/// Starts the thread.
pub fn start(root: Root, live: Arc<Live>) -> Result<Nudge, String> {
    let (tx, rx) = UnixStream::pair().map_err(|e| format!("cannot watch the engine: {e}"))?;
    for s in [&tx, &rx] {
        s.set_nonblocking(true)
            .map_err(|e| format!("cannot watch the engine: {e}"))?;
    }
    std::thread::Builder::new()
        .name("serve-engine".into())
        .spawn(move || watch(&root, &live, rx))
        .map_err(|e| format!("cannot start the engine watcher: {e}"))?;
    Ok(Nudge(tx))
}

/// Waits for the engine of the moment to end, or for the pid record to
/// change (a new engine), and tells the pages; for ever.
fn watch(root: &Root, live: &Live, mut nudged: UnixStream) {
    use rustix::event::{poll, PollFd, PollFlags};
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    loop {
        let engine = spoolflow::read::engine::engine(root)
            .and_then(|e| Pid::from_raw(e.pid))
            .and_then(|pid| pidfd_open(pid, PidfdFlags::empty()).ok());
        let mut fds = vec![PollFd::new(&nudged, PollFlags::IN)];
        if let Some(fd) = &engine {
            fds.push(PollFd::new(fd, PollFlags::IN));
        }
        match poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::warn!("the dashboard no longer follows the engine's start and stop: {e}");
                return;
            }
        }
        let ended = fds.get(1).is_some_and(|f| !f.revents().is_empty());
        let poked = !fds[0].revents().is_empty();
        drop(fds);
        if poked {
            let mut sink = [0u8; 64];
            match nudged.read(&mut sink) {
                // The watcher is gone: so is the dashboard.
                Ok(0) => return,
                _ => while nudged.read(&mut sink).is_ok_and(|n| n > 0) {},
            }
        }
        if ended || poked {
            live.push_change("engine");
        }
    }
}
