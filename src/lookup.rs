//! [`Lookups`]: the one cache of lookups under `tsk/` (which taskmaster
//! serves a domain, what a taskee resolves to). Entries are trusted only
//! while a watcher reports every change under `tsk/` (the caller then
//! [`clear`](Lookups::clear)s on each change); keys come from users
//! (domains), so the cache is bounded.

use std::collections::HashMap;
use std::hash::Hash;

/// The most entries kept; past it the cache starts over (O(1) amortized).
const CAPACITY: usize = 4096;

/// A bounded map of lookups, active only while watched.
#[derive(Debug)]
pub struct Lookups<K, V> {
    map: HashMap<K, V>,
    watched: bool,
}

impl<K: Eq + Hash, V: Clone> Default for Lookups<K, V> {
    fn default() -> Self {
        Lookups {
            map: HashMap::new(),
            watched: false,
        }
    }
}

impl<K: Eq + Hash, V: Clone> Lookups<K, V> {
    /// Trusts entries from now on (`true`) or never (`false`); forgets all.
    pub fn set_watched(&mut self, watched: bool) {
        self.watched = watched;
        self.map.clear();
    }

    pub fn is_watched(&self) -> bool {
        self.watched
    }

    /// A cached value (never one while unwatched).
    pub fn get(&self, key: &K) -> Option<V> {
        if !self.watched {
            return None;
        }
        self.map.get(key).cloned()
    }

    /// Remembers a value (a no-op while unwatched).
    pub fn insert(&mut self, key: K, value: V) {
        if !self.watched {
            return;
        }
        if self.map.len() >= CAPACITY {
            self.map.clear();
        }
        self.map.insert(key, value);
    }

    /// Forgets everything (something under `tsk/` changed).
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_cached_unless_watched() {
        let mut l: Lookups<u32, u32> = Lookups::default();
        l.insert(1, 1);
        assert_eq!(l.get(&1), None);
        l.set_watched(true);
        l.insert(1, 2);
        assert_eq!(l.get(&1), Some(2));
        l.clear();
        assert_eq!(l.get(&1), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut l: Lookups<usize, usize> = Lookups::default();
        l.set_watched(true);
        for i in 0..CAPACITY * 3 {
            l.insert(i, i);
            assert!(l.map.len() <= CAPACITY);
        }
        assert_eq!(l.get(&(CAPACITY * 3 - 1)), Some(CAPACITY * 3 - 1));
    }
}
