//! What the child of a spawn reads, made before the clone (the child
//! allocates nothing): the program found as `execvp` would find it, its
//! arguments and environment as C strings and null-ended arrays.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::Command;

/// The child's strings, made before the clone (the child allocates
/// nothing), and the null-ended arrays of pointers into them.
pub(super) struct Strings {
    pub(super) program: CString,
    pub(super) dir: CString,
    pub(super) argv_ptrs: Vec<*const libc::c_char>,
    pub(super) env_ptrs: Vec<*const libc::c_char>,
    pub(super) sh_argv: Vec<CString>,
    pub(super) sh_argv_ptrs: Vec<*const libc::c_char>,
    // What the pointers point into (moving a `CString` does not move its
    // bytes).
    _argv: Vec<CString>,
    _env: Vec<CString>,
}

impl Strings {
    pub(super) fn of(cmd: &Command) -> io::Result<Strings> {
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

/// The environment with each name once, at its last value (as a map
/// built from it would hold it), in the order of the names' first places.
pub(super) fn last_of_each(env: &[(String, OsString)]) -> Vec<(&String, &OsString)> {
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

/// How the program was found.
pub(super) enum Found {
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
pub(super) fn find_program(
    argv: &[OsString],
    env: &[(String, OsString)],
    dir: &Path,
) -> io::Result<Found> {
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
