//! The taskers registry `var/run/taskers`: the process group of each
//! running tasker, in one fixed-size slot per worker, so that the next
//! start finds the orphans of an engine that died without scanning every
//! process (see `recovery::kill_orphans`). A slot is written (one `pwrite`,
//! from the spawning thread) when a tasker starts and simply overwritten
//! by the next one: a stale entry names a group that is gone, or one that
//! start-up checks before it kills anything. No fsync: a machine crash
//! kills the processes too. Should an operator remove the file (or all of
//! `var/run/`), the running engine writes it again from the slots it keeps
//! in memory ([`Registry::keep`]). Start-up reads it only once it holds the
//! engine lock, so the groups it names are a dead engine's.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes per slot: a decimal pgid, space-padded, and a newline.
pub const SLOT: usize = 16;

/// The slots, and which are free.
pub struct Registry {
    path: PathBuf,
    shared: Arc<Mutex<Slots>>,
    free: Vec<usize>,
    next: usize,
}

/// The open file and what each slot holds (to write it all again).
struct Slots {
    file: Option<File>,
    lines: Vec<[u8; SLOT]>,
}

/// Writes slots from any thread.
#[derive(Clone)]
pub struct RegistryWriter(Arc<Mutex<Slots>>);

/// Creates (empty) the registry file; `None` when it cannot be (an
/// unwritable `var/run/`): start-up then falls back on scanning processes.
fn create(path: &Path) -> Option<File> {
    std::fs::OpenOptions::new()
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
}

impl Registry {
    /// Opens (and empties) the registry.
    pub fn open(path: &Path, workers: usize) -> Registry {
        let slots = Slots {
            file: create(path),
            lines: Vec::new(),
        };
        Registry {
            path: path.to_path_buf(),
            shared: Arc::new(Mutex::new(slots)),
            free: (0..workers.max(1)).rev().collect(),
            next: workers.max(1),
        }
    }

    /// Writes the registry again, whole, when its file is no longer at its
    /// path (removed, or replaced by something else).
    pub fn keep(&self) {
        let Ok(mut slots) = self.shared.lock() else {
            return;
        };
        let at_path = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let open = slots
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| (m.dev(), m.ino()));
        if at_path.is_some() && at_path == open {
            return;
        }
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        slots.file = create(&self.path);
        if let Some(f) = &slots.file {
            let bytes: Vec<u8> = slots.lines.iter().flatten().copied().collect();
            let _ = f.write_all_at(&bytes, 0);
            if open.is_some() {
                tracing::warn!(
                    "{} was removed while the engine ran; wrote it again",
                    self.path.display()
                );
            }
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
        RegistryWriter(self.shared.clone())
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
        let Ok(mut slots) = self.0.lock() else {
            return;
        };
        let mut line = [b' '; SLOT];
        let text = text.as_bytes();
        let n = text.len().min(SLOT - 1);
        line[SLOT - 1 - n..SLOT - 1].copy_from_slice(&text[..n]);
        line[SLOT - 1] = b'\n';
        if slots.lines.len() <= slot {
            slots.lines.resize(slot + 1, [b' '; SLOT]);
        }
        if slots.lines[slot] == line {
            return;
        }
        slots.lines[slot] = line;
        if let Some(f) = &slots.file {
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
        // Removed: written again, whole.
        std::fs::remove_file(&path).unwrap();
        r.keep();
        assert_eq!(read(&path).unwrap(), [Entry::Group(4343)]);
        drop(r);
        assert_eq!(read(&tmp.path().join("missing")), None);
    }
}
