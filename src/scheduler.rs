//! The pure scheduling core (SPEC section 7): the ready queue (priority,
//! then arrival), worker slots, concurrency limits with parking (no
//! head-of-line blocking), timers, and the retry backoff. It touches no
//! file, clock or process: time is passed in, so it is unit-tested with a
//! fake clock.
//!
//! Entries are never removed from the middle of a heap: a cancelled or
//! superseded entry stays until popped, and the engine drops it then
//! (it carries a generation the engine checks). Every operation is
//! O(log n) in the number of queued entries.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The address of a schedulable node: an execution and a node in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    pub exid: crate::names::Exid,
    pub nid: crate::names::Nid,
}

/// A concurrency limit's identity: the tasker (for `max_concurrent`), or
/// the tasker plus a key path and its value.
pub type LimitKey = String;

struct Ready<K> {
    priority: i32,
    seq: u64,
    item: K,
}

impl<K> PartialEq for Ready<K> {
    fn eq(&self, o: &Self) -> bool {
        self.priority == o.priority && self.seq == o.seq
    }
}
impl<K> Eq for Ready<K> {}
impl<K> PartialOrd for Ready<K> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<K> Ord for Ready<K> {
    /// Higher priority first, then lower sequence (earlier arrival) first.
    fn cmp(&self, o: &Self) -> Ordering {
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

struct Timer<E> {
    due: Instant,
    seq: u64,
    event: E,
}
impl<E> PartialEq for Timer<E> {
    fn eq(&self, o: &Self) -> bool {
        self.due == o.due && self.seq == o.seq
    }
}
impl<E> Eq for Timer<E> {}
impl<E> PartialOrd for Timer<E> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<E> Ord for Timer<E> {
    fn cmp(&self, o: &Self) -> Ordering {
        self.due.cmp(&o.due).then_with(|| self.seq.cmp(&o.seq))
    }
}

/// The scheduler's state. `K` is a queued item (the engine uses a node key
/// with a generation), `E` a timer event.
pub struct Scheduler<K, E> {
    ready: BinaryHeap<Ready<K>>,
    timers: BinaryHeap<Reverse<Timer<E>>>,
    seq: u64,
    workers: usize,
    running: usize,
    in_use: HashMap<LimitKey, u32>,
    parked: HashMap<LimitKey, VecDeque<(i32, u64, K)>>,
}

impl<K: Clone, E> Scheduler<K, E> {
    pub fn new(workers: usize) -> Self {
        Scheduler {
            ready: BinaryHeap::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            workers: workers.max(1),
            running: 0,
            in_use: HashMap::new(),
            parked: HashMap::new(),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Queues an item; among equal priorities, arrival order is kept.
    pub fn push(&mut self, priority: i32, item: K) {
        let seq = self.next_seq();
        self.ready.push(Ready {
            priority,
            seq,
            item,
        });
    }

    /// The next item to offer, if a worker is free.
    pub fn pop(&mut self) -> Option<K> {
        if self.running >= self.workers {
            return None;
        }
        self.ready.pop().map(|r| r.item)
    }

    /// How many entries are in the ready queue (stale ones included).
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Whether a worker slot is free.
    pub fn has_free_worker(&self) -> bool {
        self.running < self.workers
    }

    pub fn running(&self) -> usize {
        self.running
    }

    /// Takes a worker slot and one unit of each limit, if all allow it.
    /// On refusal returns the first limit that is full (the item should be
    /// [`park`](Self::park)ed on it).
    pub fn try_start(&mut self, limits: &[(LimitKey, u32)]) -> Result<(), LimitKey> {
        debug_assert!(
            self.running < self.workers,
            "try_start without a free worker"
        );
        for (key, limit) in limits {
            if self.in_use.get(key).copied().unwrap_or(0) >= *limit {
                return Err(key.clone());
            }
        }
        for (key, _) in limits {
            *self.in_use.entry(key.clone()).or_insert(0) += 1;
        }
        self.running += 1;
        Ok(())
    }

    /// Gives back a worker slot and the limits taken by
    /// [`try_start`](Self::try_start); the first live item parked on each
    /// freed limit goes back to the ready queue (`is_live` tells the items
    /// the engine still wants from those it dropped while they waited).
    pub fn finish(&mut self, limits: &[(LimitKey, u32)], mut is_live: impl FnMut(&K) -> bool) {
        self.running = self.running.saturating_sub(1);
        for (key, _) in limits {
            if let Some(n) = self.in_use.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.in_use.remove(key);
                }
            }
            self.unpark_one(key, &mut is_live);
        }
    }

    fn unpark_one(&mut self, key: &LimitKey, is_live: &mut impl FnMut(&K) -> bool) {
        let Some(q) = self.parked.get_mut(key) else {
            return;
        };
        while let Some((priority, seq, item)) = q.pop_front() {
            if is_live(&item) {
                // Keeps its original place among equal priorities.
                self.ready.push(Ready {
                    priority,
                    seq,
                    item,
                });
                break;
            }
        }
        if q.is_empty() {
            self.parked.remove(key);
        }
    }

    /// Holds an item back until `key` frees a unit; it then goes back to
    /// the ready queue (see [`finish`](Self::finish)).
    pub fn park(&mut self, key: LimitKey, priority: i32, item: K) {
        let seq = self.next_seq();
        self.parked
            .entry(key)
            .or_default()
            .push_back((priority, seq, item));
    }

    /// How many units of a limit are in use.
    pub fn in_use(&self, key: &str) -> u32 {
        self.in_use.get(key).copied().unwrap_or(0)
    }

    /// How many items are parked, over all limits.
    pub fn parked_len(&self) -> usize {
        self.parked.values().map(VecDeque::len).sum()
    }

    /// Sets a timer.
    pub fn at(&mut self, due: Instant, event: E) {
        let seq = self.next_seq();
        self.timers.push(Reverse(Timer { due, seq, event }));
    }

    /// The earliest timer's due time.
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|t| t.0.due)
    }

    /// The next timer due at `now` or before, earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Option<E> {
        if self.timers.peek().is_some_and(|t| t.0.due <= now) {
            self.timers.pop().map(|t| t.0.event)
        } else {
            None
        }
    }
}

/// The delay before retry number `retry` (1 for the first): 1 s, 2 s, 4 s
/// … capped at 5 minutes (SPEC 7).
pub fn backoff(retry: u32) -> Duration {
    let exp = retry.saturating_sub(1).min(20);
    Duration::from_secs((1u64 << exp).min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut Scheduler<&'static str, ()>) -> Vec<&'static str> {
        std::iter::from_fn(|| s.pop()).collect()
    }

    #[test]
    fn priority_then_arrival() {
        let mut s = Scheduler::new(1);
        s.push(0, "a");
        s.push(5, "b");
        s.push(0, "c");
        s.push(-1, "d");
        s.push(5, "e");
        assert_eq!(drain(&mut s), ["b", "e", "a", "c", "d"]);
    }

    #[test]
    fn workers_bound_pops() {
        let mut s: Scheduler<&str, ()> = Scheduler::new(2);
        for x in ["a", "b", "c"] {
            s.push(0, x);
        }
        assert_eq!(s.pop(), Some("a"));
        s.try_start(&[]).unwrap();
        assert_eq!(s.pop(), Some("b"));
        s.try_start(&[]).unwrap();
        assert!(!s.has_free_worker());
        assert_eq!(s.pop(), None);
        s.finish(&[], |_| true);
        assert_eq!(s.pop(), Some("c"));
    }

    #[test]
    fn limits_park_without_blocking_others() {
        let mut s: Scheduler<&str, ()> = Scheduler::new(10);
        let book_a = vec![("stamp/book=a".to_string(), 1)];
        let book_b = vec![("stamp/book=b".to_string(), 1)];
        s.push(0, "a1");
        s.push(0, "a2");
        s.push(0, "b1");
        assert_eq!(s.pop(), Some("a1"));
        s.try_start(&book_a).unwrap();
        assert_eq!(s.pop(), Some("a2"));
        let full = s.try_start(&book_a).unwrap_err();
        s.park(full, 0, "a2");
        // b1 is not blocked behind a2
        assert_eq!(s.pop(), Some("b1"));
        s.try_start(&book_b).unwrap();
        assert_eq!(s.pop(), None);
        assert_eq!(s.parked_len(), 1);
        assert_eq!(s.in_use("stamp/book=a"), 1);
        s.finish(&book_a, |_| true);
        assert_eq!(s.in_use("stamp/book=a"), 0);
        assert_eq!(s.pop(), Some("a2"));
        s.try_start(&book_a).unwrap();
        assert_eq!(s.running(), 2);
    }

    #[test]
    fn unparked_items_keep_priority_order() {
        let mut s: Scheduler<&str, ()> = Scheduler::new(10);
        let l = vec![("k".to_string(), 1)];
        s.try_start(&l).unwrap();
        s.park("k".into(), 0, "low");
        s.push(3, "high");
        s.finish(&l, |_| true);
        assert_eq!(drain(&mut s), ["high", "low"]);
    }

    #[test]
    fn dropped_parked_items_do_not_swallow_a_freed_unit() {
        let mut s: Scheduler<&str, ()> = Scheduler::new(10);
        let l = vec![("k".to_string(), 1)];
        s.try_start(&l).unwrap();
        s.park("k".into(), 0, "cancelled");
        s.park("k".into(), 0, "alive");
        s.finish(&l, |x| *x != "cancelled");
        assert_eq!(drain(&mut s), ["alive"]);
        assert_eq!(s.parked_len(), 0);
    }

    #[test]
    fn timers_fire_in_due_order() {
        let t0 = Instant::now();
        let mut s: Scheduler<(), &str> = Scheduler::new(1);
        s.at(t0 + Duration::from_secs(4), "c");
        s.at(t0 + Duration::from_secs(1), "a");
        s.at(t0 + Duration::from_secs(1), "b");
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(s.pop_due(t0), None);
        assert_eq!(s.pop_due(t0 + Duration::from_secs(2)), Some("a"));
        assert_eq!(s.pop_due(t0 + Duration::from_secs(2)), Some("b"));
        assert_eq!(s.pop_due(t0 + Duration::from_secs(2)), None);
        assert_eq!(s.pop_due(t0 + Duration::from_secs(9)), Some("c"));
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn backoff_sequence() {
        let secs: Vec<u64> = (1..=12).map(|r| backoff(r).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }
}
