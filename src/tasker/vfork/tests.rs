//! Tests of `vfork`: real processes started the way the engine starts taskers.

use super::*;
use std::io::Read;
use std::process::ExitStatus;

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
