//! `spoolflow logs EXID [--follow] [--stderr] [--json]`: an execution's
//! points, one readable line each (`--json`: the log's JSON lines as they
//! are), and with `--stderr` what its taskers wrote on stderr. `--follow`
//! prints what is appended as it is appended (woken by the filesystem
//! watcher) and exits by itself once the execution has ended, or with
//! exit 1 once its task file was rejected at intake.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::json;
use spoolflow::model::names::TaskId;
use spoolflow::model::point::{Kind, Point};
use spoolflow::read;

use super::follow::{Follow, Tail};
use super::rejection::{ended, Rejection};
use super::{exit, points, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The execution's id (a task's or a flow's id).
    pub exid: String,
    /// Keep printing new points until the execution ends.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Also print what the execution's taskers wrote on stderr.
    #[arg(long)]
    pub stderr: bool,
    /// Print the points as JSON lines (stderr lines as {"stderr": …}).
    #[arg(long)]
    pub json: bool,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::existing_root(root)?;
    let exid: TaskId = args
        .exid
        .parse()
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    let log = root.points_log(&exid);
    // Watch before the first read: nothing appended in between is missed.
    let follow = if args.follow {
        Some(Follow::new(&[
            root.log_tsk(),
            root.done(),
            root.failed(),
            root.rejected(),
        ])?)
    } else {
        None
    };
    // File times are coarser than the clock: a second of slack.
    let since = SystemTime::now() - Duration::from_secs(1);
    let rejection = if log.exists() {
        Rejection::default()
    } else {
        let place = read::find(&root, &exid).ok().flatten().or_else(|| {
            // Rejected under another name while this command started.
            args.follow
                .then(|| read::find::find_recently_rejected(&root, &exid, SystemTime::now()))
                .flatten()
        });
        let Some(place) = place else {
            return Err(Failure::new(
                exit::NOT_FOUND,
                format!("unknown exid {exid}"),
            ));
        };
        Rejection::of(Some(&place))
    };
    let mut printer = Printer {
        points: Tail::new(log),
        stderr: Tail::new(root.stderr_log(&exid)),
        finals: 0,
        last_date: String::new(),
        json: args.json,
        with_stderr: args.stderr,
    };
    // The execution has ended once its record exists and the log holds
    // its final point — one more than it held for each earlier attempt
    // (`retry` keeps the log).
    let finals_wanted = read::history(&root, &exid).len() + 1;
    loop {
        let finals = printer.print_new();
        let Some(follow) = &follow else { break };
        // Ended: its record is there, and its final point too — or no
        // engine runs to append it (a crash between the two; the next
        // start writes it).
        if ended(&root, &exid) && finals >= finals_wanted {
            break;
        }
        if ended(&root, &exid) && spoolflow::read::engine::engine(&root).is_none() {
            // The engine may have appended the final point after the
            // read above, and ended since: what the log holds now is
            // printed before the command ends.
            printer.print_new();
            break;
        }
        if let Some(reason) = rejection.look(&root, &exid, since) {
            return Err(Failure::new(
                exit::FAILURE,
                format!("task {exid} was rejected at intake: {reason}"),
            ));
        }
        if follow.next(None).is_none() {
            return Err(Failure::new(
                exit::FAILURE,
                "the filesystem watcher stopped",
            ));
        }
    }
    Ok(())
}

/// What `logs` printed of an execution's logs so far.
struct Printer {
    points: Tail,
    stderr: Tail,
    /// The execution's final points printed.
    finals: usize,
    last_date: String,
    json: bool,
    with_stderr: bool,
}

impl Printer {
    /// Prints what the logs hold beyond what was printed; returns the
    /// final points printed in all.
    fn print_new(&mut self) -> usize {
        loop {
            for l in self.points.lines() {
                self.finals += print_point(&l, self.json, &mut self.last_date);
            }
            if !self.points.more() {
                break;
            }
        }
        if self.with_stderr {
            print_stderr(&mut self.stderr, self.json);
        }
        self.finals
    }
}

/// Prints one line of the log; 1 when it is the execution's final point.
fn print_point(line: &[u8], json: bool, last_date: &mut String) -> usize {
    let parsed: Option<Point> = serde_json::from_slice(line).ok();
    if json {
        println!("{}", String::from_utf8_lossy(line));
    } else if let Some(p) = &parsed {
        points::print_all([p], last_date);
    }
    parsed.map_or(0, |p| {
        usize::from(p.nid.as_str() == "0" && p.kind().is_some_and(Kind::is_final))
    })
}

fn print_stderr(tail: &mut Tail, json: bool) {
    loop {
        for l in tail.lines() {
            let text = String::from_utf8_lossy(&l);
            if json {
                println!("{}", json!({ "stderr": text }));
            } else {
                println!("  stderr| {text}");
            }
        }
        if !tail.more() {
            break;
        }
    }
}
