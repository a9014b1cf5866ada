//! What the bench reads from `/proc`: process and thread CPU, peak memory,
//! other load, the machine, and the file-creation probe.

use super::*;

// ================================================================ measures

/// The process's own CPU time and its waited-for children's.
#[derive(Clone, Copy)]
pub struct ProcCpu {
    pub own: Duration,
    pub children: Duration,
}

pub fn proc_cpu() -> ProcCpu {
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
pub fn thread_cpu() -> HashMap<u32, u64> {
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
pub fn threads_cpu_since(base: &HashMap<u32, u64>, exclude: u32) -> Duration {
    let ns: u64 = thread_cpu()
        .iter()
        .filter(|(tid, _)| **tid != exclude)
        .map(|(tid, ns)| ns.saturating_sub(base.get(tid).copied().unwrap_or(0)))
        .sum();
    Duration::from_nanos(ns)
}

pub fn my_tid() -> u32 {
    fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .expect("/proc/thread-self names this thread")
}

/// Resets the peak RSS (`VmHWM`) of the process, after giving back to the
/// kernel the heap that earlier runs freed (glibc keeps it otherwise, and
/// each run's peak would start from the largest run before it).
#[allow(unsafe_code)]
pub fn reset_peak() {
    // SAFETY: malloc_trim only releases free memory of glibc's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = fs::write("/proc/self/clear_refs", "5");
}

/// The peak RSS (`VmHWM`) in MiB.
pub fn peak_mib() -> f64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

pub fn machine() -> String {
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
    format!("{cpus} CPUs ({cpu}), Linux {}", kernel.trim())
}

/// The filesystem type of the mount holding `path`.
pub fn fs_type(path: &Path) -> String {
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
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A point in time with the machine's busy CPU time and this process's
/// (own and children's), to tell how much CPU other processes took.
#[derive(Clone, Copy)]
pub struct Mark {
    pub t: Instant,
    pub machine: Duration,
    pub cpu: ProcCpu,
}

pub fn mark() -> Mark {
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
pub fn other_cpus(a: &Mark, b: &Mark) -> f64 {
    let machine = b.machine.saturating_sub(a.machine).as_secs_f64();
    let own = (b.cpu.own + b.cpu.children)
        .saturating_sub(a.cpu.own + a.cpu.children)
        .as_secs_f64();
    ((machine - own) / (b.t - a.t).as_secs_f64()).max(0.0)
}

/// Microseconds to create one empty file, over 1000 files in a new
/// directory beside the roots (kept until the end, like the roots).
pub fn fs_probe(keep: &mut Vec<BenchRoot>) -> BenchResult<f64> {
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
