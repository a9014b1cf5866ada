//! The taskers registry `var/run/taskers`: the process group of each
//! running tasker, in one fixed-size slot per worker, so that the next
//! start finds the orphans of an engine that died without scanning every
//! process (see `recovery::kill_orphans`). A slot is written (one `pwrite`,
//! from the spawning thread) when a tasker starts and simply overwritten
//! by the next one: a stale entry names a group that is gone, or one that
//! start-up checks before it kills anything. No fsync: a machine crash
//! kills the processes too.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Bytes per slot: a decimal pgid, space-padded, and a newline.
pub const SLOT: usize = 16;

/// The slots, and which are free.
pub struct Registry {
    file: Option<Arc<File>>,
    free: Vec<usize>,
    next: usize,
}

/// Writes slots from any thread.
#[derive(Clone)]
pub struct RegistryWriter(Option<Arc<File>>);

impl Registry {
    /// Opens (and empties) the registry; without it (an unwritable
    /// `var/run/`), start-up falls back on scanning processes.
    pub fn open(path: &Path, workers: usize) -> Registry {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(|e| {
                tracing::warn!("cannot open {}: {e}", path.display());
                // An old registry must not be trusted at the next start.
                let _ = std::fs::remove_file(path);
            })
            .ok()
            .map(Arc::new);
        Registry {
            file,
            free: (0..workers.max(1)).rev().collect(),
            next: workers.max(1),
        }
    }

    /// A free slot (a new one past the workers if none is free, which a
    /// worker bound makes rare).
    pub fn take_slot(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    pub fn give_slot(&mut self, slot: usize) {
        self.free.push(slot);
    }

    pub fn writer(&self) -> RegistryWriter {
        RegistryWriter(self.file.clone())
    }
}

/// What a slot says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A tasker is being spawned: its group is not known yet.
    Spawning,
    /// The process group of the tasker that runs (or ran) in the slot.
    Group(i32),
}

/// How a slot spells [`Entry::Spawning`].
const SPAWNING: &str = "spawning";

impl RegistryWriter {
    /// Marks `slot` as spawning (before the spawn: an engine that dies
    /// during it leaves a mark that makes the next start look harder).
    pub fn spawning(&self, slot: usize) {
        self.write(slot, SPAWNING);
    }

    /// Records the process group running in `slot`.
    pub fn record(&self, slot: usize, pgid: i32) {
        self.write(slot, &pgid.to_string());
    }

    /// Empties `slot` (the spawn failed).
    pub fn clear(&self, slot: usize) {
        self.write(slot, "");
    }

    fn write(&self, slot: usize, text: &str) {
        if let Some(f) = &self.0 {
            let mut line = format!("{text:>width$}", width = SLOT - 1).into_bytes();
            line.push(b'\n');
            let _ = f.write_all_at(&line, (slot * SLOT) as u64);
        }
    }
}

/// The entries of a registry file (`None`: no readable file).
pub fn read(path: &Path) -> Option<Vec<Entry>> {
    let bytes = std::fs::read(path).ok()?;
    let entry = |chunk: &[u8]| -> Option<Entry> {
        match std::str::from_utf8(chunk).ok()?.trim() {
            SPAWNING => Some(Entry::Spawning),
            text => text.parse().ok().filter(|p| *p > 1).map(Entry::Group),
        }
    };
    Some(bytes.chunks(SLOT).filter_map(entry).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_written_in_place_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("taskers");
        let mut r = Registry::open(&path, 2);
        let (a, b) = (r.take_slot(), r.take_slot());
        assert_ne!(a, b);
        let w = r.writer();
        w.spawning(a);
        w.record(b, 77);
        assert_eq!(read(&path).unwrap(), [Entry::Spawning, Entry::Group(77)]);
        w.record(a, 4343);
        assert_eq!(read(&path).unwrap(), [Entry::Group(4343), Entry::Group(77)]);
        w.clear(b);
        assert_eq!(read(&path).unwrap(), [Entry::Group(4343)]);
        r.give_slot(a);
        assert_eq!(r.take_slot(), a);
        // A third start past the workers gets a slot of its own.
        let c = r.take_slot();
        assert!(c != a && c != b);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * SLOT as u64);
        drop(r);
        assert_eq!(read(&tmp.path().join("missing")), None);
    }
}
