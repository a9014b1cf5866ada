//! `spoolflow list`: the tasks of the root in a table (or `--json`: an
//! array of records; tasks not ended yet are given as their summary, with
//! the same keys where they mean the same thing), filtered, sorted and
//! paged by the read layer's query.

use std::path::PathBuf;

use chrono::Utc;
use serde_json::Value;
use spoolflow::layout::Root;
use spoolflow::model::names::TaskId;
use spoolflow::read::query::{Query, Sort};
use spoolflow::read::summary::{ListState, Summary};
use spoolflow::read::{engine, record, tasks};

use super::output::{
    age, between, colour, cutoff, duration, paint_state, parse_duration, plural, table,
};
use super::{exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only tasks in this state (queued, delayed, running, completed,
    /// failed, aborted, rejected); repeat for several.
    #[arg(long, value_name = "S")]
    pub state: Vec<String>,
    /// Only tasks of this domain or below it.
    #[arg(long, value_name = "D")]
    pub domain: Option<String>,
    /// Only tasks of this taskee.
    #[arg(long, value_name = "T")]
    pub taskee: Option<String>,
    /// Only tasks that ended (or, not ended, were created) within this
    /// duration: 30s, 5m, 2h, 7d.
    #[arg(long, value_name = "D")]
    pub since: Option<String>,
    /// created, ended, priority or id; -FIELD for descending.
    #[arg(
        long,
        value_name = "FIELD",
        default_value = "created",
        allow_hyphen_values = true
    )]
    pub sort: String,
    /// Reverse the order.
    #[arg(long)]
    pub reverse: bool,
    /// Show at most N tasks.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Skip the first N tasks.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub skip: usize,
    /// Print a JSON array of records.
    #[arg(long)]
    pub json: bool,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::existing_root(root)?;
    let now = Utc::now();
    let query = query(&args, now)?;
    let engine = engine::engine(&root);
    let listing = tasks::listing(&root, engine.as_ref());
    for u in &listing.unreadable {
        eprintln!("spoolflow: skipped: {u}");
    }
    let (page, total) = query.apply(listing.tasks);
    if args.json {
        let out: Vec<Value> = page.iter().map(|t| as_json(&root, t)).collect();
        return super::output::print_json(&out);
    }
    if page.is_empty() {
        println!("no tasks{}", if total > 0 { " on this page" } else { "" });
        return Ok(());
    }
    let shown = page.len();
    println!("{}", render(&page, now, colour()));
    if shown < total {
        println!(
            "({shown} of {}; --skip and --limit page through them)",
            plural(total, "task", "tasks")
        );
    }
    Ok(())
}

/// The query the flags describe.
pub(crate) fn query(args: &Args, now: chrono::DateTime<Utc>) -> Result<Query, Failure> {
    let usage = |m: String| Failure::new(exit::USAGE, m);
    let states = args
        .state
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| {
            ListState::parse(s).ok_or_else(|| {
                usage(format!(
                    "unknown state {s:?}: use queued, delayed, running, completed, failed, aborted or rejected"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut sort: Sort = args.sort.parse().map_err(usage)?;
    sort.descending ^= args.reverse;
    Ok(Query {
        states,
        domain: match &args.domain {
            Some(d) => Some(d.parse().map_err(|e| usage(format!("--domain {d}: {e}")))?),
            None => None,
        },
        taskee: args.taskee.clone(),
        since: match &args.since {
            Some(s) => Some(cutoff(parse_duration("--since", s)?, now)),
            None => None,
        },
        sort,
        skip: args.skip,
        limit: args.limit,
    })
}

/// The table of a page of tasks.
pub fn render(page: &[Summary], now: chrono::DateTime<Utc>, colour: bool) -> String {
    let rows = page
        .iter()
        .map(|t| {
            let took = t
                .started_at
                .as_deref()
                .and_then(|s| between(Some(s), t.ended_at.as_deref(), now))
                .map_or("-".to_string(), duration);
            let error = match (&t.error_kind, &t.reason) {
                (Some(k), Some(r)) => format!("{k}: {r}"),
                (Some(k), None) => k.clone(),
                (None, Some(r)) if !matches!(t.state, ListState::Completed) => r.clone(),
                _ => String::new(),
            };
            // One line of a table: the whole reason is in `show`.
            let error = if error.chars().count() > 80 {
                format!("{}…", error.chars().take(79).collect::<String>())
            } else {
                error
            };
            vec![
                format!("{}{}", t.id, if t.flow { " (flow)" } else { "" }),
                paint_state(t.state, colour),
                t.domain.clone(),
                taskee_cell(t),
                t.attempts.to_string(),
                age(t.created_at.as_deref(), now),
                took,
                error,
            ]
        })
        .collect();
    table(
        &[
            "ID", "STATE", "DOMAIN", "TASKEE", "ATTEMPTS", "CREATED", "TOOK", "ERROR",
        ],
        rows,
        &[4],
    )
}

/// The TASKEE cell: the taskee, and where a Slurm node of it runs.
fn taskee_cell(t: &Summary) -> String {
    let taskee = t.taskee.clone().unwrap_or_else(|| "-".into());
    match t.slurm.as_slice() {
        [] => taskee,
        [one] => format!("{taskee} ({one})"),
        many => format!("{taskee} ({} Slurm jobs)", many.len()),
    }
}

/// A task as `--json` gives it: its record once it ended, else its
/// summary.
pub(crate) fn as_json(root: &Root, t: &Summary) -> Value {
    let ended = matches!(
        t.state,
        ListState::Completed | ListState::Failed | ListState::Aborted
    );
    if ended {
        if let Some(r) =
            t.id.parse::<TaskId>()
                .ok()
                .and_then(|id| record(root, &id).ok().flatten())
        {
            return serde_json::to_value(r).unwrap_or(Value::Null);
        }
    }
    serde_json::to_value(t).unwrap_or(Value::Null)
}
