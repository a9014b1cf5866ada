//! Where a new tasker starts running: a spawn holds its thread on the CPU
//! it runs on for the clone ([`OnThisCpu`]), and the child takes back the
//! thread's whole set of CPUs before it execs. Measured by
//! `examples/bench` (README, Speed).

#![allow(unsafe_code)]

/// The spawning thread held on the CPU it runs on, for the clone: the
/// child inherits that one CPU, so it starts where its parent, which waits
/// for its exec (`CLONE_VFORK`), leaves a CPU free. Left to itself, the
/// kernel often queues the new child behind a running tasker on another
/// CPU while this one idles (measured: 0.5–1 ms per spawn). The child
/// takes back the thread's whole set before it execs (before, not after:
/// a child held there after its exec would keep its parent waiting
/// behind it); dropping this gives it back to the thread.
pub(super) struct OnThisCpu {
    pub(super) all: libc::cpu_set_t,
}

impl OnThisCpu {
    /// `None` when the thread may run on one CPU only, or its set cannot
    /// be read or changed (it is then left as it was).
    pub(super) fn pin() -> Option<OnThisCpu> {
        // SAFETY: cpu_set_t is plain data; the calls fill or read the
        // sets given, of the size given, for this thread only.
        unsafe {
            let size = std::mem::size_of::<libc::cpu_set_t>();
            let mut all: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size, &mut all) != 0 {
                return None;
            }
            let cpu = libc::sched_getcpu();
            if cpu < 0 || libc::CPU_COUNT(&all) < 2 {
                return None;
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(usize::try_from(cpu).ok()?, &mut one);
            (libc::sched_setaffinity(0, size, &one) == 0).then_some(OnThisCpu { all })
        }
    }
}

impl Drop for OnThisCpu {
    fn drop(&mut self) {
        // SAFETY: this thread's set, back to what `pin` read.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.all);
        }
    }
}
