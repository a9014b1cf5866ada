//! Where a new tasker starts running: a spawn holds its thread on the CPU
//! it runs on for the clone ([`OnThisCpu`]), and the child takes back
//! every CPU before it execs. Measured by `examples/bench` (README,
//! Speed).

#![allow(unsafe_code)]

/// The spawning thread held on the CPU it runs on, for the clone: the
/// child inherits that one CPU, so it starts where its parent, which waits
/// for its exec (`CLONE_VFORK`), leaves a CPU free. Left to itself, the
/// kernel often queues the new child behind a running tasker on another
/// CPU while this one idles (measured: 0.5–1 ms per spawn). The child
/// takes back every CPU before it execs (before, not after: a child held
/// there after its exec would keep its parent waiting behind it);
/// dropping this gives them back to the thread.
///
/// Done only for a thread that may run on every online CPU, and given
/// back as "every CPU" (`all`, which the kernel clips to the cpuset), not
/// as the set read before: since Linux 6.2 the set a thread last asked
/// for bounds it when its cpuset grows again, so giving back the set of
/// a moment would keep the engine and its taskers off CPUs added later.
/// An engine restricted by `taskset` or a narrower cpuset is left as it
/// was: its set is the operator's.
pub(super) struct OnThisCpu {
    pub(super) all: libc::cpu_set_t,
}

impl OnThisCpu {
    /// `None` when the thread may run on fewer than two CPUs or not on
    /// every online CPU, or its set cannot be read or changed (it is then
    /// left as it was).
    pub(super) fn pin() -> Option<OnThisCpu> {
        let online = *ONLINE.get_or_init(|| {
            // SAFETY: sysconf reads a value of the system.
            usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(0)
        });
        // SAFETY: cpu_set_t is plain data; the calls fill or read the
        // sets given, of the size given, for this thread only.
        unsafe {
            let size = std::mem::size_of::<libc::cpu_set_t>();
            let mut now: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size, &mut now) != 0 {
                return None;
            }
            let count = usize::try_from(libc::CPU_COUNT(&now)).unwrap_or(0);
            let cpu = libc::sched_getcpu();
            if cpu < 0 || count < 2 || count < online {
                return None;
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(usize::try_from(cpu).ok()?, &mut one);
            (libc::sched_setaffinity(0, size, &one) == 0).then(|| OnThisCpu {
                all: *EVERY_CPU.get_or_init(every_cpu),
            })
        }
    }
}

/// The online CPUs when the first spawn looked (a CPU taken offline since
/// makes every set look narrower than that: no hold, as for a restricted
/// engine).
static ONLINE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

static EVERY_CPU: std::sync::OnceLock<libc::cpu_set_t> = std::sync::OnceLock::new();

/// A set of every CPU a `cpu_set_t` can name.
fn every_cpu() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; CPU_SET sets bits within it.
    unsafe {
        let mut all: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut all);
        }
        all
    }
}

impl Drop for OnThisCpu {
    fn drop(&mut self) {
        // SAFETY: this thread's set, given every CPU again.
        let r = unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.all)
        };
        if r != 0 {
            tracing::debug!(
                "a spawning thread could not take back its CPUs: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn this_threads_set() -> Vec<usize> {
        // SAFETY: fills a plain-data set of the size given.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            (0..libc::CPU_SETSIZE as usize)
                .filter(|c| libc::CPU_ISSET(*c, &set))
                .collect()
        }
    }

    /// The hold puts the thread on one CPU, and its end gives back every
    /// CPU the thread had, again and again.
    #[test]
    fn the_hold_is_one_cpu_and_its_end_gives_every_cpu_back() {
        std::thread::spawn(|| {
            let before = this_threads_set();
            // SAFETY: sysconf reads a value of the system.
            let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as usize;
            for _ in 0..3 {
                let held = OnThisCpu::pin();
                if before.len() < 2 || before.len() < online {
                    assert!(held.is_none(), "{before:?} of {online}");
                    return;
                }
                assert!(held.is_some(), "{before:?}");
                assert_eq!(this_threads_set().len(), 1);
                drop(held);
                assert_eq!(this_threads_set(), before);
            }
        })
        .join()
        .unwrap();
    }
}
