//! Offers off the event loop: a small bounded pool of threads that run a
//! node's taskmaster (up to the sandbox's deadline) and resolve the taskee
//! it chose, so that a script that takes its full second delays only its
//! own task. Results come back to the loop as [`Offered`] messages.
//!
//! A standalone task's payload and headers are read back from its `run/`
//! file here too (see `body`), so that the loop never waits on a large
//! one; the answer carries them back.
//!
//! When the caches already know the answer without a script or a look at
//! the disk (a domain without a taskmaster whose requested tasker was
//! resolved before), the offer is made inline ([`Offers::known`]): no
//! thread hop on the hot path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::mpsc::UnboundedSender;

use super::body::{self, BodyError};
use super::state::Loaded;
use crate::layout::Root;
use crate::model::names::{Domain, Nid, TaskId, Taskee};
use crate::model::task::Refusal;
use crate::scheduler::NodeKey;
use crate::tasker::{Resolved, TaskerError, Taskers};
use crate::taskmaster::{self, Choice, TaskmasterError, TaskmasterInput, Taskmasters};

/// Threads in the pool at most (offers in flight are bounded by the
/// workers anyway: an offered node holds a worker slot).
const MAX_THREADS: usize = 8;

/// What a taskmaster sees of a node, owned so that it can cross threads.
#[derive(Debug, Clone)]
pub struct OfferInput {
    pub id: TaskId,
    pub exid: TaskId,
    pub nid: Nid,
    pub domain: Domain,
    pub tasker: Option<Taskee>,
    pub attempt: u32,
    pub offers: u32,
    pub refusals: Vec<Refusal>,
    /// The payload and headers; `None`: read them back from `run/`.
    pub body: Option<Loaded>,
}

impl OfferInput {
    fn as_input<'a>(&'a self, body: &'a Loaded) -> TaskmasterInput<'a> {
        TaskmasterInput {
            id: &self.id,
            exid: &self.exid,
            nid: &self.nid,
            domain: &self.domain,
            tasker: self.tasker.as_ref(),
            attempt: self.attempt,
            offers: self.offers,
            headers: &body.headers,
            refusals: &self.refusals,
            payload: &body.payload,
        }
    }
}

/// The answer to an offer: the taskmaster's choice and, when it chose a
/// taskee, what that taskee resolves to.
#[derive(Debug)]
pub struct Answer {
    pub choice: Result<Choice, TaskmasterError>,
    pub resolved: Option<Result<Resolved, TaskerError>>,
    /// The payload and headers read back from `run/` for this offer.
    pub body: Option<Loaded>,
}

/// An answer for a node, of the generation it was offered under.
#[derive(Debug)]
pub struct Offered {
    pub key: NodeKey,
    pub gen: u64,
    pub answer: Result<Answer, BodyError>,
}

struct Job {
    key: NodeKey,
    gen: u64,
    input: OfferInput,
}

/// The lookups shared by the loop and the pool.
#[derive(Clone)]
struct Shared {
    taskmasters: Arc<Mutex<Taskmasters>>,
    taskers: Arc<Mutex<Taskers>>,
    /// Where bodies are read back from, and their bound.
    root: Root,
    body_limit: u64,
}

/// Locks a cache; a thread that panicked while holding it left nothing a
/// lookup cannot redo, so a poisoned lock is taken as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Reads the body back if the input has none, runs the taskmaster (if
    /// any) and resolves the chosen taskee.
    /// A body that cannot be read back is the answer: the taskmaster is
    /// not asked.
    fn answer(&self, mut input: OfferInput) -> Result<Answer, BodyError> {
        let (given, read) = match input.body.take() {
            Some(b) => (b, None),
            None => (
                Loaded::default(),
                Some(body::read(&self.root, &input.id, self.body_limit)?),
            ),
        };
        let body = read.as_ref().unwrap_or(&given);
        let prepared = lock(&self.taskmasters).prepare(&input.domain);
        let choice = match prepared {
            Ok(Some(script)) => script.choose(&input.as_input(body)),
            Ok(None) => taskmaster::requested(&input.as_input(body)),
            Err(e) => Err(e),
        };
        let resolved = match &choice {
            Ok(Choice::Taskee(t)) => Some(lock(&self.taskers).resolve(&input.domain, t)),
            _ => None,
        };
        Ok(Answer {
            choice,
            resolved,
            body: read,
        })
    }
}

/// The pool.
pub struct Offers {
    shared: Shared,
    tx: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    /// Set when the engine ends: offers still queued are dropped.
    closed: Arc<AtomicBool>,
}

impl Offers {
    /// Starts the pool for a root; answers go to `results`.
    pub fn start(
        root: &Root,
        workers: usize,
        body_limit: u64,
        results: UnboundedSender<PoolAnswer>,
    ) -> std::io::Result<Offers> {
        let mut taskmasters = Taskmasters::new(root.dir());
        let mut taskers = Taskers::new(root.tsk());
        // The engine watches tsk/ and calls `invalidate` on every change.
        taskmasters.set_watched(true);
        taskers.set_watched(true);
        let shared = Shared {
            taskmasters: Arc::new(Mutex::new(taskmasters)),
            taskers: Arc::new(Mutex::new(taskers)),
            root: root.clone(),
            body_limit,
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let closed = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..workers.clamp(1, MAX_THREADS) {
            let (rx, results) = (rx.clone(), results.clone());
            let (shared, closed) = (shared.clone(), closed.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("spoolflow-offer-{i}"))
                .spawn(move || serve(&rx, &results, &shared, &closed));
            match spawned {
                Ok(t) => threads.push(t),
                // One thread is enough to go on with.
                Err(e) if !threads.is_empty() => tracing::warn!("offer thread {i}: {e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(Offers {
            shared,
            tx: Some(tx),
            threads,
            closed,
        })
    }

    /// Forgets cached lookups (something under `tsk/` changed).
    pub fn invalidate(&self) {
        lock(&self.shared.taskmasters).invalidate();
        lock(&self.shared.taskers).invalidate();
    }

    /// The answer when the caches hold it: `domain` has no taskmaster and
    /// the requested tasker's resolution is cached (or none was requested).
    pub fn known(&self, domain: &Domain, requested: Option<&Taskee>) -> Option<Answer> {
        if !lock(&self.shared.taskmasters).known_absent(domain) {
            return None;
        }
        let Some(taskee) = requested else {
            let choice = Err(TaskmasterError::NoTaskee(domain.clone()));
            return Some(Answer {
                choice,
                resolved: None,
                body: None,
            });
        };
        let resolved = lock(&self.shared.taskers).cached(domain, taskee)?;
        Some(Answer {
            choice: Ok(Choice::Taskee(taskee.clone())),
            resolved: Some(Ok(resolved)),
            body: None,
        })
    }

    /// Hands an offer to the pool.
    pub fn send(&self, key: NodeKey, gen: u64, input: OfferInput) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job { key, gen, input });
        }
    }

    /// Lets the threads finish the offer they run, then ends them (offers
    /// still queued are dropped: their tasks stay in `run/`).
    pub fn finish(mut self) {
        self.closed.store(true, Ordering::Release);
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What the pool sends back: the domain offered for, and the answer.
pub type PoolAnswer = (Domain, Offered);

fn serve(
    rx: &Mutex<mpsc::Receiver<Job>>,
    results: &UnboundedSender<PoolAnswer>,
    shared: &Shared,
    closed: &AtomicBool,
) {
    loop {
        let job = match lock(rx).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        if closed.load(Ordering::Acquire) {
            continue;
        }
        let Job { key, gen, input } = job;
        let domain = input.domain.clone();
        // A panic in a script run or a lookup must not lose the answer:
        // the domain's next offers wait for it.
        let answer =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.answer(input)))
                .unwrap_or_else(|_| {
                    Ok(Answer {
                        choice: Err(TaskmasterError::Script {
                            path: format!("the taskmaster of {domain}"),
                            message:
                                "the engine failed while running it (a bug: see the engine log)"
                                    .into(),
                        }),
                        resolved: None,
                        body: None,
                    })
                });
        let _ = results.send((domain, Offered { key, gen, answer }));
    }
}
