//! The command line (SPEC section 11): clap definitions, dispatch to one
//! file per command, and the mapping of errors to exit codes.

pub(crate) mod cancel;
mod check;
mod completions;
pub(crate) mod flow;
mod init;
mod run;
mod schema;
mod submit;
// lead (issue 9): the reading commands
mod events;
pub(crate) mod follow;
mod gc;
pub(crate) mod list;
mod logs;
pub(crate) mod output;
mod points;
pub(crate) mod show;
mod status;
mod wait;
// wt-engine
pub(crate) mod priority;
mod progress;
mod rejection;
pub(crate) mod retry;
// issue 12: the dashboard
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes of SPEC 11.
pub mod exit {
    pub const SUCCESS: u8 = 0;
    /// The awaited task failed or was aborted; the engine failed.
    pub const FAILURE: u8 = 1;
    /// Bad usage or input.
    pub const USAGE: u8 = 2;
    /// An unknown id or exid.
    pub const NOT_FOUND: u8 = 3;
    /// Timed out waiting.
    pub const TIMEOUT: u8 = 4;
}

/// A filesystem-driven workflow engine: drop JSON tasks into
/// var/spool/in/, a Rhai taskmaster picks a tasker, results land in
/// var/spool/done/ and var/spool/failed/.
#[derive(Debug, Parser)]
#[command(name = "spoolflow", version, about, propagate_version = true)]
pub struct Cli {
    /// The root directory (default: $SPOOLFLOW_ROOT when set and not empty,
    /// else the nearest root at or above the current directory).
    // Not clap's `env`: it takes an empty value as a missing `--root DIR`.
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a root's layout in DIR (or the root); idempotent, never overwrites a file.
    Init(init::Args),
    /// Run the engine in the foreground.
    Run(run::Args),
    /// Write a task file into var/spool/in/ atomically and print its id.
    Submit(submit::Args),
    /// Validate tsk/: compile every taskmaster, check every tasker.
    Check(check::Args),
    /// Print the JSON Schema of a format: task, tasker, record or point.
    #[command(display_order = 1000)]
    Schema(schema::Args),
    /// Print a shell completion script: bash, zsh or fish.
    #[command(display_order = 1001)]
    Completions(completions::Args),
    /// Cancel a queued or running task.
    Cancel(cancel::Args),
    /// Draw a flow's tree with each node's state (running or ended).
    Flow(flow::Args),
    /// Counts by state, domain and taskee; the engine and its workers.
    Status(status::Args),
    /// The tasks in a table: filter, sort, page.
    List(list::Args),
    /// One task: its record or current state, earlier attempts, points.
    Show(show::Args),
    /// An execution's points (and stderr); --follow until it ends.
    Logs(logs::Args),
    /// Block until the tasks end; print the final payload.
    Wait(wait::Args),
    /// Every point of every execution as JSON lines, in time order.
    Events(events::Args),
    /// Remove records, rejected files and logs older than D.
    Gc(gc::Args),
    /// Queue a failed or aborted task again as a new attempt (same id).
    Retry(retry::Args),
    /// Change the priority of a queued task.
    Priority(priority::Args),
    /// Serve a web dashboard of the root (read-only unless --allow-actions).
    Serve(serve::Args),
}

/// An error at the CLI edge: a message and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl std::fmt::Display) -> Failure {
        Failure {
            code,
            message: message.to_string(),
        }
    }
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_) | Command::Serve(_)) {
        die_of_sigpipe();
    }
    let root = cli.root.or_else(root_from_env);
    let result = match cli.command {
        Command::Init(a) => init::run(root, a),
        Command::Run(a) => run::run(root, a),
        Command::Submit(a) => submit::run(root, a),
        Command::Check(a) => check::run(root, a),
        Command::Schema(a) => schema::run(root, a),
        Command::Completions(a) => completions::run(root, a),
        Command::Cancel(a) => cancel::run(root, a),
        Command::Flow(a) => flow::run(root, a),
        Command::Status(a) => status::run(root, a),
        Command::List(a) => list::run(root, a),
        Command::Show(a) => show::run(root, a),
        Command::Logs(a) => logs::run(root, a),
        Command::Wait(a) => wait::run(root, a),
        Command::Events(a) => events::run(root, a),
        Command::Gc(a) => gc::run(root, a),
        Command::Retry(a) => retry::run(root, a),
        Command::Priority(a) => priority::run(root, a),
        Command::Serve(a) => serve::run(root, a),
    };
    match result {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        Err(f) => {
            if !f.message.is_empty() {
                // Never a panic on a closed terminal (the engine's last
                // words after a SIGHUP).
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "spoolflow: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

/// A command that prints ends quietly, as `cat` does, when what reads its
/// output goes away (`spoolflow show x | head -1`): SIGPIPE is set back
/// to its default action, which Rust's runtime ignores (every write would
/// then fail with EPIPE, and `println!` panic on it). Not for `run` and
/// `serve`: a tasker that exits before reading its stdin, or a browser
/// that leaves, must be an error the engine handles, not its death.
fn die_of_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_DFL installs no handler, so no code runs in signal
    // context; this runs first thing in `main`, before any thread starts.
    #[allow(unsafe_code)]
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// `$SPOOLFLOW_ROOT`, unless unset or empty.
fn root_from_env() -> Option<PathBuf> {
    std::env::var_os("SPOOLFLOW_ROOT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The root from `--root`/`$SPOOLFLOW_ROOT`/the current directory.
fn find_root(flag: Option<PathBuf>) -> Result<spoolflow::Root, Failure> {
    spoolflow::Root::find(flag.as_deref()).map_err(|e| Failure::new(exit::USAGE, e))
}

/// [`find_root`], for a command that only reads: a root that does not
/// exist is bad usage (exit 2), not an empty one.
fn existing_root(flag: Option<PathBuf>) -> Result<spoolflow::Root, Failure> {
    let root = find_root(flag)?;
    root.ensure_exists()
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    Ok(root)
}
