//! `spoolflow status [--json] [--watch]`: counts by state in total, per
//! domain and per taskee, and the engine (pid, uptime, workers busy/total).

use std::io::IsTerminal;
use std::path::PathBuf;

use chrono::Utc;
use spoolflow::read::status::{status, Counts, Status};
use spoolflow::read::summary::ListState;
use spoolflow::read::{engine, tasks};

use super::output::{duration, print_json, table};
use super::{exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the counts as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Redraw every second until Ctrl-C (on a terminal).
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::existing_root(root)?;
    let read = || {
        let engine = engine::engine(&root);
        let listing = tasks::listing(&root, engine.as_ref());
        status(&listing, engine.as_ref(), Utc::now())
    };
    if args.json {
        return print_json(&read());
    }
    if !args.watch {
        print!("{}", render(&read()));
        return Ok(());
    }
    if !std::io::stdout().is_terminal() {
        return Err(Failure::new(exit::USAGE, "--watch needs a terminal"));
    }
    loop {
        // Clear the screen, then draw: Ctrl-C ends it.
        print!("\x1b[2J\x1b[H{}", render(&read()));
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// The human form of a status.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    match &s.engine {
        Some(e) => out.push_str(&format!(
            "engine: running, pid {}, up {}, workers {}/{} busy\n",
            e.pid,
            duration(e.uptime_secs as f64),
            e.workers_busy,
            e.workers.map_or("?".to_string(), |w| w.to_string()),
        )),
        None => out.push_str("engine: not running\n"),
    }
    if let Some(e) = s
        .engine
        .as_ref()
        .filter(|e| e.slurm_pending + e.slurm_running > 0)
    {
        out.push_str(&format!(
            "slurm: {} pending, {} running\n",
            e.slurm_pending, e.slurm_running
        ));
    }
    let mut headers = vec![""];
    headers.extend(ListState::ALL.iter().map(|s| s.as_str()));
    headers.push("total");
    let row = |name: &str, c: &Counts| {
        let mut r = vec![name.to_string()];
        r.extend(ListState::ALL.iter().map(|st| c.get(*st).to_string()));
        r.push(c.total().to_string());
        r
    };
    let numbers: Vec<usize> = (1..headers.len()).collect();
    let mut rows = vec![row("all", &s.total)];
    out.push('\n');
    out.push_str(&table(&headers, std::mem::take(&mut rows), &numbers));
    out.push('\n');
    for (title, map) in [("domain", &s.domains), ("taskee", &s.taskees)] {
        if map.is_empty() {
            continue;
        }
        headers[0] = title;
        let rows = map.iter().map(|(k, c)| row(k, c)).collect();
        out.push('\n');
        out.push_str(&table(&headers, rows, &numbers));
        out.push('\n');
    }
    for u in &s.unreadable {
        out.push_str(&format!("unreadable: {u}\n"));
    }
    out
}
