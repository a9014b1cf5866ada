//! The per-task cost by queue size: intake, restart and steady windows
//! with the queue still deep, in rounds alternated across queue sizes.

use super::*;

// ================================================================ queues

pub struct QueueRow {
    pub q: usize,
    pub intake_wall_us: f64,
    pub intake_cpu_us: f64,
    pub requeued: usize,
    pub restart: Duration,
    pub steady_tasks_per_s: f64,
    pub steady_cpu_us: f64,
    /// The taskers' CPU per task in that window (reaped children).
    pub taskers_cpu_us: f64,
    pub window: usize,
    pub depth_from: usize,
    pub depth_to: usize,
    pub peak_mib: f64,
    pub other_cpus: f64,
    /// Tasks/s of every round's window, in order.
    pub rounds: Vec<f64>,
}

/// What a steady-state window measured.
pub struct Window {
    pub restart: Duration,
    pub tasks_per_s: f64,
    pub cpu_us: f64,
    pub taskers_cpu_us: f64,
    pub tasks: usize,
    pub depth_from: usize,
    pub depth_to: usize,
    pub other_cpus: f64,
}

/// One queue size's root between rounds.
struct Deep {
    br: BenchRoot,
    q: usize,
    /// Task files dropped into it so far (the next task's number).
    dropped: usize,
    /// Tasks the intake run left queued (it may run none of them).
    requeued: usize,
    intake_wall_us: f64,
    intake_cpu_us: f64,
    peak_mib: f64,
    windows: Vec<Window>,
}

/// Every queue size of `queues`: an intake run each, then `rounds`
/// rounds of one steady window per size, the sizes alternated within the
/// later rounds (this machine's other load then falls on every size
/// alike); the best window of each size is reported, as for the floor and
/// the engine.
pub fn queues(
    queues: &[usize],
    workers: usize,
    rounds: usize,
    keep: &mut Vec<BenchRoot>,
) -> BenchResult<Vec<QueueRow>> {
    // Round 1 runs each size right after its intake, smallest first, and
    // only it counts for peak memory: a later round of a small queue runs
    // in a heap that larger runs before it left fragmented, whose resident
    // remainder would count as its own.
    let mut deeps = Vec::new();
    for &q in queues {
        eprintln!("queue: {q} tasks queued, intake and steady window 1/{rounds}…");
        let mut d = intake(q, workers)?;
        let w = steady(&mut d, workers, true)?;
        d.windows.push(w);
        deeps.push(d);
    }
    for r in 2..=rounds {
        for d in &mut deeps {
            eprintln!("queue: {} tasks queued, steady window {r}/{rounds}…", d.q);
            let w = steady(d, workers, false)?;
            d.windows.push(w);
        }
    }
    let mut rows = Vec::new();
    for d in deeps {
        let rounds: Vec<f64> = d.windows.iter().map(|w| w.tasks_per_s).collect();
        // Only the first restart recovers a queue all in `run/`; later
        // ones also claim the top-up from `in/`.
        let restart = d.windows.first().map(|w| w.restart).unwrap_or_default();
        let w = d
            .windows
            .into_iter()
            .max_by(|a, b| a.tasks_per_s.total_cmp(&b.tasks_per_s))
            .expect("at least one round");
        rows.push(QueueRow {
            q: d.q,
            intake_wall_us: d.intake_wall_us,
            intake_cpu_us: d.intake_cpu_us,
            requeued: d.requeued,
            restart,
            steady_tasks_per_s: w.tasks_per_s,
            steady_cpu_us: w.cpu_us,
            taskers_cpu_us: w.taskers_cpu_us,
            window: w.tasks,
            depth_from: w.depth_from,
            depth_to: w.depth_to,
            peak_mib: d.peak_mib,
            other_cpus: w.other_cpus,
            rounds,
        });
        keep.push(d.br);
    }
    Ok(rows)
}

fn deadline(q: usize) -> Duration {
    Duration::from_secs(120 + q as u64 / 500)
}

/// Drops `q` task files, then runs the engine with a stop queued before
/// it starts: it claims all `q`, runs `workers` of them and exits.
fn intake(q: usize, workers: usize) -> BenchResult<Deep> {
    let br = BenchRoot::new()?;
    for i in 0..q {
        br.drop_task(i)?;
    }
    reset_peak();
    let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
    stop_tx
        .send(StopRequest::Graceful)
        .map_err(|e| e.to_string())?;
    let a = mark();
    let rx = spawn_engine(br.root.clone(), options(workers, false), Some(stop_rx));
    join_engine(&rx, deadline(q))?;
    let b = mark();
    let (inn, run, done) = (
        br.count(&br.root.spool_in()),
        br.count(&br.root.run()),
        br.count(&br.root.done()),
    );
    if inn != 0 || run + done != q {
        return Err(format!(
            "queue {q} intake: in/ {inn}, run/ {run}, done/ {done}: expected in/ empty and \
             run/ + done/ = {q}"
        ));
    }
    Ok(Deep {
        br,
        q,
        dropped: q,
        requeued: run,
        intake_wall_us: (b.t - a.t).as_secs_f64() * 1e6 / q as f64,
        intake_cpu_us: b.cpu.own.saturating_sub(a.cpu.own).as_secs_f64() * 1e6 / q as f64,
        peak_mib: peak_mib(),
        windows: Vec::new(),
    })
}

/// Tops the queue up to `q − workers` (new files into `in/`, claimed at
/// start-up), restarts the engine on it, measures a window, stops it;
/// with `peak`, the run's peak memory counts for the queue size.
fn steady(d: &mut Deep, workers: usize, peak: bool) -> BenchResult<Window> {
    let q = d.q;
    // Round 1 restarts on what intake left; later rounds are topped up
    // to that depth.
    let target = d.requeued;
    let queued = d.br.count(&d.br.root.run());
    for _ in queued..target {
        d.br.drop_task(d.dropped)?;
        d.dropped += 1;
    }
    let queued = queued.max(target);
    // The warm-up and the window both fit in the queue.
    let window = STEADY_WINDOW.min(q / 2).max(1);
    let warm = WARM.min(q / 4);
    let mut records = RecordCount::new(&d.br.root.done())?;
    let done0 = records.now();
    reset_peak();
    let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
    let base = thread_cpu();
    let t0 = Instant::now();
    let rx = spawn_engine(d.br.root.clone(), options(workers, false), Some(stop_rx));
    let measured = steady_window(
        &mut records,
        &rx,
        &base,
        t0,
        (q, queued, done0),
        (warm, window),
        deadline(q),
    );
    let _ = stop_tx.send(StopRequest::Graceful);
    join_engine(&rx, Duration::from_secs(60))?;
    if peak {
        d.peak_mib = d.peak_mib.max(peak_mib());
    }
    let w = measured?;
    let (done, run, inn, failed, rejected) = (
        d.br.count(&d.br.root.done()),
        d.br.count(&d.br.root.run()),
        d.br.count(&d.br.root.spool_in()),
        d.br.count(&d.br.root.failed()),
        d.br.count(&d.br.root.rejected()),
    );
    if done + run != d.dropped || inn != 0 || failed != 0 || rejected != 0 {
        return Err(format!(
            "queue {q}: done/ {done} + run/ {run} != {} dropped (in/ {inn}, failed/ {failed}, \
             rejected/ {rejected})",
            d.dropped
        ));
    }
    Ok(w)
}

/// Follows `done/`'s record count while the engine (started at `t0` on
/// `queued` tasks, with `done0` records there already) runs; samples wall
/// clock, the CPU of every thread but this one, and the machine's load at
/// the `warm`th new record and `window` records later. The count is
/// looked at as each record lands (inotify), not on a timer.
#[allow(clippy::too_many_arguments)]
pub fn steady_window(
    records: &mut RecordCount,
    rx: &std_mpsc::Receiver<Result<(), String>>,
    base: &HashMap<u32, u64>,
    t0: Instant,
    (q, queued, done0): (usize, usize, usize),
    (warm, window): (usize, usize),
    deadline: Duration,
) -> BenchResult<Window> {
    let me = my_tid();
    let mut restart = None;
    let mut first: Option<(Mark, usize, Duration)> = None;
    let end = t0 + deadline;
    loop {
        let c = records.wait(POLL);
        if let Ok(r) = rx.try_recv() {
            return Err(format!("queue {q}: the engine returned early: {r:?}"));
        }
        let now = Instant::now();
        if restart.is_none() && c > done0 {
            restart = Some(now - t0);
        }
        match &first {
            None if c >= done0 + warm => {
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
                    taskers_cpu_us: b.cpu.children.saturating_sub(a.cpu.children).as_secs_f64()
                        * 1e6
                        / n,
                    tasks: c - c1,
                    depth_from: queued.saturating_sub(c1 - done0),
                    depth_to: queued.saturating_sub(c - done0),
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
