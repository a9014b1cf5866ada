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
//! `OnThisCpu`), unblocks every signal and execs. A failure is left in memory both see, and the child
//! exits; the parent, resumed once the child has exec'd or exited, reaps
//! such a child and returns the error.
//!
//! The returned [`Child`] is waited for through a pidfd on the runtime
//! (or, on kernels without pidfds, on `SIGCHLD`).

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, Signal, SignalKind};

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

/// A started process, not yet reaped.
pub struct Child {
    pid: i32,
    exit: ExitWatch,
    status: Option<ExitStatus>,
}

enum ExitWatch {
    Pidfd(AsyncFd<OwnedFd>),
    Sigchld(Signal),
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
    /// The CPUs the child may run on once it execs (the spawning
    /// thread's own set; see [`OnThisCpu`]); `None` leaves its set alone.
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
        let pinned = OnThisCpu::pin();
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

/// The child's strings, made before the clone (the child allocates
/// nothing), and the null-ended arrays of pointers into them.
struct Strings {
    program: CString,
    dir: CString,
    argv_ptrs: Vec<*const libc::c_char>,
    env_ptrs: Vec<*const libc::c_char>,
    sh_argv: Vec<CString>,
    sh_argv_ptrs: Vec<*const libc::c_char>,
    // What the pointers point into (moving a `CString` does not move its
    // bytes).
    _argv: Vec<CString>,
    _env: Vec<CString>,
}

impl Strings {
    fn of(cmd: &Command) -> io::Result<Strings> {
        let found = find_program(cmd.argv, cmd.env, cmd.dir)?;
        let (Found::Path(program) | Found::Searched(program)) = &found;
        let program = cstring(program.as_os_str())?;
        let argv: Vec<CString> = cmd
            .argv
            .iter()
            .map(|a| cstring(a))
            .collect::<io::Result<_>>()?;
        let env: Vec<CString> = last_of_each(cmd.env)
            .into_iter()
            .map(|(k, v)| {
                let mut kv = OsString::from(k);
                kv.push("=");
                kv.push(v);
                cstring(&kv)
            })
            .collect::<io::Result<_>>()?;
        // A program found in `PATH` that turns out not to be executable as
        // it is (no `#!`) is run as `/bin/sh program args…`, as `execvp`
        // runs it.
        let sh_argv: Vec<CString> = match found {
            Found::Searched(_) => [CString::from(c"/bin/sh"), program.clone()]
                .into_iter()
                .chain(argv.iter().skip(1).cloned())
                .collect(),
            Found::Path(_) => Vec::new(),
        };
        Ok(Strings {
            dir: cstring(cmd.dir.as_os_str())?,
            argv_ptrs: null_ended(&argv),
            env_ptrs: null_ended(&env),
            sh_argv_ptrs: null_ended(&sh_argv),
            sh_argv,
            program,
            _argv: argv,
            _env: env,
        })
    }
}

/// The spawning thread held on the CPU it runs on, for the clone: the
/// child inherits that one CPU, so it starts where its parent, which waits
/// for its exec (`CLONE_VFORK`), leaves a CPU free. Left to itself, the
/// kernel often queues the new child behind a running tasker on another
/// CPU while this one idles (measured: 0.5–1 ms per spawn). The child
/// takes back the thread's whole set before it execs; dropping this
/// gives it back to the thread.
struct OnThisCpu {
    all: libc::cpu_set_t,
}

impl OnThisCpu {
    /// `None` when the thread's set cannot be read or changed (it is then
    /// left as it was).
    fn pin() -> Option<OnThisCpu> {
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

/// The environment with each name once, at its last value (as a map
/// built from it would hold it), in the order of the names' first places.
fn last_of_each(env: &[(String, OsString)]) -> Vec<(&String, &OsString)> {
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut out: Vec<(&String, &OsString)> = Vec::with_capacity(env.len());
    for (k, v) in env {
        match at.get(k.as_str()) {
            Some(&i) => out[i].1 = v,
            None => {
                at.insert(k, out.len());
                out.push((k, v));
            }
        }
    }
    out
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a NUL byte in {}", s.to_string_lossy()),
        )
    })
}

fn null_ended(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain([std::ptr::null()])
        .collect()
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

/// How the program was found.
enum Found {
    /// `argv[0]` held a slash: exec'd as it is.
    Path(PathBuf),
    /// Looked up in `PATH`, as `execvp` does after the child's `chdir`:
    /// a file it cannot exec (no `#!`) is then run by `/bin/sh`.
    Searched(PathBuf),
}

/// The program to exec: `argv[0]` if it holds a slash, else the first file
/// of that name this process may execute in the `PATH` of the child's
/// environment (the engine's if it has none), a relative entry (or an
/// empty one, `.`) taken from the child's directory `dir`.
fn find_program(argv: &[OsString], env: &[(String, OsString)], dir: &Path) -> io::Result<Found> {
    let Some(name) = argv.first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no program"));
    };
    if name.as_bytes().contains(&b'/') {
        return Ok(Found::Path(PathBuf::from(name)));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|entry| dir.join(entry).join(name))
        .find(|candidate| is_executable(candidate))
        .map(Found::Searched)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

/// A regular file this process may execute.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
        && nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// Reaps a child that failed before its exec.
fn reap(pid: i32) {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a plain int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

fn watch_exit(pid: i32) -> io::Result<ExitWatch> {
    // SAFETY: pidfd_open takes a pid and flags; its result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: a descriptor just made, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: an `OwnedFd`, open and the same for the `AsyncFd`'s life.
        let watched = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
        return watched.map(ExitWatch::Pidfd).map_err(|e| e.into_parts().1);
    }
    Ok(ExitWatch::Sigchld(signal(SignalKind::child())?))
}

impl Child {
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Its wait status if it has exited (it is reaped then).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        reaped(self.pid, &mut self.status)
    }

    /// Waits for it to exit, and reaps it. With a pidfd, nothing is asked
    /// before it is readable (an exit before its registration makes it
    /// readable at once).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            match &mut self.exit {
                ExitWatch::Pidfd(fd) => {
                    let mut ready = fd.readable().await?;
                    if let Some(status) = reaped(self.pid, &mut self.status)? {
                        return Ok(status);
                    }
                    ready.clear_ready();
                }
                ExitWatch::Sigchld(sigchld) => {
                    if let Some(status) = reaped(self.pid, &mut self.status)? {
                        return Ok(status);
                    }
                    sigchld.recv().await;
                }
            }
        }
    }
}

impl Drop for Child {
    /// A child dropped before it was reaped (its driver ended early) is
    /// reaped by a thread of its own once it exits, never left a zombie.
    fn drop(&mut self) {
        if matches!(reaped(self.pid, &mut self.status), Ok(None)) {
            let pid = self.pid;
            let _ = std::thread::Builder::new()
                .name("reap".into())
                .spawn(move || reap(pid));
        }
    }
}

/// `status`, or the child's wait status if it has exited since (it is
/// reaped then).
fn reaped(pid: i32, status: &mut Option<ExitStatus>) -> io::Result<Option<ExitStatus>> {
    if status.is_some() {
        return Ok(*status);
    }
    let mut raw = 0;
    // SAFETY: waits for our own child without blocking.
    let r = unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if r == pid {
        *status = Some(ExitStatus::from_raw(raw));
    }
    Ok(*status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Runs `argv` with `env` in `dir`, stdin empty; returns its status,
    /// stdout and stderr.
    fn run(
        argv: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
    ) -> io::Result<(ExitStatus, String, String)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
            let env: Vec<(String, OsString)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), OsString::from(v)))
                .collect();
            let (stdin, stdin_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            drop(stdin_w);
            let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            let mut child = spawn(Command {
                argv: &argv,
                env: &env,
                dir,
                stdio: [stdin, out_w, err_w],
                cgroup_procs: None,
            })?;
            let status = child.wait().await?;
            let (mut out, mut err) = (String::new(), String::new());
            std::fs::File::from(out_r).read_to_string(&mut out)?;
            std::fs::File::from(err_r).read_to_string(&mut err)?;
            Ok((status, out, err))
        })
    }

    #[test]
    fn a_child_gets_its_arguments_environment_directory_and_pipes() {
        let dir = tempfile::tempdir().unwrap();
        let (status, out, err) = run(
            &[
                "/bin/sh",
                "-c",
                "echo \"$0|$1|$FOO|$(pwd)|$(env | wc -l)\"; echo oops >&2; exit 3",
                "zero",
                "one",
            ],
            &[("FOO", "bar baz")],
            dir.path(),
        )
        .unwrap();
        assert_eq!(status.code(), Some(3));
        let real = std::fs::canonicalize(dir.path()).unwrap();
        // The environment is exactly what was given (sh adds PWD, SHLVL
        // and `_` of its own).
        let line = out.trim_end();
        let prefix = format!("zero|one|bar baz|{}|", real.display());
        assert!(line.starts_with(&prefix), "{line}");
        let vars: usize = line[prefix.len()..].trim().parse().unwrap();
        assert!(vars <= 4, "{line}");
        assert_eq!(err, "oops\n");
    }

    #[test]
    fn a_child_leads_its_own_group_with_default_signals_and_nothing_blocked() {
        let dir = tempfile::tempdir().unwrap();
        // The test process ignores SIGPIPE (Rust does) and blocks SIGUSR2
        // here, and has a handler for SIGUSR1: none of it reaches the child.
        let mut usr2 = nix::sys::signal::SigSet::empty();
        usr2.add(nix::sys::signal::Signal::SIGUSR2);
        usr2.thread_block().unwrap();
        extern "C" fn on_usr1(_: libc::c_int) {}
        // SAFETY: a handler that does nothing.
        unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGUSR1,
                nix::sys::signal::SigHandler::Handler(on_usr1),
            )
            .unwrap();
        }
        // grep's own masks, inherited through sh (which blocks signals
        // of its own while it waits, so its masks tell nothing).
        let script = "read -r _ _ _ _ pgid _ < /proc/$$/stat; echo \"$$ $pgid\"; \
                      grep -E '^Sig(Blk|Ign|Cgt)' /proc/self/status";
        let (status, out, _) = run(&["/bin/sh", "-c", script], &[], dir.path()).unwrap();
        usr2.thread_unblock().unwrap();
        assert!(status.success(), "{out}");
        let mut lines = out.lines();
        let ids: Vec<&str> = lines.next().unwrap().split(' ').collect();
        assert_eq!(ids[0], ids[1], "the child leads its own group: {out}");
        for line in lines {
            let (name, mask) = line.split_once(':').unwrap();
            let mask = u64::from_str_radix(mask.trim(), 16).unwrap();
            match name {
                "SigBlk" => assert_eq!(mask, 0, "{out}"),
                // SIGPIPE is bit 13 (signal 13 - 1 = 12).
                "SigIgn" => assert_eq!(mask & (1 << 12), 0, "{out}"),
                // grep's own handlers only: never SIGUSR1 (bit 9).
                "SigCgt" => assert_eq!(mask & (1 << 9), 0, "{out}"),
                _ => {}
            }
        }
    }

    #[test]
    fn a_program_without_a_slash_is_looked_up_in_the_childs_path() {
        let dir = tempfile::tempdir().unwrap();
        let (status, out, _) = run(
            &["echo", "found"],
            &[("PATH", "/nonexistent:/usr/bin:/bin")],
            dir.path(),
        )
        .unwrap();
        assert!(status.success());
        assert_eq!(out, "found\n");
        let missing = run(&["echo", "x"], &[("PATH", "/nonexistent")], dir.path());
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_failed_exec_is_an_error_of_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = run(&["/nonexistent/tasker"], &[], dir.path());
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let denied = run(&[plain.to_str().unwrap()], &[], dir.path());
        assert_eq!(denied.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        let gone = run(&["/bin/true"], &[], &dir.path().join("no-such-dir"));
        assert_eq!(gone.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_name_given_twice_in_the_environment_is_passed_once_at_its_last_value() {
        let dir = tempfile::tempdir().unwrap();
        let (status, out, _) = run(
            &["/bin/sh", "-c", "echo \"$X\"; env | grep -c '^X='"],
            &[("X", "first"), ("X", "second")],
            dir.path(),
        )
        .unwrap();
        assert!(status.success());
        assert_eq!(out, "second\n1\n");
    }

    /// As `execvp` after the child's `chdir`: a relative `PATH` entry is
    /// the tasker's directory's, and a found file without `#!` runs under
    /// `/bin/sh`.
    #[test]
    fn a_searched_program_is_found_and_run_as_execvp_would() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let tool = dir.path().join("bin/tool");
        std::fs::write(&tool, "echo \"ran $1\"\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (status, out, err) = run(
            &["tool", "here"],
            &[("PATH", "/nonexistent:bin")],
            dir.path(),
        )
        .unwrap();
        assert!(status.success(), "{err}");
        assert_eq!(out, "ran here\n");
        // Not executable by this process: passed over, as execvp does.
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o644)).unwrap();
        let none = run(&["tool"], &[("PATH", "bin")], dir.path());
        assert_eq!(none.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    /// A child dropped before its exit is reaped all the same: it never
    /// stays a zombie.
    #[test]
    fn a_child_dropped_before_it_exits_is_reaped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pid = rt.block_on(async {
            let null = || std::fs::File::open("/dev/null").unwrap().into();
            let child = spawn(Command {
                argv: &["/bin/sleep".into(), "0.2".into()],
                env: &[],
                dir: dir.path(),
                stdio: [null(), null(), null()],
                cgroup_procs: None,
            })
            .unwrap();
            child.id()
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(std::time::Instant::now() < deadline, "{pid} never reaped");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn a_nul_byte_in_an_argument_is_refused_before_any_process() {
        let dir = tempfile::tempdir().unwrap();
        let e = run(&["/bin/echo", "a\0b"], &[], dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
