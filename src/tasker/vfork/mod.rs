//! Starting a tasker process the way `posix_spawn` does, without its
//! per-spawn costs: `clone(CLONE_VM | CLONE_VFORK)` on a stack kept by the
//! spawning thread (glibc maps and unmaps a stack per spawn, and the
//! unmap flushes the TLB of every CPU), with every string made before the
//! clone (glibc's file actions ask the descriptor limit six times). The
//! child shares the engine's memory until it execs, so it runs only
//! system calls on what the parent prepared: it resets the signals the
//! engine handles, enters its own process group (and its cgroup, if
//! any), puts its pipes on 0, 1 and 2, changes directory, takes back the
//! CPUs its parent may use (the clone holds the parent on one, see
//! `cpu::OnThisCpu`), unblocks every signal and execs. A failure is left in
//! memory both see, and the child exits; the parent, resumed once the
//! child has exec'd or exited, reaps such a child and returns the error.
//!
//! The program and the strings are made in `strings`; the returned
//! [`Child`] (`child`) is waited for through a pidfd on the runtime (or,
//! on kernels without pidfds, on `SIGCHLD`).

#![allow(unsafe_code)]

mod child;
mod strings;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

pub use child::Child;
use child::{reap, watch_exit};
use strings::Strings;

use super::cpu;

/// The child's stack: the child runs a few system calls on it before it
/// execs (the kernel's exec itself does not use it).
const STACK_SIZE: usize = 64 * 1024;

/// What to start.
pub struct Command<'a> {
    /// `argv[0]` is the program: a path, or a name looked up in the
    /// `PATH` of `env` (else the engine's).
    pub argv: &'a [OsString],
    /// The whole environment.
    pub env: &'a [(String, OsString)],
    pub dir: &'a Path,
    /// The child's ends of its stdin, stdout and stderr.
    pub stdio: [OwnedFd; 3],
    /// A cgroup's `cgroup.procs`, open for writing: the child enters the
    /// cgroup before it execs.
    pub cgroup_procs: Option<RawFd>,
}

/// Everything the child reads, made before the clone; `error` is what it
/// writes (an errno), read by the parent once the clone returns.
#[repr(C)]
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    dir: *const libc::c_char,
    /// `/bin/sh program args…`, for a program found in `PATH` that cannot
    /// be exec'd as it is (null otherwise).
    sh_argv: *const *const libc::c_char,
    stdio: [RawFd; 3],
    cgroup_procs: RawFd,
    /// The CPUs the child may run on once it execs (every CPU, see
    /// [`cpu::OnThisCpu`]); `None` leaves its set alone.
    cpus: Option<libc::cpu_set_t>,
    error: libc::c_int,
}

/// A stack mapped once per spawning thread, with a guard page below it.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: sysconf reads a constant of the system.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = STACK_SIZE + page;
        // SAFETY: an anonymous private mapping; its result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the first page of the mapping made above.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            let e = io::Error::last_os_error();
            // SAFETY: the mapping made above, not used by anything.
            unsafe { libc::munmap(base, len) };
            return Err(e);
        }
        Ok(Stack { base, len })
    }

    /// The stack's top (it grows down).
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the mapping's end, which `clone` wants.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used (its thread
        // is ending).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

thread_local! {
    static STACK: RefCell<Option<Stack>> = const { RefCell::new(None) };
}

/// Starts `cmd` in a new process group. The parent's ends of the pipes
/// stay the caller's; the child's ends in `cmd.stdio` are closed here.
pub fn spawn(cmd: Command) -> io::Result<Child> {
    let strings = Strings::of(&cmd)?;
    // Each of the child's ends above 2, so that putting one on 0, 1 or 2
    // never overwrites another before it is placed.
    let [stdin, stdout, stderr] = cmd.stdio;
    let stdio = [
        above_stdio(stdin)?,
        above_stdio(stdout)?,
        above_stdio(stderr)?,
    ];
    let mut args = ChildArgs {
        program: strings.program.as_ptr(),
        argv: strings.argv_ptrs.as_ptr(),
        envp: strings.env_ptrs.as_ptr(),
        dir: strings.dir.as_ptr(),
        sh_argv: if strings.sh_argv.is_empty() {
            std::ptr::null()
        } else {
            strings.sh_argv_ptrs.as_ptr()
        },
        stdio: [
            stdio[0].as_raw_fd(),
            stdio[1].as_raw_fd(),
            stdio[2].as_raw_fd(),
        ],
        cgroup_procs: cmd.cgroup_procs.unwrap_or(-1),
        cpus: None,
        error: 0,
    };
    let pid = STACK.with(|cell| -> io::Result<i32> {
        let mut stack = cell.borrow_mut();
        if stack.is_none() {
            *stack = Some(Stack::new()?);
        }
        let top = stack.as_ref().map_or(std::ptr::null_mut(), Stack::top);
        let pinned = cpu::OnThisCpu::pin();
        args.cpus = pinned.as_ref().map(|p| p.all);
        let pid = clone_child(top, &mut args);
        drop(pinned);
        Ok(pid)
    })?;
    drop(stdio);
    if pid < 0 {
        return Err(io::Error::from_raw_os_error(-pid));
    }
    // SAFETY: the child has exec'd or exited (CLONE_VFORK): nothing
    // writes `error` any more.
    let error = unsafe { std::ptr::read_volatile(&args.error) };
    if error != 0 {
        reap(pid);
        return Err(io::Error::from_raw_os_error(error));
    }
    let exit = match watch_exit(pid) {
        Ok(exit) => exit,
        Err(e) => {
            // It runs, but its end could not be watched: it goes.
            // SAFETY: a signal to our own child, not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid);
            return Err(e);
        }
    };
    Ok(Child {
        pid,
        exit,
        status: None,
    })
}

/// Clones the child with every signal blocked (its handlers are the
/// engine's until it resets them); returns its pid, or `-errno`.
fn clone_child(top: *mut libc::c_void, args: &mut ChildArgs) -> i32 {
    // SAFETY: sigset_t is plain data, filled by sigfillset.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: signal masks of this thread only; `args` and the stack
    // outlive the clone, which returns only once the child has exec'd or
    // exited (CLONE_VFORK), and the child touches nothing but `args`.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (args as *mut ChildArgs).cast(),
        );
        let pid = if pid < 0 {
            -io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EAGAIN)
        } else {
            pid
        };
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        pid
    }
}

/// The child, until it execs: system calls only, on what `args` holds.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive and not touched by
    // the parent until this child execs or exits.
    unsafe {
        let args = arg.cast::<ChildArgs>();
        reset_signals();
        if libc::setpgid(0, 0) != 0 {
            fail(args);
        }
        let procs = (*args).cgroup_procs;
        if procs >= 0 && libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
            fail(args);
        }
        let stdio = (*args).stdio;
        for (from, to) in stdio.into_iter().zip(0..) {
            if libc::dup2(from, to) < 0 {
                fail(args);
            }
        }
        if libc::chdir((*args).dir) != 0 {
            fail(args);
        }
        // Best effort: a tasker left on one CPU still runs.
        if let Some(cpus) = &(*args).cpus {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), cpus);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve((*args).program, (*args).argv, (*args).envp);
        if *libc::__errno_location() == libc::ENOEXEC && !(*args).sh_argv.is_null() {
            libc::execve(c"/bin/sh".as_ptr(), (*args).sh_argv, (*args).envp);
        }
        fail(args)
    }
}

/// In the child: leaves its errno for the parent and exits.
///
/// # Safety
/// Called in the child only, with `args` the parent's `ChildArgs`.
unsafe fn fail(args: *mut ChildArgs) -> ! {
    std::ptr::write_volatile(&mut (*args).error, *libc::__errno_location());
    libc::_exit(127)
}

/// In the child: every signal with a handler goes back to its default
/// (a handler would run on the engine's memory), and so does `SIGPIPE`,
/// which Rust ignores in the engine (a tasker gets it as any program).
///
/// # Safety
/// Called in the child only, with every signal blocked.
unsafe fn reset_signals() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
            continue;
        }
        let handled = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
        if handled || sig == libc::SIGPIPE {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
    }
}

/// `fd` itself if above 2, else a close-on-exec copy above 2.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor `fd` owns.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just made, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}
