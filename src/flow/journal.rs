//! The progress journal, pure side. A flow's progress is written as a
//! snapshot (the `progress` key of its `run/` file) followed by a journal
//! of [`Delta`]s (`run/<id>.journal`, one JSON line each): what changed
//! since the write before. Appending a delta costs what changed, not the
//! whole progress, so an `each` of 10 000 runs does not rewrite 10 000
//! entries at every run's end.
//!
//! [`Journaled`] and [`JournaledVec`] are the progress' collections with
//! the bookkeeping of what changed; [`Progress::take_delta`] takes it,
//! [`Progress::replay`] applies a journal over a snapshot after a restart
//! (deltas carry a sequence number: those the snapshot already holds are
//! skipped, a torn last line is ignored). [`should_snapshot`] says when the
//! journal has grown enough to fold it into a new snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::run::{Cursor, Ended, NodeError, NodeProgress, Progress};

/// A map keyed by nid that remembers which keys changed since the last
/// [`Journaled::take_changes`]. Reads go through `Deref`; every write goes
/// through a method here, so that none is missed by the journal.
#[derive(Debug, Clone)]
pub struct Journaled<V> {
    map: BTreeMap<String, V>,
    dirty: BTreeSet<String>,
}

impl<V> Default for Journaled<V> {
    fn default() -> Self {
        Journaled {
            map: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }
}

impl<V> Deref for Journaled<V> {
    type Target = BTreeMap<String, V>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

/// Two maps are equal when their entries are: what is yet to be journaled
/// is bookkeeping, not part of the value.
impl<V: PartialEq> PartialEq for Journaled<V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<V: Serialize> Serialize for Journaled<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Journaled<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Journaled {
            map: BTreeMap::deserialize(d)?,
            dirty: BTreeSet::new(),
        })
    }
}

impl<'a, V> IntoIterator for &'a Journaled<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::collections::btree_map::Iter<'a, String, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl<V> FromIterator<(String, V)> for Journaled<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let map: BTreeMap<String, V> = iter.into_iter().collect();
        let dirty = map.keys().cloned().collect();
        Journaled { map, dirty }
    }
}

impl<V> Journaled<V> {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        self.dirty.insert(key.clone());
        self.map.insert(key, value)
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let old = self.map.remove(key);
        if old.is_some() {
            self.dirty.insert(key.to_string());
        }
        old
    }

    /// The entry at `key`, to change: it is journaled.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let v = self.map.get_mut(key)?;
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_string());
        }
        Some(v)
    }

    /// Calls `f` on each entry whose key starts with `prefix`, in key
    /// order; those for which it returns true (it changed them) are
    /// journaled.
    pub fn update_prefix(&mut self, prefix: &str, mut f: impl FnMut(&str, &mut V) -> bool) {
        for (k, v) in self.map.range_mut(prefix.to_string()..) {
            if !k.starts_with(prefix) {
                break;
            }
            if f(k, v) {
                self.dirty.insert(k.clone());
            }
        }
    }

    /// Removes every entry whose key starts with `prefix`.
    pub fn remove_prefix(&mut self, prefix: &str) {
        let keys: Vec<String> = self
            .map
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.remove(&k);
        }
    }

    pub fn clear(&mut self) {
        let map = std::mem::take(&mut self.map);
        self.dirty.extend(map.into_keys());
    }

    /// What changed since the last call: each changed key's value, or
    /// `None` where it was removed.
    pub fn take_changes(&mut self) -> BTreeMap<String, Option<V>>
    where
        V: Clone,
    {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|k| {
                let v = self.map.get(&k).cloned();
                (k, v)
            })
            .collect()
    }

    /// Applies changes read back from a journal (they are not journaled
    /// again).
    fn apply(&mut self, changes: BTreeMap<String, Option<V>>) {
        for (k, v) in changes {
            match v {
                Some(v) => self.map.insert(k, v),
                None => self.map.remove(&k),
            };
        }
    }
}

/// A list that only grows, and remembers how much of it was journaled.
#[derive(Debug, Clone)]
pub struct JournaledVec<T> {
    items: Vec<T>,
    journaled: usize,
}

impl<T> Default for JournaledVec<T> {
    fn default() -> Self {
        JournaledVec {
            items: Vec::new(),
            journaled: 0,
        }
    }
}

impl<T> Deref for JournaledVec<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Self::Target {
        &self.items
    }
}

impl<T: PartialEq> PartialEq for JournaledVec<T> {
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
    }
}

impl<T: Serialize> Serialize for JournaledVec<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.items.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for JournaledVec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::deserialize(d)?;
        Ok(JournaledVec {
            journaled: items.len(),
            items,
        })
    }
}

impl<T> From<Vec<T>> for JournaledVec<T> {
    fn from(items: Vec<T>) -> Self {
        JournaledVec {
            items,
            journaled: 0,
        }
    }
}

impl<T: Clone> JournaledVec<T> {
    pub fn push(&mut self, item: T) {
        self.items.push(item);
    }

    /// Where the items not journaled yet begin, and those items.
    fn take_new(&mut self) -> (usize, Vec<T>) {
        let from = self.journaled.min(self.items.len());
        self.journaled = self.items.len();
        (from, self.items[from..].to_vec())
    }

    fn apply(&mut self, from: usize, items: Vec<T>) {
        self.items.truncate(from);
        self.items.extend(items);
        self.journaled = self.items.len();
    }
}

/// One line of a flow's journal: what changed in its progress since the
/// line before (or the snapshot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The progress' [`Progress::seq`] once this delta is applied.
    pub seq: u64,
    /// Each changed node's state; `null`: the entry went.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, Option<NodeProgress>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cursors: BTreeMap<String, Option<Cursor>>,
    /// `errors` from this index on are replaced by `errors` here.
    #[serde(default)]
    pub errors_from: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<NodeError>,
    #[serde(default)]
    pub spawned: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Ended>,
}

/// What a replay did.
#[derive(Debug, Default, PartialEq)]
pub struct Replayed {
    /// Deltas applied (those the snapshot held already are not counted).
    pub applied: usize,
    /// Why the replay stopped before the journal's end, if it did (a
    /// gap in the sequence or a line that does not read in the middle).
    pub problem: Option<String>,
}

impl Progress {
    /// What changed since the last delta (or since the progress was read
    /// back), as the next journal line; the progress' `seq` moves on.
    pub fn take_delta(&mut self) -> Delta {
        self.seq += 1;
        let (errors_from, errors) = self.errors.take_new();
        Delta {
            seq: self.seq,
            nodes: self.nodes.take_changes(),
            cursors: self.cursors.take_changes(),
            errors_from,
            errors,
            spawned: self.spawned,
            end: self.end.clone(),
        }
    }

    /// Marks everything as written (a snapshot of the whole was taken).
    pub fn mark_written(&mut self) {
        let _ = self.take_delta();
    }

    /// Applies a delta read back. `Ok(false)`: the progress held it
    /// already; an error: it does not follow on.
    pub fn apply(&mut self, d: Delta) -> Result<bool, String> {
        if d.seq <= self.seq {
            return Ok(false);
        }
        if d.seq != self.seq + 1 {
            return Err(format!(
                "the journal jumps from {} to {} (entries are missing)",
                self.seq, d.seq
            ));
        }
        self.nodes.apply(d.nodes);
        self.cursors.apply(d.cursors);
        self.errors.apply(d.errors_from, d.errors);
        self.spawned = d.spawned;
        self.end = d.end;
        self.seq = d.seq;
        Ok(true)
    }

    /// Applies the journal `bytes` (JSON lines). A last line without its
    /// newline was torn by a crash before it was durable, so nothing
    /// followed from it: it is ignored. Where the replay stops early, the
    /// progress' `seq` still moves past every line of the journal, so that
    /// the snapshot written next is newer than all of them.
    pub fn replay(&mut self, bytes: &[u8]) -> Replayed {
        let mut done = Replayed::default();
        let complete = match bytes.iter().rposition(|b| *b == b'\n') {
            Some(i) => &bytes[..=i],
            None => return done,
        };
        let mut last_seq = self.seq;
        for (n, line) in complete.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let delta = serde_json::from_slice::<Delta>(line)
                .map_err(|e| format!("line {} does not read: {e}", n + 1));
            if let Ok(d) = &delta {
                last_seq = last_seq.max(d.seq);
            }
            if done.problem.is_some() {
                continue;
            }
            match delta.and_then(|d| self.apply(d)) {
                Ok(true) => done.applied += 1,
                Ok(false) => {}
                Err(e) => done.problem = Some(e),
            }
        }
        if done.problem.is_some() {
            self.seq = self.seq.max(last_seq);
        }
        done
    }
}

/// Journals smaller than this are never folded into a snapshot.
pub const JOURNAL_MIN_BYTES: u64 = 256 * 1024;

/// Whether the next write of a flow's progress is a whole snapshot rather
/// than a journal line: once the journal is as large as the last snapshot
/// (and at least [`JOURNAL_MIN_BYTES`]), so that the bytes spent on
/// snapshots never pass those appended, and a restart reads at most about
/// twice the progress.
pub fn should_snapshot(journal_bytes: u64, snapshot_bytes: u64) -> bool {
    journal_bytes >= JOURNAL_MIN_BYTES.max(snapshot_bytes)
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
