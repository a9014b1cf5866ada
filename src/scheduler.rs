//! The pure scheduling core (SPEC section 7): the ready queue (priority,
//! then arrival), worker slots, concurrency limits with parking (no
//! head-of-line blocking) and timers. It touches no file, clock or
//! process: time is passed in, so it is unit-tested with a fake clock.
//!
//! Entries are never removed from the middle of a heap: a cancelled or
//! superseded entry stays until popped, and the engine drops it then
//! (it carries a generation the engine checks). Every operation is
//! O(log n) in the number of queued entries.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// The address of a schedulable node: an execution and a node in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    pub exid: crate::model::names::Exid,
    pub nid: crate::model::names::Nid,
}

/// A concurrency limit's identity (SPEC 7): a tasker's `max_concurrent`,
/// or one value of one of its `concurrency` keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `max_concurrent` of the tasker at this path (`tsk/…`).
    MaxConcurrent { tasker: String },
    /// The turn of a domain's offers: one at a time goes to the taskmaster
    /// pool, so that equal priorities start in arrival order.
    Offer { domain: crate::model::names::Domain },
    /// This engine's Slurm jobs pending or running (`--slurm-jobs`).
    SlurmJobs,
    /// `{ "key": key, "limit": N }` of the tasker at this path, for the
    /// tasks whose value at `key` is `value` (as JSON).
    Key {
        tasker: String,
        key: String,
        value: String,
    },
}

impl Limit {
    /// Why a task held back by this limit waits (its `suspended` point).
    pub fn describe(&self) -> String {
        match self {
            Limit::MaxConcurrent { tasker } => format!("{tasker} is at its max_concurrent"),
            Limit::Offer { domain } => format!("waiting for the taskmaster of {domain}"),
            Limit::SlurmJobs => "the engine has as many Slurm jobs as --slurm-jobs allows".into(),
            Limit::Key { tasker, key, value } => {
                format!("{tasker} is at its concurrency limit for {key}={value}")
            }
        }
    }
}

/// A queued item, as [`Scheduler::pop`] hands it out. Give it back to
/// [`Scheduler::park`] when a limit refuses it: it keeps its place among
/// equal priorities.
#[derive(Debug, Clone)]
pub struct Entry<K, L = Limit> {
    pub item: K,
    pub priority: i32,
    seq: u64,
    /// Boxed: a woken entry is rare, and a queue may hold a great many
    /// entries (one pointer each, not a whole limit).
    woken_by: Option<Box<L>>,
}

impl<K, L> Entry<K, L> {
    /// The limit whose freed unit sent this item back to the ready queue,
    /// if any: once the item is dealt with, call
    /// [`Scheduler::wake_if_free`] on it, so that a unit the item did not
    /// take passes to the next waiter.
    pub fn woken_by(&self) -> Option<&L> {
        self.woken_by.as_deref()
    }

    /// Forgets the limit this item was woken for: it took that limit's
    /// unit, so there is none to pass on.
    pub fn took_woken_unit(&mut self) {
        self.woken_by = None;
    }
}

struct Ready<K, L>(Entry<K, L>);

impl<K, L> PartialEq for Ready<K, L> {
    fn eq(&self, o: &Self) -> bool {
        self.0.priority == o.0.priority && self.0.seq == o.0.seq
    }
}
impl<K, L> Eq for Ready<K, L> {}
impl<K, L> PartialOrd for Ready<K, L> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<K, L> Ord for Ready<K, L> {
    /// Higher priority first, then lower sequence (earlier arrival) first.
    fn cmp(&self, o: &Self) -> Ordering {
        self.0
            .priority
            .cmp(&o.0.priority)
            .then_with(|| o.0.seq.cmp(&self.0.seq))
    }
}

/// The items waiting for a unit of one limit, in the ready queue's order:
/// a freed unit goes to the highest priority, then the earliest arrival.
struct Parked<K, L> {
    limit: u32,
    queue: BinaryHeap<Ready<K, L>>,
}

/// A timer set with [`Scheduler::at`], to [`cancel`](Scheduler::cancel) it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerId(Instant, u64);

/// The scheduler's state. `K` is a queued item (the engine uses a node key
/// with a generation), `E` a timer event, `L` a limit's identity.
///
/// A worker slot is held by a running item and by an item being offered
/// ([`reserve`](Self::reserve)d while its taskmaster runs off the loop), so
/// that at most `workers` items are offered or run at once.
pub struct Scheduler<K, E, L = Limit> {
    ready: BinaryHeap<Ready<K, L>>,
    timers: BTreeMap<TimerId, E>,
    seq: u64,
    workers: usize,
    running: usize,
    offering: usize,
    in_use: HashMap<L, u32>,
    parked: HashMap<L, Parked<K, L>>,
}

impl<K: Clone, E, L: Clone + Eq + Hash> Scheduler<K, E, L> {
    pub fn new(workers: usize) -> Self {
        Scheduler {
            ready: BinaryHeap::new(),
            timers: BTreeMap::new(),
            seq: 0,
            workers: workers.max(1),
            running: 0,
            offering: 0,
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
        self.ready.push(Ready(Entry {
            item,
            priority,
            seq,
            woken_by: None,
        }));
    }

    /// The next item to offer, if a worker is free.
    pub fn pop(&mut self) -> Option<Entry<K, L>> {
        if !self.has_free_worker() {
            return None;
        }
        self.ready.pop().map(|r| r.0)
    }

    /// How many entries are in the ready queue (stale ones included).
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Whether a worker slot is free.
    pub fn has_free_worker(&self) -> bool {
        self.running + self.offering < self.workers
    }

    /// Holds a worker slot for an item being offered (popped, its
    /// taskmaster running); [`unreserve`](Self::unreserve) gives it back
    /// before the item starts, parks or is dropped.
    pub fn reserve(&mut self) {
        self.offering += 1;
    }

    /// Gives back a slot taken by [`reserve`](Self::reserve).
    pub fn unreserve(&mut self) {
        self.offering = self.offering.saturating_sub(1);
    }

    pub fn running(&self) -> usize {
        self.running
    }

    /// Takes a worker slot (with `worker`: a run on this machine; a run
    /// elsewhere, a Slurm job, holds none) and one unit of each limit, if
    /// all allow it. On refusal returns the first limit that is full, with
    /// its size (the item should be [`park`](Self::park)ed on it).
    pub fn try_start(&mut self, limits: &[(L, u32)], worker: bool) -> Result<(), (L, u32)> {
        debug_assert!(self.has_free_worker(), "try_start without a free worker");
        for (key, limit) in limits {
            if self.in_use(key) >= *limit {
                return Err((key.clone(), *limit));
            }
        }
        for (key, _) in limits {
            *self.in_use.entry(key.clone()).or_insert(0) += 1;
        }
        if worker {
            self.running += 1;
        }
        Ok(())
    }

    /// Takes one unit of each limit whatever they hold (a run that exists
    /// already: a Slurm job re-attached after a crash), and a worker slot
    /// with `worker`. Given back by [`finish`](Self::finish) as any other.
    pub fn start_anyway(&mut self, limits: &[(L, u32)], worker: bool) {
        for (key, _) in limits {
            *self.in_use.entry(key.clone()).or_insert(0) += 1;
        }
        if worker {
            self.running += 1;
        }
    }

    /// Gives back a worker slot and the limits taken by
    /// [`try_start`](Self::try_start); on each freed limit the first live
    /// waiter goes back to the ready queue (`is_live` tells the items the
    /// caller still wants from those it dropped while they waited).
    pub fn finish(
        &mut self,
        limits: &[(L, u32)],
        worker: bool,
        mut is_live: impl FnMut(&K) -> bool,
    ) {
        if worker {
            self.running = self.running.saturating_sub(1);
        }
        for (key, _) in limits {
            self.give_back(key, &mut is_live);
        }
    }

    /// Takes one unit of the limit `key` (of size `limit`) without a
    /// worker slot, if one is free (a turn that items must take one at a
    /// time; those that find it taken are [`park`](Self::park)ed on it).
    pub fn try_take(&mut self, key: &L, limit: u32) -> bool {
        if self.in_use(key) >= limit {
            return false;
        }
        *self.in_use.entry(key.clone()).or_insert(0) += 1;
        true
    }

    /// Gives back one unit of `key`; its first live waiter goes back to
    /// the ready queue.
    pub fn give_back(&mut self, key: &L, mut is_live: impl FnMut(&K) -> bool) {
        if let Some(n) = self.in_use.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.in_use.remove(key);
            }
        }
        self.wake_if_free(key, &mut is_live);
    }

    /// If `key` has a free unit, sends its first live waiter (highest
    /// priority, then earliest arrival) back to the ready queue, in its
    /// original place.
    pub fn wake_if_free(&mut self, key: &L, mut is_live: impl FnMut(&K) -> bool) {
        let in_use = self.in_use(key);
        let Some(parked) = self.parked.get_mut(key) else {
            return;
        };
        if in_use < parked.limit {
            while let Some(Ready(mut entry)) = parked.queue.pop() {
                if is_live(&entry.item) {
                    entry.woken_by = Some(Box::new(key.clone()));
                    self.ready.push(Ready(entry));
                    break;
                }
            }
        }
        if parked.queue.is_empty() {
            self.parked.remove(key);
        }
    }

    /// Holds an item back until `key` (of size `limit`) frees a unit and it
    /// is the first waiter by priority, then arrival.
    pub fn park(&mut self, mut entry: Entry<K, L>, key: L, limit: u32) {
        entry.woken_by = None;
        let parked = self.parked.entry(key).or_insert_with(|| Parked {
            limit,
            queue: BinaryHeap::new(),
        });
        parked.limit = limit;
        parked.queue.push(Ready(entry));
    }

    /// How many units of a limit are in use.
    pub fn in_use<Q>(&self, key: &Q) -> u32
    where
        L: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.in_use.get(key).copied().unwrap_or(0)
    }

    /// How many items are parked, over all limits.
    pub fn parked_len(&self) -> usize {
        self.parked.values().map(|p| p.queue.len()).sum()
    }

    /// Sets a timer.
    pub fn at(&mut self, due: Instant, event: E) -> TimerId {
        let id = TimerId(due, self.next_seq());
        self.timers.insert(id, event);
        id
    }

    /// Removes a timer that has not fired (a no-op for one that has).
    pub fn cancel(&mut self, id: TimerId) {
        self.timers.remove(&id);
    }

    /// The earliest timer's due time.
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.keys().next().map(|id| id.0)
    }

    /// The next timer due at `now` or before, earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Option<E> {
        match self.timers.first_key_value() {
            Some((id, _)) if id.0 <= now => self.timers.pop_first().map(|(_, e)| e),
            _ => None,
        }
    }

    /// How many timers are set.
    pub fn timers_len(&self) -> usize {
        self.timers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type S = Scheduler<&'static str, (), String>;

    fn pop(s: &mut S) -> Option<&'static str> {
        s.pop().map(|e| e.item)
    }

    fn drain(s: &mut S) -> Vec<&'static str> {
        std::iter::from_fn(|| pop(s)).collect()
    }

    fn lim(keys: &[&str]) -> Vec<(String, u32)> {
        keys.iter().map(|k| (k.to_string(), 1)).collect()
    }

    /// Pops the next item and starts it, or parks it on the limit that
    /// refuses it; then passes on a unit it did not take. Returns what
    /// happened.
    fn step(
        s: &mut S,
        limits_of: impl Fn(&str) -> Vec<(String, u32)>,
    ) -> Option<(&'static str, bool)> {
        let e = s.pop()?;
        let item = e.item;
        let woken = e.woken_by().cloned();
        let started = match s.try_start(&limits_of(item), true) {
            Ok(()) => true,
            Err((key, limit)) => {
                s.park(e, key, limit);
                false
            }
        };
        if let Some(k) = woken {
            s.wake_if_free(&k, |_| true);
        }
        Some((item, started))
    }

    #[test]
    fn priority_then_arrival() {
        let mut s: S = Scheduler::new(1);
        s.push(0, "a");
        s.push(5, "b");
        s.push(0, "c");
        s.push(-1, "d");
        s.push(5, "e");
        assert_eq!(drain(&mut s), ["b", "e", "a", "c", "d"]);
    }

    #[test]
    fn workers_bound_pops() {
        let mut s: S = Scheduler::new(2);
        for x in ["a", "b", "c"] {
            s.push(0, x);
        }
        assert_eq!(pop(&mut s), Some("a"));
        s.try_start(&[], true).unwrap();
        assert_eq!(pop(&mut s), Some("b"));
        s.try_start(&[], true).unwrap();
        assert!(!s.has_free_worker());
        assert_eq!(pop(&mut s), None);
        s.finish(&[], true, |_| true);
        assert_eq!(pop(&mut s), Some("c"));
    }

    #[test]
    fn runs_elsewhere_hold_no_worker_but_their_limit() {
        let mut s: S = Scheduler::new(1);
        for x in ["a", "b", "c"] {
            s.push(0, x);
        }
        let jobs = lim(&["slurm"]);
        let jobs = [(jobs[0].0.clone(), 2)];
        assert_eq!(pop(&mut s), Some("a"));
        s.try_start(&jobs, false).unwrap();
        assert!(s.has_free_worker());
        assert_eq!(pop(&mut s), Some("b"));
        s.try_start(&jobs, false).unwrap();
        assert_eq!(pop(&mut s), Some("c"));
        assert!(s.try_start(&jobs, false).is_err(), "two jobs at most");
        s.start_anyway(&jobs, false);
        assert_eq!(s.in_use(&jobs[0].0), 3, "a run that exists is counted");
        s.finish(&jobs, false, |_| true);
        assert_eq!(s.running(), 0);
    }

    #[test]
    fn limits_park_without_blocking_others() {
        let mut s: S = Scheduler::new(10);
        let books = |item: &str| {
            lim(&[if item.starts_with('a') {
                "book=a"
            } else {
                "book=b"
            }])
        };
        s.push(0, "a1");
        s.push(0, "a2");
        s.push(0, "b1");
        assert_eq!(step(&mut s, books), Some(("a1", true)));
        assert_eq!(step(&mut s, books), Some(("a2", false)));
        // b1 is not blocked behind a2
        assert_eq!(step(&mut s, books), Some(("b1", true)));
        assert_eq!(pop(&mut s), None);
        assert_eq!(s.parked_len(), 1);
        assert_eq!(s.in_use("book=a"), 1);
        s.finish(&lim(&["book=a"]), true, |_| true);
        assert_eq!(s.in_use("book=a"), 0);
        assert_eq!(step(&mut s, books), Some(("a2", true)));
        assert_eq!(s.running(), 2);
    }

    #[test]
    fn unparked_items_keep_their_arrival_place() {
        let mut s: S = Scheduler::new(10);
        s.try_start(&lim(&["k"]), true).unwrap();
        s.push(0, "first");
        s.push(0, "second");
        let limits = |item: &str| {
            if item == "first" {
                lim(&["k"])
            } else {
                lim(&[])
            }
        };
        // "first" parks; "second" is held in the queue by not popping it yet.
        let e = s.pop().unwrap();
        assert_eq!(e.item, "first");
        let (key, limit) = s.try_start(&limits("first"), true).unwrap_err();
        s.park(e, key, limit);
        s.finish(&lim(&["k"]), true, |_| true);
        assert_eq!(drain(&mut s), ["first", "second"]);
    }

    #[test]
    fn parked_items_wake_by_priority_then_arrival() {
        let mut s: S = Scheduler::new(10);
        s.try_start(&lim(&["k"]), true).unwrap();
        // They park in this order, the urgent ones last.
        for (item, priority) in [
            ("low1", 0),
            ("low2", 0),
            ("high", 5),
            ("mid", 3),
            ("high2", 5),
        ] {
            s.push(priority, item);
            let e = s.pop().unwrap();
            let (key, limit) = s.try_start(&lim(&["k"]), true).unwrap_err();
            s.park(e, key, limit);
        }
        let mut order = Vec::new();
        for _ in 0..5 {
            s.finish(&lim(&["k"]), true, |_| true);
            let (item, started) = step(&mut s, |_| lim(&["k"])).expect("a waiter wakes");
            assert!(started, "{item}");
            order.push(item);
        }
        assert_eq!(order, ["high", "high2", "mid", "low1", "low2"]);
        assert_eq!(s.parked_len(), 0);
    }

    #[test]
    fn dropped_parked_items_do_not_swallow_a_freed_unit() {
        let mut s: S = Scheduler::new(10);
        s.try_start(&lim(&["k"]), true).unwrap();
        for item in ["cancelled", "alive"] {
            s.push(0, item);
            let e = s.pop().unwrap();
            let (key, limit) = s.try_start(&lim(&["k"]), true).unwrap_err();
            s.park(e, key, limit);
        }
        s.finish(&lim(&["k"]), true, |x| *x != "cancelled");
        assert_eq!(drain(&mut s), ["alive"]);
        assert_eq!(s.parked_len(), 0);
    }

    #[test]
    fn a_unit_not_taken_by_the_woken_item_passes_on() {
        // x needs k0 and k1; y needs k0 only. Both wait on k0; k1 is held.
        let mut s: S = Scheduler::new(10);
        let limits = |item: &str| match item {
            "x" => lim(&["k0", "k1"]),
            "y" => lim(&["k0"]),
            _ => lim(&["k1"]),
        };
        s.try_start(&lim(&["k0"]), true).unwrap();
        s.try_start(&lim(&["k1"]), true).unwrap();
        s.push(0, "x");
        s.push(0, "y");
        assert_eq!(step(&mut s, limits), Some(("x", false)));
        assert_eq!(step(&mut s, limits), Some(("y", false)));
        s.finish(&lim(&["k0"]), true, |_| true);
        // x comes back, is refused on k1 and parks there; k0's unit goes to y.
        assert_eq!(step(&mut s, limits), Some(("x", false)));
        assert_eq!(step(&mut s, limits), Some(("y", true)));
        assert_eq!(s.in_use("k0"), 1);
    }

    #[test]
    fn a_unit_is_passed_on_when_the_woken_item_was_dropped() {
        let mut s: S = Scheduler::new(10);
        s.try_start(&lim(&["k"]), true).unwrap();
        for item in ["gone", "next"] {
            s.push(0, item);
            assert_eq!(step(&mut s, |_| lim(&["k"])), Some((item, false)));
        }
        s.finish(&lim(&["k"]), true, |_| true);
        // "gone" is popped but the caller dropped it meanwhile: it does not
        // start, and wake_if_free hands the unit to "next".
        let e = s.pop().unwrap();
        assert_eq!(e.item, "gone");
        s.wake_if_free(e.woken_by().unwrap(), |_| true);
        assert_eq!(step(&mut s, |_| lim(&["k"])), Some(("next", true)));
    }

    #[test]
    fn a_turn_is_taken_without_a_worker_and_passed_on() {
        let mut s: S = Scheduler::new(1);
        let turn = "turn:a".to_string();
        s.push(0, "a1");
        s.push(0, "a2");
        let e = s.pop().unwrap();
        assert_eq!(e.item, "a1");
        assert!(s.try_take(&turn, 1));
        // The turn holds no worker: a2 is popped, finds the turn taken and
        // parks on it.
        let e = s.pop().unwrap();
        assert_eq!(e.item, "a2");
        assert!(!s.try_take(&turn, 1));
        s.park(e, turn.clone(), 1);
        assert_eq!(pop(&mut s), None);
        s.give_back(&turn, |_| true);
        let e = s.pop().unwrap();
        assert_eq!((e.item, e.woken_by()), ("a2", Some(&turn)));
        assert!(s.try_take(&turn, 1));
    }

    #[test]
    fn timers_fire_in_due_order() {
        let t0 = Instant::now();
        let mut s: Scheduler<(), &str, String> = Scheduler::new(1);
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
        let a = s.at(t0 + Duration::from_secs(1), "x");
        s.at(t0 + Duration::from_secs(2), "y");
        s.cancel(a);
        assert_eq!(s.timers_len(), 1);
        assert_eq!(s.pop_due(t0 + Duration::from_secs(9)), Some("y"));
    }
}
