//! The one observer of the engine's Slurm jobs (SPEC 14): every poll
//! interval, while any job is watched, one `squeue` for all of them
//! (never a process per job), and, for jobs it no longer shows, one
//! `sacct` when the cluster keeps accounting; the rows are handed to each
//! job's driver through a `watch` channel. A controller that cannot be
//! reached is told to every driver, which waits for it.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::command;
use super::squeue::{self, Row};

/// What the poller last learnt of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Not polled yet.
    Unknown,
    /// `squeue` shows it.
    Seen(Row),
    /// `squeue` answered, without it: the cluster no longer knows it.
    Gone,
    /// `squeue` failed (the controller is down, or `squeue` cannot run).
    Unreachable(String),
    /// `squeue` no longer shows the job and `sacct` failed (the
    /// accounting daemon down): how it ended cannot be told yet.
    Unaccounted(String),
}

/// Which job a driver follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// By id, checked against its name and directory: a controller that
    /// lost its last seconds of state may give a forgotten job's id to
    /// another job.
    Job { id: u64, name: String, dir: String },
    /// By name and directory: a job submitted just before a crash, its id
    /// not recorded.
    Name { name: String, dir: String },
}

struct Watched {
    target: Target,
    tx: watch::Sender<View>,
}

/// The handle drivers register with.
#[derive(Clone)]
pub struct Poller {
    tx: mpsc::UnboundedSender<Watched>,
}

impl Poller {
    /// Starts the poller on the runtime.
    pub fn start(interval: Duration) -> Poller {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, interval));
        Poller { tx }
    }

    /// Follows a job: its view changes after every poll that sees it
    /// change. Dropping the receiver ends the watch.
    pub fn watch(&self, target: Target) -> watch::Receiver<View> {
        let (tx, rx) = watch::channel(View::Unknown);
        let _ = self.tx.send(Watched { target, tx });
        rx
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Watched>, interval: Duration) {
    let mut watched: Vec<Watched> = Vec::new();
    // `sacct` is asked about jobs `squeue` forgot until it says the
    // cluster keeps no accounting.
    let mut accounting = true;
    // An `sacct` older than the `WorkDir` field is asked without it.
    let mut sacct_format = squeue::SACCT_FORMAT;
    loop {
        if watched.is_empty() {
            match rx.recv().await {
                Some(w) => watched.push(w),
                None => return,
            }
        }
        tokio::time::sleep(interval).await;
        while let Ok(w) = rx.try_recv() {
            watched.push(w);
        }
        watched.retain(|w| !w.tx.is_closed());
        if watched.is_empty() {
            continue;
        }
        let mut answer = query().await;
        // Why `sacct` could not tell of the jobs `squeue` forgot: they are
        // waited for, not taken as gone (gone, a job runs again).
        let mut sacct_failed = None;
        if let (Ok(rows), true) = (&mut answer, accounting) {
            let forgotten: Vec<u64> = watched
                .iter()
                .filter_map(|w| match &w.target {
                    Target::Job { id, .. } if !rows.iter().any(|r| r.id == *id) => Some(*id),
                    _ => None,
                })
                .collect();
            if !forgotten.is_empty() {
                let mut asked = query_sacct(&forgotten, sacct_format).await;
                if matches!(&asked, Err(e) if squeue::unknown_field(e)) {
                    sacct_format = squeue::SACCT_FORMAT_OLD;
                    asked = query_sacct(&forgotten, sacct_format).await;
                }
                match asked {
                    Ok(more) => rows.extend(more),
                    Err(e) if squeue::accounting_off(&e) => accounting = false,
                    Err(e) => {
                        tracing::warn!("sacct cannot tell of ended Slurm jobs: {e}");
                        sacct_failed = Some(format!("sacct: {e}"));
                    }
                }
            }
        }
        for w in &watched {
            let view = match &answer {
                Err(reason) => View::Unreachable(reason.clone()),
                Ok(rows) => match (find(rows, &w.target), &w.target, &sacct_failed) {
                    (Some(r), _, _) => View::Seen(r.clone()),
                    (None, Target::Job { .. }, Some(why)) => View::Unaccounted(why.clone()),
                    (None, _, _) => View::Gone,
                },
            };
            w.tx.send_if_modified(|v| {
                let changed = *v != view;
                *v = view;
                changed
            });
        }
    }
}

fn find<'a>(rows: &'a [Row], target: &Target) -> Option<&'a Row> {
    match target {
        Target::Job { id, name, dir } => rows.iter().find(|r| r.id == *id && r.is_run(name, dir)),
        Target::Name { name, dir } => squeue::newest_run(rows, name, dir),
    }
}

/// One `sacct` for the jobs `squeue` no longer shows (ended longer ago
/// than the controller keeps them).
async fn query_sacct(ids: &[u64], format: &str) -> Result<Vec<Row>, String> {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    let args = ["-n", "-P", "-X", "-o", format, "-j", &ids.join(",")].map(String::from);
    let out = command::run("sacct", &args).await?;
    Ok(squeue::parse_sacct(&out))
}

/// One `squeue` for all of this user's jobs, in every state Slurm still
/// keeps.
pub async fn query() -> Result<Vec<Row>, String> {
    let out = command::run("squeue", &command::squeue_args()).await?;
    Ok(squeue::parse(&out))
}
