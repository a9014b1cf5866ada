//! What the bench prints: one table of every figure beside its target, a
//! column per filesystem, then each filesystem's detailed tables.

use super::*;

/// A figure of the summary: its name, its target, and its value on one
/// filesystem (text) with whether the target is met.
struct Figure {
    name: String,
    target: String,
    cells: Vec<Cell>,
}

/// The best run of alternated rounds.
pub fn best(runs: &[Run]) -> Run {
    *runs
        .iter()
        .max_by(|a, b| a.tasks_per_s.total_cmp(&b.tasks_per_s))
        .expect("at least one round")
}

fn mark_met(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => " ✓",
        Some(false) => " ✗",
        None => "",
    }
}

/// The summary table: every figure of the performance targets, beside
/// its target, for each filesystem measured.
pub fn summary(reports: &[FsReport], tasks: usize, workers: usize) {
    let figures = figures(reports, tasks, workers);
    println!();
    println!("### Targets ({workers} workers, `cat` tasker)");
    println!();
    let heads: Vec<String> = reports
        .iter()
        .map(|r| format!("{} ({})", r.fs, r.dir.display()))
        .collect();
    println!("| figure | target | {} |", heads.join(" | "));
    println!("|---|---|{}", "---:|".repeat(reports.len()));
    for f in &figures {
        let cells: Vec<String> = f
            .cells
            .iter()
            .map(|(text, met)| format!("{text}{}", mark_met(*met)))
            .collect();
        println!("| {} | {} | {} |", f.name, f.target, cells.join(" | "));
    }
    println!();
    println!("✓ met, ✗ missed; — not measured in this run.");
}

fn figures(reports: &[FsReport], tasks: usize, workers: usize) -> Vec<Figure> {
    let figure = |name: String, target: &str, cell: fn(&FsReport) -> Cell| Figure {
        name,
        target: target.into(),
        cells: reports.iter().map(cell).collect(),
    };
    vec![
        figure(
            format!("throughput, engine ÷ floor ({tasks} tasks, {workers} at a time)"),
            "≥ 0.80×",
            throughput,
        ),
        figure(
            "engine CPU per task".into(),
            "< 300 µs tmpfs, < 500 µs disk",
            engine_cpu,
        ),
        figure(
            "drop → started, p50 / p99 (idle engine)".into(),
            "< 2 / < 20 ms",
            latency,
        ),
        figure(
            "flat: steady tasks/s, deepest ÷ shallowest queue".into(),
            "≥ 0.90",
            flatness,
        ),
        figure(
            "peak RSS, deepest queue".into(),
            "< 150 MB at 100 000",
            peak_rss,
        ),
        figure(
            "memory per queued task (peak RSS slope)".into(),
            "≤ 1 KB",
            memory_per_task,
        ),
        figure(
            "`submit --batch`, durable files/s".into(),
            "≥ 20 000",
            submit_rate,
        ),
        figure(
            "flow task nodes ÷ standalone tasks".into(),
            "≥ 0.80×",
            flows_ratio,
        ),
    ]
}

/// One figure of one filesystem: its text, and whether it meets its
/// target (`None`: not measured, or not at the size the target names).
type Cell = (String, Option<bool>);

fn not_measured() -> Cell {
    ("—".to_string(), None)
}

fn throughput(r: &FsReport) -> Cell {
    let (f, e) = (best(&r.floors), best(&r.engines));
    let ratio = e.tasks_per_s / f.tasks_per_s;
    (
        format!(
            "{ratio:.2}× ({:.0} ÷ {:.0}/s)",
            e.tasks_per_s, f.tasks_per_s
        ),
        Some(ratio >= 0.8),
    )
}

fn engine_cpu(r: &FsReport) -> Cell {
    let us = best(&r.engines).own_cpu_us;
    let limit = if r.fs == "tmpfs" { 300.0 } else { 500.0 };
    (format!("{us:.0} µs"), Some(us < limit))
}

fn latency(r: &FsReport) -> Cell {
    (
        format!("{:.2} / {:.2} ms", r.lat.p50_ms, r.lat.p99_ms),
        Some(r.lat.p50_ms < 2.0 && r.lat.p99_ms < 20.0),
    )
}

fn flatness(r: &FsReport) -> Cell {
    match (r.qrows.first(), r.qrows.last()) {
        (Some(lo), Some(hi)) if hi.q > lo.q => {
            let ratio = hi.steady_tasks_per_s / lo.steady_tasks_per_s;
            (
                format!(
                    "{ratio:.2} ({:.0}/s at {} ÷ {:.0}/s at {})",
                    hi.steady_tasks_per_s, hi.q, lo.steady_tasks_per_s, lo.q
                ),
                Some(ratio >= 0.9),
            )
        }
        _ => not_measured(),
    }
}

fn peak_rss(r: &FsReport) -> Cell {
    match r.qrows.last() {
        Some(hi) => {
            let mb = hi.peak_mib * 1.048_576;
            let met = (hi.q >= 100_000).then_some(mb < 150.0);
            (format!("{mb:.0} MB at {}", hi.q), met)
        }
        None => not_measured(),
    }
}

fn memory_per_task(r: &FsReport) -> Cell {
    match (r.qrows.first(), r.qrows.last()) {
        (Some(lo), Some(hi)) if hi.q > lo.q => {
            let bytes = (hi.peak_mib - lo.peak_mib) * 1_048_576.0 / (hi.q - lo.q) as f64;
            (format!("{bytes:.0} B"), Some(bytes <= 1024.0))
        }
        _ => not_measured(),
    }
}

fn submit_rate(r: &FsReport) -> Cell {
    match r.submit_per_s {
        Some(v) => (format!("{v:.0}"), Some(v >= 20_000.0)),
        None => not_measured(),
    }
}

fn flows_ratio(r: &FsReport) -> Cell {
    if r.frows.is_empty() {
        return not_measured();
    }
    let ratios: Vec<f64> = r
        .frows
        .iter()
        .map(|f| f.flow.tasks_per_s / f.standalone.tasks_per_s)
        .collect();
    let text = r
        .frows
        .iter()
        .zip(&ratios)
        .map(|(f, x)| format!("{x:.2}× {}", f.what))
        .collect::<Vec<_>>()
        .join(", ");
    (text, Some(ratios.iter().all(|x| *x >= 0.8)))
}

/// One filesystem's detailed tables.
pub fn details(r: &FsReport, tasks: usize, workers: usize, rounds: usize) {
    let (floor_best, engine_best) = (best(&r.floors), best(&r.engines));
    println!();
    println!("## {} ({})", r.dir.display(), r.fs);
    println!();
    println!(
        "file creation (1000 empty files in a new directory beside the roots): \
         {:.0} µs/file before the runs, {:.0} µs/file after",
        r.probe_before, r.probe_after
    );
    println!();
    println!("### Throughput and latency (`cat` tasker)");
    println!();
    println!("| tasks | workers | floor tasks/s | engine tasks/s | ratio | drop→started p50 / p99 | engine CPU µs/task | peak RSS MiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {:.0} | {:.0} | {:.2}× | {:.2} / {:.2} ms | {:.0} | {:.1} |",
        tasks,
        workers,
        floor_best.tasks_per_s,
        engine_best.tasks_per_s,
        engine_best.tasks_per_s / floor_best.tasks_per_s,
        r.lat.p50_ms,
        r.lat.p99_ms,
        engine_best.own_cpu_us,
        r.engines.iter().map(|r| r.peak_mib).fold(0.0, f64::max),
    );
    println!();
    let rounds_text = |runs: &[Run]| -> String {
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
        "Best of {rounds} alternated rounds each; per round, tasks/s (bench/engine process CPU + \
         taskers' CPU per task; CPU used meanwhile by other processes on the machine):"
    );
    println!();
    println!("- floor: {}", rounds_text(&r.floors));
    println!("- engine: {}", rounds_text(&r.engines));
    println!(
        "- latency: {} drops, max {:.2} ms, other load {:.2} CPUs",
        r.lat.n, r.lat.max_ms, r.lat.other_cpus
    );
    if !r.qrows.is_empty() {
        queues_table(&r.qrows, workers);
    }
    if !r.frows.is_empty() {
        flows::report(&r.frows, rounds);
    }
}

fn queues_table(rows: &[QueueRow], workers: usize) {
    println!();
    println!("### Per-task cost by queue size ({workers} workers)");
    println!();
    println!("| queued | intake µs/task (wall) | intake CPU µs/task | restart ms (µs/queued task) | steady tasks/s | steady CPU µs/task | taskers' CPU µs/task | window: tasks (queue depth) | peak RSS MiB | other load CPUs |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} ({:.0}) | {:.0} | {:.0} | {:.0} | {} ({}→{}) | {:.1} | {:.2} |",
            r.q,
            r.intake_wall_us,
            r.intake_cpu_us,
            r.restart.as_secs_f64() * 1e3,
            r.restart.as_secs_f64() * 1e6 / r.requeued.max(1) as f64,
            r.steady_tasks_per_s,
            r.steady_cpu_us,
            r.taskers_cpu_us,
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
         started again on the Q − {workers} queued tasks in `run/`, time to the first record. \
         Steady: tasks/s and CPU of all engine threads (schedstat) from the {WARM}th record to \
         K = min({STEADY_WINDOW}, Q/2) records later, the queue still deep (topped up to \
         what intake left queued before each round); the best of the rounds, alternated across queue \
         sizes. Taskers' CPU: the reaped children's in that window (10 ms ticks). Other load: \
         CPU used by other processes during that window."
    );
    for r in rows {
        let each: Vec<String> = r.rounds.iter().map(|t| format!("{t:.0}")).collect();
        println!(
            "- {} queued: steady tasks/s per round {}",
            r.q,
            each.join(", ")
        );
    }
}
