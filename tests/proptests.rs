//! Property tests: the parsers of everything a user or a tasker hands the
//! engine (task files, replies, informative points, names, durations)
//! never panic and explain a refusal in one line; the scheduler keeps its
//! invariants under random sequences of operations.

use std::collections::VecDeque;
use std::str::FromStr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use serde_json::{Map, Value};

use spoolflow::model::names::{Domain, Nid, TaskId, Taskee};
use spoolflow::model::point::Point;
use spoolflow::model::task::{Dur, Task, TaskFile};
use spoolflow::scheduler::Scheduler;
use spoolflow::tasker::{parse_reply, Reply};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // Shrunk failures are printed; the regressions that matter are
        // written out as plain tests below.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The scheduler's properties are cheap to check, and some failures need
/// a precise sequence of operations (a freed unit, a woken item refused on
/// another limit, a waiter behind it): more cases find them reliably.
fn scheduler_config() -> ProptestConfig {
    ProptestConfig {
        cases: 1024,
        ..config()
    }
}

/// A refusal reason: what ends up as a `.reason` line or a record's
/// `reason`.
fn assert_one_line(msg: &str) {
    assert!(!msg.trim().is_empty(), "empty error message");
    assert!(
        !msg.contains('\n') && !msg.contains('\r'),
        "error message spans lines: {msg:?}"
    );
}

// ------------------------------------------------------------ strategies

const TASK_KEYS: &[&str] = &[
    "domain",
    "tasker",
    "payload",
    "id",
    "priority",
    "headers",
    "timeout",
    "start_timeout",
    "retries",
    "retry_on_timeout",
    "flow",
];

/// Strings that hit the interesting paths: names (valid and not),
/// traversal attempts, durations, anything.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9][a-z0-9._-]{0,12}",
        "(org|any|any\\.x|a\\.b|\\.\\.|/etc|\\.|a/b|A)[a-zA-Z0-9./_-]{0,6}",
        "-?[0-9]{0,4}(\\.[0-9]{0,3})?(ms|s|m|h|d|us|x|e9|)",
        "(inf|NaN|1e400|-0|0x10|1_000|\u{661})(s|)",
        any::<String>(),
        "\\PC{0,20}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-3i64..3).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(Value::from(i64::from(i32::MAX) + 1)),
        Just(Value::from(i64::from(i32::MIN))),
        Just(Value::from(u64::from(u32::MAX) + 1)),
        Just(Value::from(1.5)),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(TASK_KEYS).prop_map(str::to_owned),
        1 => "[a-z_]{1,10}",
        1 => any::<String>(),
    ]
}

/// A JSON object with mostly task keys and random values.
fn task_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(key(), json(), 0..8).prop_map(|m| m.into_iter().collect())
}

/// A JSON object with only valid keys, each with a plausible or hostile
/// value: the parser gets deep, and often accepts.
fn valid_keyed_object() -> impl Strategy<Value = Map<String, Value>> {
    let value_for = |k: &'static str| -> BoxedStrategy<Value> {
        match k {
            "domain" => prop_oneof![
                3 => "[a-z0-9]{1,5}(\\.[a-z0-9_-]{1,5}){0,3}".prop_map(Value::from),
                1 => json(),
            ]
            .boxed(),
            "tasker" | "id" => prop_oneof![
                3 => "[A-Za-z0-9][A-Za-z0-9_-]{0,10}".prop_map(Value::from),
                1 => json(),
            ]
            .boxed(),
            "payload" | "headers" => prop_oneof![
                3 => prop::collection::btree_map("[a-z]{1,4}", json(), 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                1 => json(),
            ]
            .boxed(),
            "priority" | "retries" => prop_oneof![3 => number(), 1 => json()].boxed(),
            "timeout" | "start_timeout" => prop_oneof![
                2 => text().prop_map(Value::from),
                2 => number(),
                1 => json(),
            ]
            .boxed(),
            "retry_on_timeout" => {
                prop_oneof![3 => any::<bool>().prop_map(Value::Bool), 1 => json()].boxed()
            }
            _ => json().boxed(),
        }
    };
    let keys: Vec<&'static str> = TASK_KEYS.iter().copied().filter(|k| *k != "flow").collect();
    subsequence(keys, 0..=10).prop_flat_map(move |ks| {
        let values: Vec<BoxedStrategy<(String, Value)>> = ks
            .into_iter()
            .map(|k| value_for(k).prop_map(move |v| (k.to_string(), v)).boxed())
            .collect();
        values.prop_map(|kvs| kvs.into_iter().collect::<Map<String, Value>>())
    })
}

/// Bytes of a task file: random, a JSON object, or a JSON object cut or
/// with a byte changed.
fn task_bytes() -> impl Strategy<Value = Vec<u8>> {
    let object = prop_oneof![task_object(), valid_keyed_object()]
        .prop_map(|o| serde_json::to_vec(&Value::Object(o)).unwrap());
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        object.clone(),
        (object.clone(), any::<prop::sample::Index>())
            .prop_map(|(b, i)| b[..i.index(b.len() + 1)].to_vec()),
        (object, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut b, i, x)| {
            if !b.is_empty() {
                let at = i.index(b.len());
                b[at] = x;
            }
            b
        }),
        json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ]
}

/// Durations compared at the millisecond, the precision of their
/// `Display` (what `run/<id>.json` holds).
fn ms(d: Option<Dur>) -> Option<u128> {
    d.map(|d| d.0.as_millis())
}

// ------------------------------------------------------------ parsers

proptest! {
    #![proptest_config(config())]

    #[test]
    fn task_files_parse_or_say_why_in_one_line(bytes in task_bytes()) {
        match TaskFile::parse(&bytes) {
            Ok(file) => {
                // What the engine writes to run/ reads back as the same task.
                let Ok(task) = Task::from_file(file, Some("stem"), None) else {
                    return Ok(());
                };
                let again = serde_json::to_vec(&task.to_file_json()).unwrap();
                let back = TaskFile::parse(&again)
                    .unwrap_or_else(|e| panic!("run/ file {:?} does not parse: {e}",
                        String::from_utf8_lossy(&again)));
                let back = Task::from_file(back, None, None).unwrap();
                prop_assert_eq!(&back.id, &task.id);
                prop_assert_eq!(&back.domain, &task.domain);
                prop_assert_eq!(&back.tasker, &task.tasker);
                prop_assert_eq!(&back.payload, &task.payload);
                prop_assert_eq!(&back.headers, &task.headers);
                prop_assert_eq!(back.priority, task.priority);
                prop_assert_eq!(back.options.retries, task.options.retries);
                prop_assert_eq!(back.options.retry_on_timeout, task.options.retry_on_timeout);
                prop_assert_eq!(ms(back.options.timeout), ms(task.options.timeout));
                prop_assert_eq!(ms(back.options.start_timeout), ms(task.options.start_timeout));
            }
            Err(e) => assert_one_line(&e.to_string()),
        }
    }

    #[test]
    fn replies_never_panic(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..128),
            reply_object().prop_map(|o| serde_json::to_vec(&Value::Object(o)).unwrap()),
            json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            "[ \t\r\n]{0,5}".prop_map(String::into_bytes),
        ],
        payload in prop::collection::btree_map("[a-z]{1,3}", json(), 0..3),
    ) {
        let payload: Map<String, Value> = payload.into_iter().collect();
        let reply = parse_reply(&bytes, &payload);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            prop_assert_eq!(reply, Reply::Completed(payload));
        } else if let Reply::Invalid(reason) = reply {
            assert_one_line(&reason);
        }
    }

    #[test]
    fn informative_points_never_panic_and_stay_one_line(
        line in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..128),
            reply_object().prop_map(|o| serde_json::to_vec(&Value::Object(o)).unwrap()),
            json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ],
    ) {
        let id: TaskId = "t1".parse().unwrap();
        let exid: TaskId = "x1".parse().unwrap();
        let nid = Nid::root();
        if let Some(p) = Point::informative(&line, &id, &exid, &nid) {
            prop_assert!(!p.point.is_empty() && p.point.len() <= 64);
            prop_assert!(!["completed", "failed", "aborted"].contains(&p.point.as_str()));
            prop_assert_eq!(&p.id, &id);
            prop_assert_eq!(&p.exid, &exid);
            prop_assert_eq!(&p.nid, &nid);
            prop_assert_eq!(&p.fields["source"], "tasker");
            let out = p.to_line();
            prop_assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
            prop_assert_eq!(out.last(), Some(&b'\n'));
            let back: Point = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, p);
        }
    }

    #[test]
    fn names_never_panic_and_accepted_ones_are_safe(
        s in prop_oneof![
            any::<String>(),
            "[a-zA-Z0-9._/-]{0,70}",
            "[a-z0-9.]{0,300}",
            "(any|\\.\\.|\\.|/)[a-z0-9./]{0,5}",
        ],
    ) {
        match Domain::from_str(&s) {
            Ok(d) => {
                prop_assert!(!s.contains('/') && !s.contains("..") && !s.starts_with('.')
                    && !s.ends_with('.') && s.len() <= 255, "accepted domain {:?}", s);
                prop_assert!(s != "any" && !s.starts_with("any."), "accepted {:?}", s);
                prop_assert_eq!(d.to_string(), s.clone());
                prop_assert_eq!(d.to_string().parse::<Domain>().unwrap(), d);
            }
            Err(e) => assert_one_line(&e.to_string()),
        }
        match Taskee::from_str(&s) {
            Ok(t) => {
                prop_assert!(!s.contains('/') && !s.contains('.') && !s.is_empty()
                    && s.len() <= 64, "accepted taskee {:?}", s);
                prop_assert_eq!(t.to_string(), s.clone());
                prop_assert_eq!(t.to_string().parse::<Taskee>().unwrap(), t);
            }
            Err(e) => assert_one_line(&e.to_string()),
        }
        match TaskId::from_str(&s) {
            Ok(id) => {
                prop_assert!(!s.contains('/') && !s.starts_with('.') && s.len() <= 128,
                    "accepted id {:?}", s);
                prop_assert_eq!(id.to_string(), s.clone());
                prop_assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
            }
            Err(e) => assert_one_line(&e.to_string()),
        }
        match Nid::from_str(&s) {
            Ok(n) => prop_assert_eq!(n.to_string(), s.clone()),
            Err(e) => assert_one_line(&e.to_string()),
        }
    }

    #[test]
    fn durations_never_panic(
        s in prop_oneof![
            any::<String>(),
            "[ ]?-?[0-9]{0,12}(\\.[0-9]{0,12})?(e[0-9]{1,3})?[ ]?(ms|s|m|h|d|M|sec|)[ ]?",
            "(inf|-inf|NaN|nan|infinity|-0|\\+1|1e308|\\.5|5\\.)(ms|s|m|h|d|)",
        ],
        f in any::<f64>(),
    ) {
        match Dur::from_str(&s) {
            Ok(d) => prop_assert!(d.0 <= Duration::from_secs(3_153_600_000), "{:?} -> {:?}", s, d),
            Err(e) => assert_one_line(&e),
        }
        if let Some(n) = serde_json::Number::from_f64(f) {
            match Dur::from_json(&Value::Number(n)) {
                Ok(d) => prop_assert!(d.0 <= Duration::from_secs(3_153_600_000)),
                Err(e) => assert_one_line(&e),
            }
        }
        let _ = Dur::from_json(&Value::String(s));
    }
}

/// A reply or an informative point: `point` of any kind, and the keys a
/// reply reads with random values.
fn reply_object() -> impl Strategy<Value = Map<String, Value>> {
    let point = prop_oneof![
        4 => select(&[
            "completed", "failed", "refused", "uncompleted", "aborted", "started",
            "suspended", "bogus", "",
        ][..])
        .prop_map(Value::from),
        1 => "[a-z]{60,70}".prop_map(Value::from),
        1 => json(),
    ];
    let keys = &[
        "payload", "reason", "after", "progress", "ts", "id", "exid", "nid",
    ][..];
    (
        prop::option::weighted(0.9, point),
        prop::collection::btree_map(select(keys), json(), 0..5),
    )
        .prop_map(|(point, rest)| {
            let mut o: Map<String, Value> =
                rest.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            if let Some(p) = point {
                o.insert("point".into(), p);
            }
            o
        })
}

// ------------------------------------------------------------ scheduler

const KEYS: usize = 3;

fn key_name(k: usize) -> String {
    format!("tasker k{k}")
}

#[derive(Debug, Clone)]
enum Op {
    /// Queue a new item with this priority and these limit keys (in order).
    Push { priority: i32, keys: Vec<usize> },
    /// One pop; the item is started, parked on the limit that refused it,
    /// or dropped if it was cancelled.
    Pop,
    /// Pop until nothing comes (what the engine's dispatch does).
    Dispatch,
    /// A running item (chosen by index) ends.
    Finish(prop::sample::Index),
    /// A queued or parked item (chosen by index) is no longer wanted: the
    /// scheduler is not told, it is dropped when popped or skipped when a
    /// unit frees (what the engine does with a cancelled or failed node).
    Cancel(prop::sample::Index),
    /// Set a timer this many ms from the fake clock's now.
    At(u64),
    /// Move the fake clock.
    Advance(u64),
    /// Pop every due timer.
    PopDue,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (-2i32..=2, subsequence((0..KEYS).collect::<Vec<_>>(), 0..=KEYS).prop_shuffle())
            .prop_map(|(priority, keys)| Op::Push { priority, keys }),
        3 => Just(Op::Pop),
        2 => Just(Op::Dispatch),
        3 => any::<prop::sample::Index>().prop_map(Op::Finish),
        1 => any::<prop::sample::Index>().prop_map(Op::Cancel),
        1 => (0u64..1000).prop_map(Op::At),
        1 => (0u64..600).prop_map(Op::Advance),
        1 => Just(Op::PopDue),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// In the scheduler's ready queue.
    Ready,
    /// In the scheduler's queue of waiters on limit `k`.
    Parked(usize),
    Running,
    Done,
    /// Cancelled, then dropped by the caller or skipped by the scheduler:
    /// out of the scheduler.
    Dropped,
}

#[derive(Debug)]
struct Item {
    priority: i32,
    keys: Vec<usize>,
    state: St,
    /// When it was pushed.
    arrival: u64,
    /// No longer wanted (see [`Op::Cancel`]).
    cancelled: bool,
    /// The limit whose freed unit sent it back to the ready queue.
    woken_by: Option<usize>,
}

/// A reference model of the scheduler, run side by side with it.
struct Model {
    sched: Scheduler<u32, u32, String>,
    workers: usize,
    limit: [u32; KEYS],
    items: Vec<Item>,
    in_use: [u32; KEYS],
    parked: [VecDeque<u32>; KEYS],
    /// (due in ms of the fake clock, order set, event).
    timers: Vec<(u64, u64, u32)>,
    timers_set: u64,
    t0: Instant,
    now: u64,
}

/// Whether the caller still wants an item (the `is_live` of
/// [`Scheduler::finish`] and [`Scheduler::wake_if_free`]).
fn live(items: &[Item]) -> impl Fn(&u32) -> bool + '_ {
    move |x| !items[*x as usize].cancelled
}

impl Model {
    fn new(workers: usize, limit: [u32; KEYS]) -> Model {
        Model {
            sched: Scheduler::new(workers),
            workers,
            limit,
            items: Vec::new(),
            in_use: [0; KEYS],
            parked: Default::default(),
            timers: Vec::new(),
            timers_set: 0,
            t0: Instant::now(),
            now: 0,
        }
    }

    fn limits(&self, item: u32) -> Vec<(String, u32)> {
        self.items[item as usize]
            .keys
            .iter()
            .map(|k| (key_name(*k), self.limit[*k]))
            .collect()
    }

    fn count(&self, st: St) -> usize {
        self.items.iter().filter(|i| i.state == st).count()
    }

    fn ready(&self) -> impl Iterator<Item = (usize, &Item)> {
        self.items
            .iter()
            .enumerate()
            .filter(|(_, i)| i.state == St::Ready)
    }

    /// The model's side of `wake_if_free(k)`: if `k` has a free unit, its
    /// first live waiter by priority, then arrival, goes back to the ready
    /// queue; cancelled waiters before it leave the scheduler.
    fn model_wake(&mut self, k: usize) {
        if self.in_use[k] >= self.limit[k] {
            return;
        }
        let items = &self.items;
        self.parked[k].make_contiguous().sort_by_key(|y| {
            (
                std::cmp::Reverse(items[*y as usize].priority),
                items[*y as usize].arrival,
            )
        });
        while let Some(y) = self.parked[k].pop_front() {
            let item = &mut self.items[y as usize];
            if item.cancelled {
                item.state = St::Dropped;
            } else {
                item.state = St::Ready;
                item.woken_by = Some(k);
                break;
            }
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Push { priority, keys } => {
                let id = self.items.len() as u32;
                self.items.push(Item {
                    priority: *priority,
                    keys: keys.clone(),
                    state: St::Ready,
                    arrival: id as u64,
                    cancelled: false,
                    woken_by: None,
                });
                self.sched.push(*priority, id);
            }
            Op::Pop => {
                self.pop_one()?;
            }
            Op::Dispatch => {
                let mut n = 0;
                while self.pop_one()? {
                    n += 1;
                    // Each item pops at most once per time it is woken, and
                    // a pop wakes at most one item.
                    prop_assert!(n <= 2 * self.items.len() + 1, "dispatch does not end");
                }
            }
            Op::Finish(i) => {
                let running: Vec<u32> = (0..self.items.len() as u32)
                    .filter(|x| self.items[*x as usize].state == St::Running)
                    .collect();
                if running.is_empty() {
                    return Ok(());
                }
                let x = running[i.index(running.len())];
                let limits = self.limits(x);
                self.sched.finish(&limits, true, live(&self.items));
                self.items[x as usize].state = St::Done;
                for k in self.items[x as usize].keys.clone() {
                    self.in_use[k] -= 1;
                    self.model_wake(k);
                }
            }
            Op::Cancel(i) => {
                let waiting: Vec<usize> = self
                    .items
                    .iter()
                    .enumerate()
                    .filter(|(_, it)| {
                        !it.cancelled && matches!(it.state, St::Ready | St::Parked(_))
                    })
                    .map(|(x, _)| x)
                    .collect();
                if !waiting.is_empty() {
                    let x = waiting[i.index(waiting.len())];
                    self.items[x].cancelled = true;
                }
            }
            Op::At(offset) => {
                let due = self.now + offset;
                self.timers_set += 1;
                let event = self.timers_set as u32;
                self.timers.push((due, self.timers_set, event));
                self.sched.at(self.t0 + Duration::from_millis(due), event);
            }
            Op::Advance(ms) => self.now += ms,
            Op::PopDue => {
                let now = self.t0 + Duration::from_millis(self.now);
                let mut last_due = 0;
                while let Some(event) = self.sched.pop_due(now) {
                    let (pos, &(due, _, want)) = self
                        .timers
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, t)| (t.0, t.1))
                        .expect("a timer popped that was never set");
                    prop_assert_eq!(event, want, "timers out of (due, order) order");
                    prop_assert!(due <= self.now, "a timer popped before it was due");
                    prop_assert!(due >= last_due, "timers popped out of due order");
                    last_due = due;
                    self.timers.remove(pos);
                }
                prop_assert!(
                    self.timers.iter().all(|t| t.0 > self.now),
                    "a due timer was not popped"
                );
            }
        }
        self.check()
    }

    /// One pop, checked, following the engine's protocol: a cancelled item
    /// is dropped, a live one is started or parked on the limit that
    /// refuses it; then, if a freed unit woke it, that unit is passed on
    /// (`wake_if_free`). Whether an item came out.
    fn pop_one(&mut self) -> Result<bool, TestCaseError> {
        let running = self.count(St::Running);
        let popped = self.sched.pop();
        let Some(entry) = popped else {
            prop_assert!(
                running >= self.workers || self.count(St::Ready) == 0,
                "pop gave nothing with a free worker and ready items"
            );
            return Ok(false);
        };
        let x = entry.item;
        prop_assert!(running < self.workers, "pop with every worker busy");
        let item = &self.items[x as usize];
        prop_assert_eq!(item.state, St::Ready, "popped item {} was not ready", x);
        prop_assert_eq!(
            entry.priority,
            item.priority,
            "popped {} with a wrong priority",
            x
        );
        let best = self.ready().map(|(_, i)| i.priority).max().unwrap();
        prop_assert_eq!(
            item.priority,
            best,
            "popped {} is not of the highest priority",
            x
        );
        // Arrival order holds among all items of equal priority, those that
        // were parked included: parking keeps an item's place.
        let earlier = self
            .ready()
            .filter(|(_, i)| i.priority == item.priority && i.arrival < item.arrival)
            .map(|(y, _)| y)
            .next();
        prop_assert!(
            earlier.is_none(),
            "popped {} before {:?}, which arrived earlier with the same priority",
            x,
            earlier
        );
        let woken = entry.woken_by().cloned();
        prop_assert_eq!(
            woken.clone(),
            item.woken_by.map(key_name),
            "popped {} woken by the wrong limit",
            x
        );
        self.items[x as usize].woken_by = None;

        if self.items[x as usize].cancelled {
            // The caller drops it: it neither starts nor parks.
            self.items[x as usize].state = St::Dropped;
        } else {
            let limits = self.limits(x);
            let full = self.items[x as usize]
                .keys
                .iter()
                .copied()
                .find(|k| self.in_use[*k] >= self.limit[*k]);
            match (self.sched.try_start(&limits, true), full) {
                (Ok(()), None) => {
                    for k in self.items[x as usize].keys.clone() {
                        self.in_use[k] += 1;
                    }
                    self.items[x as usize].state = St::Running;
                }
                (Err((key, limit)), Some(k)) => {
                    prop_assert_eq!(&key, &key_name(k), "refused on the wrong limit");
                    prop_assert_eq!(limit, self.limit[k], "refused with the wrong size");
                    self.sched.park(entry, key, limit);
                    self.parked[k].push_back(x);
                    self.items[x as usize].state = St::Parked(k);
                }
                (got, want) => {
                    prop_assert!(false, "try_start gave {:?}, expected full {:?}", got, want)
                }
            }
        }

        if let Some(key) = woken {
            let k = (0..KEYS).find(|k| key_name(*k) == key).unwrap();
            self.sched.wake_if_free(&key, live(&self.items));
            self.model_wake(k);
        }
        Ok(true)
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let running = self.count(St::Running);
        prop_assert!(running <= self.workers);
        prop_assert_eq!(self.sched.running(), running);
        prop_assert_eq!(self.sched.has_free_worker(), running < self.workers);
        for k in 0..KEYS {
            let used = self.sched.in_use(&key_name(k));
            prop_assert!(used <= self.limit[k], "limit k{} exceeded: {}", k, used);
            prop_assert_eq!(used, self.in_use[k]);
            let holders = self
                .items
                .iter()
                .filter(|i| i.state == St::Running && i.keys.contains(&k))
                .count();
            prop_assert_eq!(used as usize, holders);
            // The model's waiters on k are exactly the items parked on k,
            // each once.
            prop_assert_eq!(self.parked[k].len(), self.count(St::Parked(k)));
            for y in &self.parked[k] {
                prop_assert_eq!(self.items[*y as usize].state, St::Parked(k));
            }
        }
        let parked = (0..KEYS).map(|k| self.count(St::Parked(k))).sum::<usize>();
        prop_assert_eq!(self.sched.parked_len(), parked);
        prop_assert_eq!(self.sched.ready_len(), self.count(St::Ready));
        // Every item is in exactly one place.
        prop_assert_eq!(
            self.count(St::Ready)
                + parked
                + running
                + self.count(St::Done)
                + self.count(St::Dropped),
            self.items.len()
        );
        for (x, item) in self.items.iter().enumerate() {
            prop_assert!(
                item.woken_by.is_none() || item.state == St::Ready,
                "item {} is marked woken but not ready",
                x
            );
            prop_assert!(
                item.cancelled || item.state != St::Dropped,
                "live item {} was dropped",
                x
            );
        }
        prop_assert_eq!(
            self.sched.next_due(),
            self.timers
                .iter()
                .map(|t| t.0)
                .min()
                .map(|d| self.t0 + Duration::from_millis(d))
        );
        Ok(())
    }

    /// After a full dispatch: no live parked item could start now (SPEC 7:
    /// a task held back "starts as soon as it may").
    fn check_nothing_stranded(&self) -> Result<(), TestCaseError> {
        if self.count(St::Running) >= self.workers {
            return Ok(());
        }
        for (x, item) in self.items.iter().enumerate() {
            if let (St::Parked(k), false) = (item.state, item.cancelled) {
                let blocked = item.keys.iter().any(|k| self.in_use[*k] >= self.limit[*k]);
                prop_assert!(
                    blocked,
                    "item {} (limits {:?}) stays parked on k{} with a free worker and \
                     every limit free (in use {:?} of {:?})",
                    x,
                    item.keys,
                    k,
                    self.in_use,
                    self.limit
                );
            }
        }
        Ok(())
    }
}

fn scheduler_case() -> impl Strategy<Value = (usize, [u32; KEYS], Vec<Op>)> {
    (
        1usize..=4,
        [1u32..=2, 1u32..=2, 1u32..=3],
        prop::collection::vec(op(), 1..80),
    )
}

proptest! {
    #![proptest_config(scheduler_config())]

    /// Safety: workers and limits are never exceeded, every item is in
    /// exactly one place, pops follow priority then arrival (SPEC 7,
    /// "equal priorities start in arrival order", for items that were
    /// parked on a limit too), timers pop in due order.
    #[test]
    fn scheduler_keeps_its_invariants((workers, limit, ops) in scheduler_case()) {
        let mut m = Model::new(workers, limit);
        for op in &ops {
            m.apply(op)?;
        }
    }

    /// SPEC 7, "starts as soon as it may": once the engine has popped all
    /// it can, no live parked item has a free worker and all its limits
    /// free.
    #[test]
    fn scheduler_strands_no_parked_item((workers, limit, ops) in scheduler_case()) {
        let mut m = Model::new(workers, limit);
        for op in &ops {
            m.apply(op)?;
            if matches!(op, Op::Dispatch) {
                m.check_nothing_stranded()?;
            }
        }
    }
}

fn l(keys: &[&str]) -> Vec<(String, u32)> {
    keys.iter().map(|k| (k.to_string(), 1)).collect()
}

fn item<K, E>(s: &mut Scheduler<K, E, String>) -> Option<K>
where
    K: Clone,
{
    s.pop().map(|e| e.item)
}

/// The shrunk case of `scheduler_strands_no_parked_item`: an item parked
/// on `k0` behind one that needs `k0` and `k1` stayed parked when `k0`
/// freed, because the unparked item was refused on `k1` and re-parked
/// there without passing the freed unit on. `wake_if_free` passes it on.
#[test]
fn an_item_parked_behind_a_multi_limit_item_is_not_stranded() {
    let mut s: Scheduler<&str, (), String> = Scheduler::new(4);
    for (name, keys) in [("r0", &["k0"][..]), ("r1", &["k1"])] {
        s.push(0, name);
        assert_eq!(item(&mut s), Some(name));
        s.try_start(&l(keys), true).unwrap();
    }
    // x needs both limits, y only k0: both wait on k0.
    s.push(0, "x");
    s.push(0, "y");
    for name in ["x", "y"] {
        let e = s.pop().unwrap();
        assert_eq!(e.item, name);
        assert_eq!(e.woken_by(), None);
        let full = s.try_start(&l(if name == "x" { &["k0", "k1"] } else { &["k0"] }), true);
        assert_eq!(full, Err(("k0".to_string(), 1)));
        s.park(e, "k0".into(), 1);
    }
    // r0 ends: k0 is free; x comes back, is refused on k1 and parks there.
    s.finish(&l(&["k0"]), true, |_| true);
    let e = s.pop().unwrap();
    assert_eq!(e.item, "x");
    let woken = e.woken_by().cloned();
    assert_eq!(woken.as_deref(), Some("k0"));
    let (key, limit) = s.try_start(&l(&["k0", "k1"]), true).unwrap_err();
    assert_eq!((key.as_str(), limit), ("k1", 1));
    s.park(e, key, limit);
    // x did not take k0's unit: it passes on to y.
    s.wake_if_free(&woken.unwrap(), |_| true);
    // y may start now: a worker and k0 are free.
    assert_eq!(s.in_use("k0"), 0);
    assert!(s.has_free_worker());
    let e = s.pop();
    assert_eq!(
        e.as_ref().map(|e| e.item),
        Some("y"),
        "y stays parked on k0 although k0 is free (it waits for r1 to end)"
    );
    let e = e.unwrap();
    assert_eq!(e.woken_by().map(String::as_str), Some("k0"));
    s.try_start(&l(&["k0"]), true).unwrap();
    s.wake_if_free(&"k0".to_string(), |_| true);
    assert_eq!(s.in_use("k0"), 1);
    assert_eq!(s.parked_len(), 1, "x waits on k1");
}

/// The shrunk case of `scheduler_keeps_arrival_order_after_parking` (now
/// part of `scheduler_keeps_its_invariants`): an item parked on a limit
/// came back behind items of equal priority that arrived after it (`park`
/// gave it a new sequence number). `park` takes the popped entry back,
/// with its place.
#[test]
fn an_unparked_item_keeps_its_arrival_place() {
    let k0 = l(&["k0"]);
    let mut s: Scheduler<&str, (), String> = Scheduler::new(2);
    s.push(0, "r");
    assert_eq!(item(&mut s), Some("r"));
    s.try_start(&k0, true).unwrap();
    s.push(0, "a");
    s.push(0, "b");
    s.push(0, "c");
    let e = s.pop().unwrap();
    assert_eq!(e.item, "a");
    let (key, limit) = s.try_start(&k0, true).unwrap_err();
    assert_eq!((key.as_str(), limit), ("k0", 1));
    s.park(e, key, limit);
    assert_eq!(item(&mut s), Some("b"));
    s.try_start(&[], true).unwrap();
    assert_eq!(item(&mut s), None, "both workers are busy");
    // r ends: a worker and k0 free together; a arrived before c.
    s.finish(&k0, true, |_| true);
    let e = s.pop().unwrap();
    assert_eq!(e.item, "a", "c, which arrived after a, starts first");
    assert_eq!(e.woken_by().map(String::as_str), Some("k0"));
    s.try_start(&k0, true).unwrap();
    s.wake_if_free(&"k0".to_string(), |_| true);
    assert_eq!(item(&mut s), None, "both workers are busy");
    // b ends: c is next.
    s.finish(&[], true, |_| true);
    assert_eq!(item(&mut s), Some("c"));
}
