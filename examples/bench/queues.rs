//! The per-task cost by queue size: intake, restart and a steady window
//! with the queue still deep.

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
    pub window: usize,
    pub depth_from: usize,
    pub depth_to: usize,
    pub peak_mib: f64,
    pub other_cpus: f64,
}

/// What the steady-state window measured.
pub struct Window {
    pub restart: Duration,
    pub tasks_per_s: f64,
    pub cpu_us: f64,
    pub tasks: usize,
    pub depth_from: usize,
    pub depth_to: usize,
    pub other_cpus: f64,
}

pub fn queue(
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
    // The warm-up and the window both fit in the queue.
    let warm = WARM.min(q / 4);
    let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
    let base = thread_cpu();
    let t0 = Instant::now();
    let rx = spawn_engine(br.root.clone(), options(workers, false), Some(stop_rx));
    let measured = steady_window(&br, &rx, &base, t0, q, done0, (warm, window), deadline);
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
/// this one, and the machine's load at the `warm`th new record and
/// `window` records later.
#[allow(clippy::too_many_arguments)]
pub fn steady_window(
    br: &BenchRoot,
    rx: &std_mpsc::Receiver<Result<(), String>>,
    base: &HashMap<u32, u64>,
    t0: Instant,
    q: usize,
    done0: usize,
    (warm, window): (usize, usize),
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
