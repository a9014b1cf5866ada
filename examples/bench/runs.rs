//! The floor (the same processes forked directly), engine throughput and
//! latency runs.

use super::*;

// ================================================================ floor

/// One floor or throughput run.
#[derive(Clone, Copy)]
pub struct Run {
    pub tasks_per_s: f64,
    /// The bench's (floor) or the engine's CPU per task.
    pub own_cpu_us: f64,
    /// The taskers' CPU per task.
    pub children_cpu_us: f64,
    pub other_cpus: f64,
    pub peak_mib: f64,
}

impl Run {
    pub fn new(n: usize, a: &Mark, b: &Mark, peak_mib: f64) -> Run {
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

pub fn floor(n: usize, workers: usize, keep: &mut Vec<BenchRoot>) -> BenchResult<Run> {
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

pub fn throughput(n: usize, workers: usize, keep: &mut Vec<BenchRoot>) -> BenchResult<Run> {
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

pub struct Latency {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub other_cpus: f64,
}

/// Polls `cond` every few ms until it holds or `deadline` passes.
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> BenchResult<()> {
    let end = Instant::now() + deadline;
    while !cond() {
        if Instant::now() > end {
            return Err(format!("timed out after {deadline:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

pub fn latency(
    n: usize,
    rate: u32,
    workers: usize,
    keep: &mut Vec<BenchRoot>,
) -> BenchResult<Latency> {
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
pub fn drop_steadily(
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

// ================================================================ submit --batch

/// `submit --batch` as the CLI runs it (`submit_lines`: every line checked,
/// one sync for the batch, a rename each into `in/`): durable task files
/// per second, best of `rounds` fresh roots. Every task must be in `in/`.
pub fn submit_batch(n: usize, rounds: usize, keep: &mut Vec<BenchRoot>) -> BenchResult<f64> {
    let mut text = String::with_capacity(n * 64);
    for i in 0..n {
        text.push_str(&format!(
            "{{\"domain\":\"bench\",\"tasker\":\"cat\",\"payload\":{{\"n\":{i}}}}}\n"
        ));
    }
    let mut best: f64 = 0.0;
    for _ in 0..rounds {
        let br = BenchRoot::new()?;
        // Untimed: what earlier measures left unwritten on this
        // filesystem is written now, not by the batch's `syncfs`.
        spoolflow::store::spool::sync_filesystem(&br.root.spool_in())
            .map_err(|e| format!("submit --batch: {e}"))?;
        let t0 = Instant::now();
        let ids = spoolflow::submit::submit_lines(
            &br.root,
            text.as_bytes(),
            &spoolflow::submit::Defaults::default(),
            &spoolflow::submit::BatchOptions::default(),
        )
        .map_err(|e| format!("submit --batch: {e}"))?;
        let per_s = n as f64 / t0.elapsed().as_secs_f64();
        let inn = br.count(&br.root.spool_in());
        if ids.len() != n || inn != n {
            return Err(format!(
                "submit --batch: {} ids, {inn} files in in/, expected {n}",
                ids.len()
            ));
        }
        best = best.max(per_s);
        keep.push(br);
    }
    Ok(best)
}
