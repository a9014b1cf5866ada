//! The spoolflow benchmark (DESIGN.md, "Measuring").
//!
//! ```text
//! cargo run --release --example bench -- [--fs /dev/shm,/tmp] [--tasks 10000] [--workers W]
//!                                        [--queues 1000,10000,100000]
//!                                        [--rounds R] [--rate 200] [--latency-secs 2]
//!                                        [--flow-sequence 1000] [--flow-each 9998]
//!                                        [--submit 20000]
//! ```
//!
//! Every measure below runs on each directory of `--fs` in turn (by
//! default tmpfs and this machine's disk); the bench prints one table of
//! every figure beside its target, a column per filesystem, then each
//! filesystem's detailed tables. Every run uses a fresh temporary root
//! (under that directory) whose only tasker is `tsk/bench/cat` (`#!/bin/sh` + `cat`, no
//! taskmaster: each task names the tasker). The engine runs in-process
//! through `spoolflow::engine::run_blocking`, without a `tracing`
//! subscriber. Roots are deleted only when the bench ends (see the fs probe).
//!
//! 1. **Floor.** The same N processes, run directly, W at a time (W threads
//!    each spawning with std's `Command`: `process_group(0)`, `env_clear()`
//!    plus the `PATH`, `HOME`, `LANG` and `TZ` the engine passes on, the
//!    tasker's directory as working directory, payload on
//!    stdin, stdout read to the end, waited for). Wall time → tasks/s.
//! 2. **Throughput.** N task files are dropped into `var/spool/in/` (written
//!    as dotfile temporaries, then renamed) *before* the engine starts; the
//!    engine then runs with `drain`. Wall time → tasks/s and the ratio to
//!    the floor. Engine CPU is the process's utime + stime (from
//!    `/proc/self/stat`) over the run, divided by N: the bench thread is
//!    blocked while the engine runs, and the taskers' time is counted apart
//!    (children's time). Peak memory is `VmHWM`, reset through
//!    `/proc/self/clear_refs` before each run, after `malloc_trim` gives
//!    back the heap earlier runs freed (else a run's peak would start from
//!    the largest run before it in this process). Every task must have a record
//!    in `done/`, else the bench fails. Floor and engine runs alternate for
//!    R rounds (default 3) and the best of each is reported: this machine is
//!    shared, and other load only ever slows a run down.
//! 3. **Latency.** A fresh engine runs (no drain) in a background thread;
//!    after one warm-up task, tasks are dropped one by one at a steady rate
//!    well below capacity (default 200/s for 2 s). Latency is the `started`
//!    point's `ts` (in `var/log/tsk/<id>.log`) minus the wall-clock instant
//!    the drop's rename returned; p50 and p99 are reported. The engine is
//!    stopped with `StopRequest::Graceful` once every task has its record.
//! 4. **Queue sizes.** For each Q, Q task files are dropped first (not
//!    timed as engine work); then two engine runs on that root:
//!    - *intake*: a `Graceful` stop is queued before the engine starts. The
//!      engine claims everything in `in/` at start-up (read, parse, rename
//!      into `run/`, `created` point) before it serves any event, then
//!      starts at most W taskers, sees the stop, lets those W finish and
//!      exits, leaving Q − W tasks queued in `run/`. Wall and process CPU
//!      of the whole run divided by Q give the intake cost per task (start,
//!      stop and the W completions are included, a fixed few ms).
//!    - *steady state*, R rounds (`--rounds`), the queue sizes alternated
//!      within each round: the queue is topped up to the depth intake left (new files in
//!      `in/`, claimed at start-up), the engine starts again on that root
//!      (recovering the queued tasks from `run/`) and runs in a background
//!      thread. The bench follows the number of records in `done/` through
//!      inotify (`record_count.rs`); as the 100th record lands, and K more
//!      (K = min(2 000, Q / 2)), it samples the wall clock and the CPU time
//!      of every thread of the process except its own (`/proc/self/task/*/
//!      schedstat`, in ns). Records between the two samples divided by the
//!      elapsed wall time and CPU give tasks/s and CPU per task while the
//!      queue still holds between Q − W − 100 and about Q / 2 tasks. Then a
//!      `Graceful` stop. The best round of each size is reported, as for
//!      the throughput runs. The first restart's time (engine start to the
//!      first record) shows the O(Q) recovery scan.
//!
//!    So the whole queue is never run for large Q (100 000 taskers would
//!    take ~100 s alone); intake is measured over all Q tasks, execution
//!    over a window of K tasks with the queue still deep. Flat per-task
//!    numbers across Q mean no per-task work grows with the queue.
//!
//! 5. **Flows.** A `sequence` of N task nodes (one runs at a time) against
//!    N standalone tasks with one worker, and an `each` over N elements
//!    against N standalone tasks with W workers: the flow's file is dropped
//!    before the engine starts (`drain`); its record must be `completed`
//!    with N nodes. Alternated for R rounds, best of each (`flows.rs`).
//!
//! 6. **`submit --batch`.** N tasks as JSON lines through
//!    `spoolflow::submit::submit_lines` (what the CLI runs: every line
//!    checked, one sync for the batch, a rename each into `in/`) into a
//!    fresh root; durable task files per second, best of R rounds. The
//!    batch's sync is a `syncfs` of the whole filesystem, so before each
//!    round the filesystem is synced once, untimed: otherwise the batch
//!    would also write what the measures before it left unwritten (the
//!    task files they dropped), which is not the batch's cost.
//!
//! Two things that move the numbers are printed with them:
//!
//! - **Other load**: CPU used by other processes during a measure (machine
//!   busy time from `/proc/stat`, minus this process's and its children's).
//! - **The fs probe**: the cost of creating one empty file, before and
//!   after the runs. On ext4 without a journal, the inode allocator skips
//!   inodes deleted in the last 1–6 minutes one by one (`recently_deleted`),
//!   so file creation gets slower after heavy churn — including the churn
//!   of a previous bench. The tmpfs column takes the filesystem out of the
//!   measure.

mod flows;
mod measures;
mod queues;
mod record_count;
mod report;
mod roots;
mod runs;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use clap::Parser;
use spoolflow::{Options, Root, StopRequest};

use measures::*;
use queues::*;
use record_count::RecordCount;
use roots::*;
use runs::*;

/// Linux reports `/proc/<pid>/stat` times in USER_HZ, 100 on every
/// architecture spoolflow targets.
const USER_HZ: u64 = 100;
/// Records completed before the steady-state window opens.
const WARM: usize = 100;
/// Records in the steady-state window of a queue-size run (fewer when
/// the queue is under twice as deep).
const STEADY_WINDOW: usize = 2000;
/// The longest a steady window waits for the next record before it looks
/// at the engine again.
const POLL: Duration = Duration::from_millis(20);

type BenchResult<T> = Result<T, String>;

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark spoolflow against the fair floor (see the doc comment of examples/bench/main.rs)"
)]
struct Args {
    /// The directories to measure in, each on the filesystem it names
    /// (comma-separated): by default tmpfs and this machine's disk.
    #[arg(long, value_delimiter = ',', default_value = "/dev/shm,/tmp")]
    fs: Vec<String>,
    /// Tasks in the floor and throughput runs.
    #[arg(long, default_value_t = 10000)]
    tasks: usize,
    /// Workers (taskers at once); default: the number of CPUs.
    #[arg(long)]
    workers: Option<usize>,
    /// Queue sizes for the queue-size table (comma-separated; empty: skip).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    queues: Vec<String>,
    /// Floor and engine runs, alternated; the best of each is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Drops per second in the latency run.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Length of the latency run, in seconds.
    #[arg(long, default_value_t = 2.0)]
    latency_secs: f64,
    /// Task nodes of the `sequence` flow, run against as many standalone
    /// tasks with one worker (0: skip).
    #[arg(long, default_value_t = 1000)]
    flow_sequence: usize,
    /// Elements of the `each` flow, run against as many standalone tasks
    /// (0: skip). 9 998 is the largest `each` of one task node a flow may
    /// hold: 2 nodes + 9 998 runs = the 10 000-node limit.
    #[arg(long, default_value_t = 9998)]
    flow_each: usize,
    /// Tasks of the `submit --batch` run (0: skip).
    #[arg(long, default_value_t = 20000)]
    submit: usize,
}

fn main() {
    let args = Args::parse();
    // Roots are removed only at the end: on ext4 without a journal, inodes
    // deleted in the last minutes make every later file creation slower
    // (see the fs probe), and the bench must not tax its own measures.
    let mut keep = Vec::new();
    let result = bench(args, &mut keep);
    eprintln!("removing {} temporary roots…", keep.len());
    drop(keep);
    if let Err(e) = result {
        eprintln!("bench FAILED: {e}");
        std::process::exit(1);
    }
}

fn bench(args: Args, keep: &mut Vec<BenchRoot>) -> BenchResult<()> {
    let workers = args.workers.unwrap_or_else(|| Options::default().workers);
    if workers == 0 || args.tasks == 0 || args.rounds == 0 {
        return Err("--tasks, --workers and --rounds must be at least 1".into());
    }
    let mut queues: Vec<usize> = args
        .queues
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .replace('_', "")
                .parse::<usize>()
                .map_err(|e| format!("--queues: {s:?}: {e}"))
        })
        .collect::<BenchResult<_>>()?;
    queues.sort_unstable();
    queues.dedup();
    let dirs: Vec<PathBuf> = args
        .fs
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| PathBuf::from(s.trim()))
        .collect();
    if dirs.is_empty() {
        return Err("--fs names no directory".into());
    }

    let argv: Vec<String> = std::env::args().skip(1).collect();
    println!(
        "command: `cargo run --release --example bench{}`",
        if argv.is_empty() {
            String::new()
        } else {
            format!(" -- {}", argv.join(" "))
        }
    );
    println!("machine: {}", machine());
    let mut reports = Vec::new();
    for dir in &dirs {
        reports.push(measure_fs(dir, &args, workers, &queues, keep)?);
    }
    report::summary(&reports, args.tasks, workers);
    for r in &reports {
        report::details(r, args.tasks, workers, args.rounds);
    }
    Ok(())
}

/// Everything measured on one filesystem.
pub struct FsReport {
    pub dir: PathBuf,
    /// The filesystem's type (`tmpfs`, `ext4`, …).
    pub fs: String,
    pub probe_before: f64,
    pub probe_after: f64,
    pub floors: Vec<Run>,
    pub engines: Vec<Run>,
    pub lat: Latency,
    pub qrows: Vec<QueueRow>,
    pub frows: Vec<flows::FlowRow>,
    /// `submit --batch` durable task files per second.
    pub submit_per_s: Option<f64>,
}

/// Every measure, with its roots under `dir`.
fn measure_fs(
    dir: &Path,
    args: &Args,
    workers: usize,
    queues: &[usize],
    keep: &mut Vec<BenchRoot>,
) -> BenchResult<FsReport> {
    set_base(dir);
    let fs = fs_type(dir);
    eprintln!("== {} ({fs})", dir.display());
    let probe_before = fs_probe(keep)?;

    let mut floors = Vec::new();
    let mut engines = Vec::new();
    for r in 1..=args.rounds {
        eprintln!(
            "round {r}/{}: floor, then engine: {} tasks, {workers} at a time…",
            args.rounds, args.tasks
        );
        floors.push(floor(args.tasks, workers, keep)?);
        engines.push(throughput(args.tasks, workers, keep)?);
    }

    let n_lat = ((args.rate as f64) * args.latency_secs).round().max(1.0) as usize;
    eprintln!(
        "latency: {n_lat} drops at {}/s into a running engine…",
        args.rate
    );
    let lat = latency(n_lat, args.rate, workers, keep)?;

    let qrows = queues::queues(queues, workers, args.rounds, keep)?;

    let mut frows = Vec::new();
    if args.flow_sequence > 0 {
        frows.push(flows::compare(
            flows::Shape::Sequence,
            args.flow_sequence,
            1,
            args.rounds,
            keep,
        )?);
    }
    if args.flow_each > 0 {
        frows.push(flows::compare(
            flows::Shape::Each,
            args.flow_each,
            workers,
            args.rounds,
            keep,
        )?);
    }
    let submit_per_s = if args.submit > 0 {
        eprintln!("submit --batch: {} tasks…", args.submit);
        Some(submit_batch(args.submit, args.rounds, keep)?)
    } else {
        None
    };
    let probe_after = fs_probe(keep)?;
    Ok(FsReport {
        dir: dir.to_path_buf(),
        fs,
        probe_before,
        probe_after,
        floors,
        engines,
        lat,
        qrows,
        frows,
        submit_per_s,
    })
}
