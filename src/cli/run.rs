//! `spoolflow run [--workers N] [--slurm-jobs N] [--slurm-poll D] [--drain] [--grace D] [--kill-grace D]`: the engine in the
//! foreground, logging to stderr and var/log/engine.log; SIGINT, SIGTERM,
//! SIGHUP and SIGQUIT stop it gracefully. Colour on stderr only on a terminal and never with
//! `NO_COLOR`; with `--drain` on a terminal, a progress line (see
//! `progress`) redrawn in place.

use std::path::PathBuf;
use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

use super::{exit, Failure};
use spoolflow::engine::{self, Options, StopRequest};
use spoolflow::model::task::Dur;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Taskers running at once (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Slurm jobs of this engine pending or running at once (taskers with
    /// "executor": "slurm").
    #[arg(long, default_value_t = 100)]
    pub slurm_jobs: u32,
    /// How often the engine asks Slurm about its jobs (one squeue for all).
    #[arg(long, default_value = "1s")]
    pub slurm_poll: Dur,
    /// Exit once in/ and run/ are empty.
    #[arg(long)]
    pub drain: bool,
    /// On SIGINT/SIGTERM, how long running taskers may finish (e.g. 10s).
    #[arg(long, default_value = "10s")]
    pub grace: Dur,
    /// After SIGTERM to a tasker's process group (a timeout, a cancel, a
    /// stop), how long before SIGKILL.
    #[arg(long, default_value = "5s")]
    pub kill_grace: Dur,
    /// The period of the safety-net rescan of in/ (a test seam: tests set
    /// it far longer than themselves).
    #[arg(long, default_value = "30s", hide = true)]
    pub rescan: Dur,
}

/// Whether stderr may carry ANSI colour: a terminal, and no `NO_COLOR`
/// (any non-empty value, <https://no-color.org>).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn init_logging(root: &spoolflow::Root, progress: bool) {
    let filter =
        EnvFilter::try_from_env("SPOOLFLOW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.engine_log())
        .ok();
    let registry = tracing_subscriber::registry().with(filter).with(
        fmt::layer()
            .with_ansi(colour_on_stderr())
            .with_writer(move || super::progress::LogWriter::new(progress))
            .with_target(false),
    );
    let _ = match file {
        Some(f) => registry
            .with(
                fmt::layer()
                    .with_ansi(false)
                    .with_target(false)
                    .with_writer(Mutex::new(f)),
            )
            .try_init(),
        None => registry.try_init(),
    };
}

/// The signals that stop the engine gracefully (SPEC 10): SIGINT and
/// SIGTERM, and also SIGHUP (the terminal the engine ran in was closed)
/// and SIGQUIT, whose default actions would kill the engine at once and
/// leave its taskers running under init. SIGPIPE is ignored by Rust's
/// runtime: a log line written to a closed terminal or pipe is lost, and
/// the engine goes on.
struct StopSignals {
    sigs: Vec<(tokio::signal::unix::Signal, &'static str)>,
}

impl StopSignals {
    fn new() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        let kinds = [
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::interrupt(), "SIGINT"),
            (
                SignalKind::hangup(),
                "SIGHUP (the terminal was closed); stopping as on SIGTERM",
            ),
            (SignalKind::quit(), "SIGQUIT; stopping as on SIGTERM"),
        ];
        let mut sigs = Vec::with_capacity(kinds.len());
        for (kind, name) in kinds {
            sigs.push((signal(kind)?, name));
        }
        Ok(StopSignals { sigs })
    }

    /// The next signal received, by name.
    async fn next(&mut self) -> &'static str {
        std::future::poll_fn(|cx| {
            for (sig, name) in &mut self.sigs {
                if let std::task::Poll::Ready(Some(())) = sig.poll_recv(cx) {
                    return std::task::Poll::Ready(*name);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::find_root(root)?;
    root.ensure_exists()
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    // The layout made whole before the log file is opened in it (an
    // operator may have removed var/run/ or var/log/).
    root.make_var()
        .map_err(|e| Failure::new(exit::FAILURE, e))?;
    let progress = args.drain && super::progress::wanted();
    init_logging(&root, progress);
    let mut options = Options::default();
    if let Some(w) = args.workers {
        if w == 0 {
            return Err(Failure::new(exit::USAGE, "--workers must be at least 1"));
        }
        options.workers = w;
    }
    if args.slurm_jobs == 0 {
        return Err(Failure::new(exit::USAGE, "--slurm-jobs must be at least 1"));
    }
    if args.slurm_poll.0 < std::time::Duration::from_millis(100) {
        return Err(Failure::new(
            exit::USAGE,
            "--slurm-poll must be at least 0.1s",
        ));
    }
    options.slurm_jobs = args.slurm_jobs;
    options.slurm_poll = args.slurm_poll.0;
    options.drain = args.drain;
    options.grace = args.grace.0;
    options.kill_grace = args.kill_grace.0;
    options.rescan = args.rescan.0;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::FAILURE, e))?;
    rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut signals = StopSignals::new().map_err(|e| Failure::new(exit::FAILURE, e))?;
        tokio::spawn(async move {
            loop {
                let name = signals.next().await;
                tracing::info!("received {name}");
                if stop_tx.send(StopRequest::Graceful).is_err() {
                    break;
                }
            }
        });
        // "engine started" is logged by the engine once it holds the lock.
        let drawer = progress.then(|| super::progress::Drawer::start(&mut options));
        let result = engine::run(root, options, Some(stop_rx))
            .await
            .map_err(|e| Failure::new(exit::FAILURE, e));
        if let Some(d) = drawer {
            d.finish();
        }
        result
    })?;
    tracing::info!("engine stopped");
    Ok(())
}
