//! The spoolflow benchmark (DESIGN.md, "Measuring").
//!
//! ```text
//! cargo run --release --example bench -- [--tasks N] [--workers W] [--queues 1000,10000,100000]
//!                                        [--rounds R] [--rate 200] [--latency-secs 2]
//! ```
//!
//! Every run uses a fresh temporary root (under `$TMPDIR`, default `/tmp`)
//! whose only tasker is `tsk/bench/cat` (`#!/bin/sh` + `cat`, no
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
//!    `/proc/self/clear_refs` before each run. Every task must have a record
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
//!    - *steady state*: the engine starts again on that root (recovering
//!      the Q − W queued tasks from `run/`) and runs in a background thread.
//!      The bench polls the number of records in `done/` every 20 ms; at
//!      two polls (after a warm-up of 100 records, and K records later, with
//!      K = min(N, Q / 2)) it samples the wall clock and the CPU time of
//!      every thread of the process except its own (`/proc/self/task/*/
//!      schedstat`, in ns). Records between the two samples divided by the
//!      elapsed wall time and CPU give tasks/s and CPU per task while the
//!      queue still holds between Q − W − 100 and about Q / 2 tasks. Then a
//!      `Graceful` stop. The restart time (engine start to the first
//!      record, 20 ms resolution) shows the O(Q) recovery scan.
//!
//!    So the whole queue is never run for large Q (100 000 taskers would
//!    take ~100 s alone); intake is measured over all Q tasks, execution
//!    over a window of K tasks with the queue still deep. Flat per-task
//!    numbers across Q mean no per-task work grows with the queue.
//!
//! Two things that move the numbers are printed with them:
//!
//! - **Other load**: CPU used by other processes during a measure (machine
//!   busy time from `/proc/stat`, minus this process's and its children's).
//! - **The fs probe**: the cost of creating one empty file, before and
//!   after the runs. On ext4 without a journal, the inode allocator skips
//!   inodes deleted in the last 1–6 minutes one by one (`recently_deleted`),
//!   so file creation gets slower after heavy churn — including the churn
//!   of a previous bench. Run with `TMPDIR=/dev/shm` to take the filesystem
//!   out of the measure.

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

/// Linux reports `/proc/<pid>/stat` times in USER_HZ, 100 on every
/// architecture spoolflow targets.
const USER_HZ: u64 = 100;
/// Records completed before the steady-state window opens.
const WARM: usize = 100;
/// How often the bench looks at `done/` while an engine runs.
const POLL: Duration = Duration::from_millis(20);

type BenchResult<T> = Result<T, String>;

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark spoolflow against the fair floor (see the doc comment of examples/bench.rs)"
)]
struct Args {
    /// Tasks in the floor and throughput runs.
    #[arg(long, default_value_t = 2000)]
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

    let argv: Vec<String> = std::env::args().skip(1).collect();
    println!(
        "command: `{}cargo run --release --example bench{}`",
        std::env::var("TMPDIR")
            .map(|t| format!("TMPDIR={t} "))
            .unwrap_or_default(),
        if argv.is_empty() {
            String::new()
        } else {
            format!(" -- {}", argv.join(" "))
        }
    );
    println!("machine: {}", machine());
    let probe_before = fs_probe(keep)?;

    // ---------------------------------------------------------- floor, engine
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
    let best = |runs: &[Run]| -> Run {
        *runs
            .iter()
            .max_by(|a, b| a.tasks_per_s.total_cmp(&b.tasks_per_s))
            .expect("at least one round")
    };
    let (floor_best, engine_best) = (best(&floors), best(&engines));

    // ---------------------------------------------------------- latency
    let n_lat = ((args.rate as f64) * args.latency_secs).round().max(1.0) as usize;
    eprintln!(
        "latency: {n_lat} drops at {}/s into a running engine…",
        args.rate
    );
    let lat = latency(n_lat, args.rate, workers, keep)?;

    // ---------------------------------------------------------- queues
    let mut qrows = Vec::new();
    for &q in &queues {
        eprintln!("queue: {q} tasks queued…");
        qrows.push(queue(q, args.tasks, workers, keep)?);
    }
    let probe_after = fs_probe(keep)?;

    // ---------------------------------------------------------- report
    println!(
        "file creation (1000 empty files in a new directory beside the roots): \
         {probe_before:.0} µs/file before the runs, {probe_after:.0} µs/file after"
    );
    println!();
    println!("### Throughput and latency (`cat` tasker)");
    println!();
    println!("| tasks | workers | floor tasks/s | engine tasks/s | ratio | drop→started p50 / p99 | engine CPU µs/task | peak RSS MiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {:.0} | {:.0} | {:.2}× | {:.2} / {:.2} ms | {:.0} | {:.1} |",
        args.tasks,
        workers,
        floor_best.tasks_per_s,
        engine_best.tasks_per_s,
        engine_best.tasks_per_s / floor_best.tasks_per_s,
        lat.p50_ms,
        lat.p99_ms,
        engine_best.own_cpu_us,
        engines.iter().map(|r| r.peak_mib).fold(0.0, f64::max),
    );
    println!();
    let rounds = |runs: &[Run]| -> String {
        runs.iter()
            .map(|r| {
                format!(
                    "{:.0}/s ({:.0} + {:.0} µs/task, other load {:.2} CPUs)",
                    r.tasks_per_s, r.own_cpu_us, r.children_cpu_us, r.other_cpus
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "Best of {} alternated rounds each; per round, tasks/s (bench/engine process CPU + \
         taskers' CPU per task; CPU used meanwhile by other processes on the machine):",
        args.rounds
    );
    println!();
    println!("- floor: {}", rounds(&floors));
    println!("- engine: {}", rounds(&engines));
    println!(
        "- latency: {} drops at {}/s, max {:.2} ms, other load {:.2} CPUs",
        lat.n, args.rate, lat.max_ms, lat.other_cpus
    );
    if !qrows.is_empty() {
        println!();
        println!("### Per-task cost by queue size ({workers} workers)");
        println!();
        println!("| queued | intake µs/task (wall) | intake CPU µs/task | restart ms (µs/queued task) | steady tasks/s | steady CPU µs/task | window: tasks (queue depth) | peak RSS MiB | other load CPUs |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &qrows {
            println!(
                "| {} | {:.0} | {:.0} | {:.0} ({:.0}) | {:.0} | {:.0} | {} ({}→{}) | {:.1} | {:.2} |",
                r.q,
                r.intake_wall_us,
                r.intake_cpu_us,
                r.restart.as_secs_f64() * 1e3,
                r.restart.as_secs_f64() * 1e6 / r.requeued.max(1) as f64,
                r.steady_tasks_per_s,
                r.steady_cpu_us,
                r.window,
                r.depth_from,
                r.depth_to,
                r.peak_mib,
                r.other_cpus,
            );
        }
        println!();
        println!(
            "Intake: Q files in `in/` before start and a stop queued before start: the engine \
             claims all Q, runs {workers}, exits; wall and process CPU ÷ Q. Restart: the engine \
             started again on the Q − {workers} queued tasks in `run/`, time to the first record \
             (20 ms resolution). Steady: tasks/s and CPU of all engine threads (schedstat) from \
             the {WARM}th record to K = min(tasks, Q/2) records later, the queue still deep; the \
             rest stays queued. Other load: CPU used by other processes during the window."
        );
    }
    Ok(())
}

// ================================================================ roots

/// A temporary root with `tsk/bench/cat`.
struct BenchRoot {
    _tmp: tempfile::TempDir,
    root: Root,
}

impl BenchRoot {
    fn new() -> BenchResult<BenchRoot> {
        let tmp = tempfile::Builder::new()
            .prefix("spoolflow-bench.")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary root: {e}"))?;
        let root = Root::new(tmp.path()).map_err(|e| e.to_string())?;
        root.init().map_err(|e| e.to_string())?;
        let dir = root.tsk().join("bench");
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let cat = dir.join("cat");
        fs::write(&cat, "#!/bin/sh\ncat\n").map_err(|e| e.to_string())?;
        fs::set_permissions(&cat, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        Ok(BenchRoot { _tmp: tmp, root })
    }

    fn tasker(&self) -> PathBuf {
        self.root.tsk().join("bench/cat")
    }

    /// Drops task `i` into `in/` (a dotfile temporary, then a rename) and
    /// returns its id.
    fn drop_task(&self, i: usize) -> BenchResult<String> {
        let id = format!("t{i:07}");
        let dir = self.root.spool_in();
        let tmp = dir.join(format!(".{id}.tmp"));
        let body = format!(r#"{{"domain":"bench","tasker":"cat","payload":{{"n":{i}}}}}"#);
        fs::write(&tmp, body).map_err(|e| format!("write {}: {e}", tmp.display()))?;
        fs::rename(&tmp, dir.join(format!("{id}.json")))
            .map_err(|e| format!("rename {}: {e}", tmp.display()))?;
        Ok(id)
    }

    fn count(&self, dir: &Path) -> usize {
        count_files(dir)
    }

    /// Fails unless `done/` holds `expect` records and `failed/` and
    /// `rejected/` are empty.
    fn verify_done(&self, expect: usize, what: &str) -> BenchResult<()> {
        let done = self.count(&self.root.done());
        let failed = self.count(&self.root.failed());
        let rejected = self.count(&self.root.rejected());
        if done != expect || failed != 0 || rejected != 0 {
            let sample = fs::read_dir(self.root.failed())
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok())
                .and_then(|e| fs::read_to_string(e.path()).ok())
                .unwrap_or_default();
            return Err(format!(
                "{what}: expected {expect} records in done/, found {done} (failed/ {failed}, \
                 rejected/ {rejected}, in/ {}, run/ {}){}",
                self.count(&self.root.spool_in()),
                self.count(&self.root.run()),
                if sample.is_empty() {
                    String::new()
                } else {
                    format!("; a failed record: {sample}")
                }
            ));
        }
        Ok(())
    }
}

/// Entries of a directory, temporaries (dotfiles) excluded.
fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

// ================================================================ measures

/// The process's own CPU time and its waited-for children's.
#[derive(Clone, Copy)]
struct ProcCpu {
    own: Duration,
    children: Duration,
}

fn proc_cpu() -> ProcCpu {
    let stat = fs::read_to_string("/proc/self/stat").expect("/proc/self/stat is readable");
    // Fields after the command name, which may hold spaces: from field 3.
    let rest = &stat[stat.rfind(')').expect("stat has a (comm)") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime, stime, cutime, cstime are fields 14–17.
    let ticks = |t: u64| Duration::from_micros(t * 1_000_000 / USER_HZ);
    ProcCpu {
        own: ticks(f[11] + f[12]),
        children: ticks(f[13] + f[14]),
    }
}

/// CPU time (ns, from schedstat) of each live thread of the process.
fn thread_cpu() -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(s) = fs::read_to_string(e.path().join("schedstat")) {
            if let Some(ns) = s.split_whitespace().next().and_then(|x| x.parse().ok()) {
                out.insert(tid, ns);
            }
        }
    }
    out
}

/// CPU of every thread but `exclude` since `base`.
fn threads_cpu_since(base: &HashMap<u32, u64>, exclude: u32) -> Duration {
    let ns: u64 = thread_cpu()
        .iter()
        .filter(|(tid, _)| **tid != exclude)
        .map(|(tid, ns)| ns.saturating_sub(base.get(tid).copied().unwrap_or(0)))
        .sum();
    Duration::from_nanos(ns)
}

fn my_tid() -> u32 {
    fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .expect("/proc/thread-self names this thread")
}

/// Resets the peak RSS (`VmHWM`) of the process.
fn reset_peak() {
    let _ = fs::write("/proc/self/clear_refs", "5");
}

/// The peak RSS (`VmHWM`) in MiB.
fn peak_mib() -> f64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let tmp = std::env::temp_dir();
    format!(
        "{cpus} CPUs ({cpu}), Linux {}, roots in {} ({})",
        kernel.trim(),
        tmp.display(),
        fs_type(&tmp)
    )
}

/// The filesystem type of the mount holding `path`.
fn fs_type(path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt).then(|| (mnt.len(), ty.to_string()))
        })
        .max()
        .map(|(_, ty)| ty)
        .unwrap_or_else(|| "unknown fs".into())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A point in time with the machine's busy CPU time and this process's
/// (own and children's), to tell how much CPU other processes took.
#[derive(Clone, Copy)]
struct Mark {
    t: Instant,
    machine: Duration,
    cpu: ProcCpu,
}

fn mark() -> Mark {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    // cpu user nice system idle iowait irq softirq steal …
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum();
    Mark {
        t: Instant::now(),
        machine: Duration::from_micros(busy * 1_000_000 / USER_HZ),
        cpu: proc_cpu(),
    }
}

/// The CPUs other processes kept busy, on average, between two marks
/// (machine busy time, steal included, minus this process's and its
/// reaped children's).
fn other_cpus(a: &Mark, b: &Mark) -> f64 {
    let machine = b.machine.saturating_sub(a.machine).as_secs_f64();
    let own = (b.cpu.own + b.cpu.children)
        .saturating_sub(a.cpu.own + a.cpu.children)
        .as_secs_f64();
    ((machine - own) / (b.t - a.t).as_secs_f64()).max(0.0)
}

/// Microseconds to create one empty file, over 1000 files in a new
/// directory beside the roots (kept until the end, like the roots).
fn fs_probe(keep: &mut Vec<BenchRoot>) -> BenchResult<f64> {
    let br = BenchRoot::new()?;
    let dir = br.root.dir().join("probe");
    fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    for i in 0..1000 {
        fs::File::create(dir.join(i.to_string())).map_err(|e| e.to_string())?;
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / 1000.0;
    keep.push(br);
    Ok(us)
}

// ================================================================ engine runs

/// Runs the engine on another thread; `Ok` once it returned.
fn spawn_engine(
    root: Root,
    options: Options,
    stop: Option<tokio::sync::mpsc::UnboundedReceiver<StopRequest>>,
) -> std_mpsc::Receiver<Result<(), String>> {
    let (tx, rx) = std_mpsc::channel();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let r = spoolflow::engine::run_blocking(root, options, stop);
            let _ = tx.send(r.map_err(|e| e.to_string()));
        })
        .expect("spawn the engine thread");
    rx
}

fn join_engine(rx: &std_mpsc::Receiver<Result<(), String>>, deadline: Duration) -> BenchResult<()> {
    match rx.recv_timeout(deadline) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("engine failed: {e}")),
        Err(_) => Err(format!("engine did not return within {deadline:?}")),
    }
}

fn options(workers: usize, drain: bool) -> Options {
    Options {
        workers,
        drain,
        ..Options::default()
    }
}

// ================================================================ floor

/// One floor or throughput run.
#[derive(Clone, Copy)]
struct Run {
    tasks_per_s: f64,
    /// The bench's (floor) or the engine's CPU per task.
    own_cpu_us: f64,
    /// The taskers' CPU per task.
    children_cpu_us: f64,
    other_cpus: f64,
    peak_mib: f64,
}

impl Run {
    fn new(n: usize, a: &Mark, b: &Mark, peak_mib: f64) -> Run {
        let per_task = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        Run {
            tasks_per_s: n as f64 / (b.t - a.t).as_secs_f64(),
            own_cpu_us: per_task(b.cpu.own.saturating_sub(a.cpu.own)),
            children_cpu_us: per_task(b.cpu.children.saturating_sub(a.cpu.children)),
            other_cpus: other_cpus(a, b),
            peak_mib,
        }
    }
}

fn floor(n: usize, workers: usize, keep: &mut Vec<BenchRoot>) -> BenchResult<Run> {
    let br = BenchRoot::new()?;
    let tasker = br.tasker();
    let dir = br.root.tsk().join("bench");
    // The environment SPEC 6 has the engine pass on (PATH, HOME, LANG,
    // TZ): the same processes with the same environment (LANG alone makes
    // `sh` and `cat` load locale data, about 170 µs per task here).
    let env: Vec<(&str, std::ffi::OsString)> = ["PATH", "HOME", "LANG", "TZ"]
        .into_iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (k, v)))
        .collect();
    let next = AtomicUsize::new(0);
    let a = mark();
    let results: Vec<BenchResult<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> BenchResult<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        let payload = format!(r#"{{"n":{i}}}"#);
                        let mut child = Command::new(&tasker)
                            .current_dir(&dir)
                            .env_clear()
                            .envs(env.iter().map(|(k, v)| (k, v)))
                            .stdin(Stdio::piped())
                            .stdout(Stdio::piped())
                            .stderr(Stdio::null())
                            .process_group(0)
                            .spawn()
                            .map_err(|e| format!("floor: spawn {}: {e}", tasker.display()))?;
                        let mut stdin = child.stdin.take().expect("stdin is piped");
                        let _ = stdin.write_all(payload.as_bytes());
                        drop(stdin);
                        let mut out = String::new();
                        child
                            .stdout
                            .take()
                            .expect("stdout is piped")
                            .read_to_string(&mut out)
                            .map_err(|e| format!("floor: read: {e}"))?;
                        let status = child.wait().map_err(|e| format!("floor: wait: {e}"))?;
                        if !status.success() || out != payload {
                            return Err(format!("floor: task {i}: {status}, output {out:?}"));
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a floor thread panicked"))
            .collect()
    });
    let b = mark();
    keep.push(br);
    results.into_iter().collect::<BenchResult<Vec<()>>>()?;
    Ok(Run::new(n, &a, &b, f64::NAN))
}

// ================================================================ throughput

fn throughput(n: usize, workers: usize, keep: &mut Vec<BenchRoot>) -> BenchResult<Run> {
    let br = BenchRoot::new()?;
    for i in 0..n {
        br.drop_task(i)?;
    }
    reset_peak();
    // The bench thread only blocks in recv_timeout while the engine runs, so
    // the process's CPU time is the engine's.
    let a = mark();
    let rx = spawn_engine(br.root.clone(), options(workers, true), None);
    join_engine(&rx, Duration::from_secs(60 + n as u64 / 50))?;
    let b = mark();
    let peak = peak_mib();
    br.verify_done(n, "throughput run")?;
    keep.push(br);
    Ok(Run::new(n, &a, &b, peak))
}

// ================================================================ latency

struct Latency {
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    other_cpus: f64,
}

/// Polls `cond` every few ms until it holds or `deadline` passes.
fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> BenchResult<()> {
    let end = Instant::now() + deadline;
    while !cond() {
        if Instant::now() > end {
            return Err(format!("timed out after {deadline:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn latency(n: usize, rate: u32, workers: usize, keep: &mut Vec<BenchRoot>) -> BenchResult<Latency> {
    let br = BenchRoot::new()?;
    let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
    let rx = spawn_engine(br.root.clone(), options(workers, false), Some(stop_rx));
    let dropped = drop_steadily(&br, n, rate);
    let _ = stop_tx.send(StopRequest::Graceful);
    join_engine(&rx, Duration::from_secs(60))?;
    let (drops, a, b) = dropped?;
    br.verify_done(n + 1, "latency run")?;

    let mut ms = Vec::with_capacity(n);
    for (id, dropped) in &drops {
        let log = br.root.log_tsk().join(format!("{id}.log"));
        let text = fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let ts = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|p| p["point"] == "started")
            .and_then(|p| p["ts"].as_str().map(str::to_owned))
            .ok_or_else(|| format!("{}: no started point", log.display()))?;
        let started = DateTime::parse_from_rfc3339(&ts)
            .map_err(|e| format!("{}: ts {ts:?}: {e}", log.display()))?
            .with_timezone(&Utc);
        let dropped: DateTime<Utc> = (*dropped).into();
        let d = (started - dropped).num_microseconds().unwrap_or(i64::MAX);
        ms.push(d as f64 / 1000.0);
    }
    keep.push(br);
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(Latency {
        n,
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
        other_cpus: other_cpus(&a, &b),
    })
}

/// Drops a warm-up task and waits for its record (the engine is then up
/// and watching), then drops `n` tasks at `rate` per second and waits for
/// all their records. Returns each task's id and drop instant, and marks
/// around the drops.
#[allow(clippy::type_complexity)]
fn drop_steadily(
    br: &BenchRoot,
    n: usize,
    rate: u32,
) -> BenchResult<(Vec<(String, SystemTime)>, Mark, Mark)> {
    let warm = br.drop_task(n)?;
    let warm_record = br.root.done().join(format!("{warm}.json"));
    wait_for("the warm-up task's record", Duration::from_secs(30), || {
        warm_record.exists()
    })?;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let a = mark();
    let mut drops = Vec::with_capacity(n);
    for i in 0..n {
        let due = a.t + interval.mul_f64(i as f64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let id = br.drop_task(i)?;
        drops.push((id, SystemTime::now()));
    }
    let done = br.root.done();
    wait_for(
        "every latency task's record",
        Duration::from_secs(30 + n as u64 / 50),
        || count_files(&done) > n,
    )?;
    let b = mark();
    Ok((drops, a, b))
}

// ================================================================ queues

struct QueueRow {
    q: usize,
    intake_wall_us: f64,
    intake_cpu_us: f64,
    requeued: usize,
    restart: Duration,
    steady_tasks_per_s: f64,
    steady_cpu_us: f64,
    window: usize,
    depth_from: usize,
    depth_to: usize,
    peak_mib: f64,
    other_cpus: f64,
}

/// What the steady-state window measured.
struct Window {
    restart: Duration,
    tasks_per_s: f64,
    cpu_us: f64,
    tasks: usize,
    depth_from: usize,
    depth_to: usize,
    other_cpus: f64,
}

fn queue(
    q: usize,
    tasks: usize,
    workers: usize,
    keep: &mut Vec<BenchRoot>,
) -> BenchResult<QueueRow> {
    let br = BenchRoot::new()?;
    for i in 0..q {
        br.drop_task(i)?;
    }
    let deadline = Duration::from_secs(120 + q as u64 / 500);

    // Intake: the stop is already waiting when the engine starts.
    reset_peak();
    let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
    stop_tx
        .send(StopRequest::Graceful)
        .map_err(|e| e.to_string())?;
    let a = mark();
    let rx = spawn_engine(br.root.clone(), options(workers, false), Some(stop_rx));
    join_engine(&rx, deadline)?;
    let b = mark();
    let (inn, run, done0) = (
        br.count(&br.root.spool_in()),
        br.count(&br.root.run()),
        br.count(&br.root.done()),
    );
    if inn != 0 || run + done0 != q {
        return Err(format!(
            "queue {q} intake: in/ {inn}, run/ {run}, done/ {done0}: expected in/ empty and \
             run/ + done/ = {q}"
        ));
    }

    // Steady state: restart on the queued tasks, measure a window.
    let window = tasks.min(q / 2).max(1);
    let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
    let base = thread_cpu();
    let t0 = Instant::now();
    let rx = spawn_engine(br.root.clone(), options(workers, false), Some(stop_rx));
    let measured = steady_window(&br, &rx, &base, t0, q, done0, window, deadline);
    let _ = stop_tx.send(StopRequest::Graceful);
    join_engine(&rx, Duration::from_secs(60))?;
    let peak = peak_mib();
    let w = measured?;
    let (done, run, failed, rejected) = (
        br.count(&br.root.done()),
        br.count(&br.root.run()),
        br.count(&br.root.failed()),
        br.count(&br.root.rejected()),
    );
    if done + run != q || failed != 0 || rejected != 0 {
        return Err(format!(
            "queue {q}: done/ {done} + run/ {run} != {q} (failed/ {failed}, rejected/ {rejected})"
        ));
    }
    keep.push(br);
    Ok(QueueRow {
        q,
        intake_wall_us: (b.t - a.t).as_secs_f64() * 1e6 / q as f64,
        intake_cpu_us: b.cpu.own.saturating_sub(a.cpu.own).as_secs_f64() * 1e6 / q as f64,
        requeued: q - done0,
        restart: w.restart,
        steady_tasks_per_s: w.tasks_per_s,
        steady_cpu_us: w.cpu_us,
        window: w.tasks,
        depth_from: w.depth_from,
        depth_to: w.depth_to,
        peak_mib: peak,
        other_cpus: w.other_cpus,
    })
}

/// Polls `done/` while the engine (started at `t0` with `done0` records
/// there already) runs; samples wall clock, the CPU of every thread but
/// this one, and the machine's load at the `WARM`th new record and
/// `window` records later.
#[allow(clippy::too_many_arguments)]
fn steady_window(
    br: &BenchRoot,
    rx: &std_mpsc::Receiver<Result<(), String>>,
    base: &HashMap<u32, u64>,
    t0: Instant,
    q: usize,
    done0: usize,
    window: usize,
    deadline: Duration,
) -> BenchResult<Window> {
    let me = my_tid();
    let done = br.root.done();
    let mut restart = None;
    let mut first: Option<(Mark, usize, Duration)> = None;
    let end = t0 + deadline;
    loop {
        std::thread::sleep(POLL);
        if let Ok(r) = rx.try_recv() {
            return Err(format!("queue {q}: the engine returned early: {r:?}"));
        }
        let c = count_files(&done);
        let now = Instant::now();
        if restart.is_none() && c > done0 {
            restart = Some(now - t0);
        }
        match &first {
            None if c >= done0 + WARM.min(window) => {
                first = Some((mark(), c, threads_cpu_since(base, me)));
            }
            Some((a, c1, cpu1)) if c >= c1 + window => {
                let cpu2 = threads_cpu_since(base, me);
                let b = mark();
                let n = (c - c1) as f64;
                return Ok(Window {
                    restart: restart.unwrap_or_default(),
                    tasks_per_s: n / (b.t - a.t).as_secs_f64(),
                    cpu_us: cpu2.saturating_sub(*cpu1).as_secs_f64() * 1e6 / n,
                    tasks: c - c1,
                    depth_from: q - c1,
                    depth_to: q - c,
                    other_cpus: other_cpus(a, &b),
                });
            }
            _ => {}
        }
        if now > end {
            return Err(format!(
                "queue {q}: no {window} records within {deadline:?}"
            ));
        }
    }
}
