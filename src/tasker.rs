//! Taskers (SPEC section 6): resolving a taskee to an executable under
//! `tsk/`, `tasker.json`, the reply table, and running one tasker process
//! ([`run`]): a new process group, a clean environment, stdin written while
//! stdout is read, stderr appended to the execution's `.err` file, a run
//! timeout and stop requests ending in SIGTERM then SIGKILL of the group.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::names::{Domain, Taskee};
use crate::task::{Dur, Object};

/// The largest reply a tasker may write on stdout (SPEC 6).
pub const REPLY_LIMIT: usize = 16 * 1024 * 1024;
/// The largest `tasker.json`.
const CONFIG_LIMIT: u64 = 1024 * 1024;
/// How many of the last stderr lines a failure's reason quotes.
const STDERR_TAIL_LINES: usize = 5;
/// The longest stderr line kept whole; longer ones are split.
const STDERR_LINE_LIMIT: usize = 64 * 1024;
/// How long a tasker's pipes may outlive it before its group is killed.
const LINGER: Duration = Duration::from_secs(2);

/// Why a taskee could not be resolved or configured (the task fails
/// `config`).
#[derive(Debug, thiserror::Error)]
pub enum TaskerError {
    #[error("no tasker {taskee:?} for domain {domain} (looked in tsk/{domain} up its branch and in tsk/any)")]
    NotFound { taskee: Taskee, domain: Domain },
    #[error("{0} is not executable (chmod +x it)")]
    NotExecutable(PathBuf),
    #[error("{0} resolves outside tsk/ and is never run")]
    OutsideTsk(PathBuf),
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// `cmd` of a `tasker.json`: an argv array or a `sh -c` string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Cmd {
    Argv(Vec<String>),
    Shell(String),
}

/// What a tasker gets on stdin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Input {
    #[default]
    Payload,
    Task,
}

/// A `{ "key": "payload.book", "limit": 1 }` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyKey {
    pub key: String,
    pub limit: u32,
}

/// A tasker directory's `tasker.json`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskerConfig {
    #[serde(default)]
    pub cmd: Option<Cmd>,
    #[serde(default, rename = "in")]
    pub input: Input,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub start_timeout: Option<Dur>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub retry_on_timeout: Option<bool>,
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    #[serde(default)]
    pub concurrency: Vec<ConcurrencyKey>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl TaskerConfig {
    /// Parses and validates a `tasker.json`.
    pub fn parse(bytes: &[u8]) -> Result<TaskerConfig, String> {
        let config: TaskerConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        match &config.cmd {
            None => return Err("missing key \"cmd\"".into()),
            Some(Cmd::Argv(v)) if v.is_empty() || v[0].is_empty() => {
                return Err("\"cmd\" must not be empty".into())
            }
            Some(Cmd::Shell(s)) if s.trim().is_empty() => {
                return Err("\"cmd\" must not be empty".into())
            }
            _ => {}
        }
        if config.max_concurrent == Some(0) {
            return Err("\"max_concurrent\" must be at least 1".into());
        }
        for c in &config.concurrency {
            if !(c.key.starts_with("payload.") || c.key.starts_with("headers."))
                || c.key.ends_with('.')
            {
                return Err(format!(
                    "concurrency key {:?} must start with \"payload.\" or \"headers.\"",
                    c.key
                ));
            }
            if c.limit == 0 {
                return Err(format!(
                    "concurrency limit of {:?} must be at least 1",
                    c.key
                ));
            }
        }
        for k in config.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("invalid environment variable name {k:?}"));
            }
        }
        Ok(config)
    }
}

/// A taskee resolved to something runnable.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub taskee: Taskee,
    /// The entry under `tsk/` (file or directory), absolute.
    pub path: PathBuf,
    /// The working directory of the process.
    pub dir: PathBuf,
    /// The argv to spawn.
    pub argv: Vec<OsString>,
    pub config: Arc<TaskerConfig>,
}

/// Finds taskers under `tsk/`, caching parsed `tasker.json` files by
/// modification time.
#[derive(Debug)]
pub struct Taskers {
    tsk: PathBuf,
    tsk_canonical: Option<PathBuf>,
    configs: HashMap<PathBuf, (SystemTime, u64, Arc<TaskerConfig>)>,
    /// Set when a watcher reports every change under `tsk/` (see
    /// [`Taskers::invalidate`]): resolutions are then cached.
    watched: bool,
    resolved: HashMap<(Domain, Taskee), Resolved>,
}

impl Taskers {
    pub fn new(tsk: PathBuf) -> Taskers {
        let tsk_canonical = tsk.canonicalize().ok();
        Taskers {
            tsk,
            tsk_canonical,
            configs: HashMap::new(),
            watched: false,
            resolved: HashMap::new(),
        }
    }

    /// Caches resolutions until [`invalidate`](Self::invalidate): the
    /// caller watches `tsk/` and calls it on every change there.
    pub fn set_watched(&mut self, watched: bool) {
        self.watched = watched;
        self.invalidate();
    }

    /// Forgets cached resolutions (something under `tsk/` changed).
    pub fn invalidate(&mut self) {
        self.resolved.clear();
        self.configs.clear();
        self.tsk_canonical = None;
    }

    /// Resolves `taskee` for `domain`: `tsk/a.b.c/t`, `tsk/a.b/t`, `tsk/a/t`,
    /// then `tsk/any/t`. Never leaves `tsk/` (a symlink pointing outside is
    /// refused) and never reaches a sibling domain.
    pub fn resolve(&mut self, domain: &Domain, taskee: &Taskee) -> Result<Resolved, TaskerError> {
        if !self.watched {
            return self.resolve_uncached(domain, taskee);
        }
        let key = (domain.clone(), taskee.clone());
        if let Some(r) = self.resolved.get(&key) {
            return Ok(r.clone());
        }
        let r = self.resolve_uncached(domain, taskee)?;
        // Domains come from users: keep the cache bounded. A tasker reached
        // through a symlink changes without an event under tsk/: only one
        // reached without any is cached.
        if self.resolved.len() >= 4096 {
            self.resolved.clear();
        }
        let plain = match (&self.tsk_canonical, r.path.strip_prefix(&self.tsk)) {
            (Some(t), Ok(rel)) => r.path.canonicalize().is_ok_and(|p| p == t.join(rel)),
            _ => false,
        };
        if plain {
            self.resolved.insert(key, r.clone());
        }
        Ok(r)
    }

    fn resolve_uncached(
        &mut self,
        domain: &Domain,
        taskee: &Taskee,
    ) -> Result<Resolved, TaskerError> {
        for dir in domain.branch().chain(std::iter::once("any")) {
            let path = self.tsk.join(dir).join(taskee.as_str());
            match std::fs::symlink_metadata(&path) {
                Ok(_) => return self.load(taskee, path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(TaskerError::Io { path, source }),
            }
        }
        Err(TaskerError::NotFound {
            taskee: taskee.clone(),
            domain: domain.clone(),
        })
    }

    fn load(&mut self, taskee: &Taskee, path: PathBuf) -> Result<Resolved, TaskerError> {
        use std::os::unix::fs::PermissionsExt;
        let real = path.canonicalize().map_err(|source| TaskerError::Io {
            path: path.clone(),
            source,
        })?;
        if self.tsk_canonical.is_none() {
            self.tsk_canonical = self.tsk.canonicalize().ok();
        }
        match &self.tsk_canonical {
            Some(tsk) if real.starts_with(tsk) => {}
            _ => return Err(TaskerError::OutsideTsk(path)),
        }
        let meta = std::fs::metadata(&real).map_err(|source| TaskerError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let config = self.config(&real.join("tasker.json"))?;
            let argv = match config.cmd.as_ref() {
                Some(Cmd::Argv(v)) => {
                    let mut argv: Vec<OsString> = v.iter().map(OsString::from).collect();
                    // A relative program path with a slash is relative to
                    // the tasker's directory.
                    if v[0].contains('/') && !v[0].starts_with('/') {
                        argv[0] = real.join(&v[0]).into_os_string();
                    }
                    argv
                }
                Some(Cmd::Shell(s)) => vec!["/bin/sh".into(), "-c".into(), s.into()],
                None => unreachable!("TaskerConfig::parse requires cmd"),
            };
            Ok(Resolved {
                taskee: taskee.clone(),
                path,
                dir: real,
                argv,
                config,
            })
        } else if meta.is_file() {
            if meta.permissions().mode() & 0o111 == 0 {
                return Err(TaskerError::NotExecutable(path));
            }
            let dir = real.parent().unwrap_or(Path::new("/")).to_path_buf();
            Ok(Resolved {
                taskee: taskee.clone(),
                path,
                dir,
                argv: vec![real.into_os_string()],
                config: Arc::new(TaskerConfig::default()),
            })
        } else {
            Err(TaskerError::Config {
                path,
                message: "neither an executable file nor a directory".into(),
            })
        }
    }

    fn config(&mut self, path: &Path) -> Result<Arc<TaskerConfig>, TaskerError> {
        let io_err = |source| TaskerError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        let mtime = meta.modified().map_err(io_err)?;
        if let Some((m, len, c)) = self.configs.get(path) {
            if *m == mtime && *len == meta.len() {
                return Ok(c.clone());
            }
        }
        let bytes =
            crate::spool::read_capped(path, CONFIG_LIMIT).map_err(|e| TaskerError::Config {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let config =
            Arc::new(
                TaskerConfig::parse(&bytes).map_err(|message| TaskerError::Config {
                    path: path.to_path_buf(),
                    message,
                })?,
            );
        self.configs
            .insert(path.to_path_buf(), (mtime, meta.len(), config.clone()));
        Ok(config)
    }
}

// ---------------------------------------------------------------- reply

/// What a tasker's reply (exit status 0) asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Completed(Object),
    Failed(String),
    Refused(String),
    Uncompleted {
        payload: Object,
        after: Option<Dur>,
    },
    /// Anything else: fails the task (`user`) with this reason.
    Invalid(String),
}

/// Reads stdout by the table of SPEC 6. `payload` is the input payload
/// (kept when the reply carries none).
pub fn parse_reply(stdout: &[u8], payload: &Object) -> Reply {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Reply::Completed(payload.clone());
    }
    let value: Value = match serde_json::from_slice(stdout) {
        Ok(v) => v,
        Err(e) => {
            let head = String::from_utf8_lossy(&stdout[..stdout.len().min(80)]).into_owned();
            return Reply::Invalid(format!("reply is not JSON ({e}): {head:?}"));
        }
    };
    let Value::Object(mut obj) = value else {
        return Reply::Invalid("reply is JSON but not an object".into());
    };
    let Some(point) = obj.remove("point") else {
        return Reply::Completed(obj);
    };
    let payload_of = |obj: &mut Object| -> Result<Object, String> {
        match obj.remove("payload") {
            None | Some(Value::Null) => Ok(payload.clone()),
            Some(Value::Object(o)) => Ok(o),
            Some(_) => Err("reply's \"payload\" is not a JSON object".into()),
        }
    };
    let reason_of = |obj: &Object| -> String {
        match obj.get("reason") {
            Some(Value::String(s)) => s.clone(),
            Some(v) if !v.is_null() => v.to_string(),
            _ => "no reason given".into(),
        }
    };
    match point.as_str() {
        Some("completed") => match payload_of(&mut obj) {
            Ok(p) => Reply::Completed(p),
            Err(e) => Reply::Invalid(e),
        },
        Some("failed") => Reply::Failed(reason_of(&obj)),
        Some("refused") => Reply::Refused(reason_of(&obj)),
        Some("uncompleted") => {
            let after = match obj.get("after") {
                None | Some(Value::Null) => None,
                Some(v) => match Dur::from_json(v) {
                    Ok(d) => Some(d),
                    Err(e) => return Reply::Invalid(format!("reply's \"after\": {e}")),
                },
            };
            match payload_of(&mut obj) {
                Ok(payload) => Reply::Uncompleted { payload, after },
                Err(e) => Reply::Invalid(e),
            }
        }
        Some(other) => Reply::Invalid(format!("reply names unknown point {other:?}")),
        None => Reply::Invalid("reply's \"point\" is not a string".into()),
    }
}

// ---------------------------------------------------------------- running

/// Why the engine stops a running tasker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A cancel request (SPEC 8).
    Cancel,
    /// The engine is stopping (the task stays in `run/`).
    Shutdown,
}

/// What the engine needs to spawn a tasker.
#[derive(Debug)]
pub struct Launch {
    pub argv: Vec<OsString>,
    pub dir: PathBuf,
    pub env: Vec<(String, OsString)>,
    pub stdin: Vec<u8>,
    /// The `.err` file, opened (and created) only if the tasker writes to
    /// stderr.
    pub stderr_path: PathBuf,
    /// Prefix for each stderr line (the task id).
    pub stderr_prefix: String,
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
}

/// How a tasker process ended.
#[derive(Debug)]
pub enum Exit {
    /// It could not be spawned; `transient` for resource shortages.
    SpawnFailed { message: String, transient: bool },
    /// It ran; `status` is its wait status.
    Exited {
        status: ExitStatus,
        stdout: Vec<u8>,
        /// stdout went over [`REPLY_LIMIT`] (the group was killed).
        oversized: bool,
        /// The last lines it wrote on stderr.
        stderr_tail: Vec<String>,
        /// The run timeout fired (the group got SIGTERM, then SIGKILL).
        timed_out: bool,
        /// The engine asked it to stop.
        stopped: Option<StopReason>,
    },
}

/// A spawned tasker: its process group id and the way to stop it.
pub struct Handle {
    pub pgid: i32,
    pub stop: oneshot::Sender<StopReason>,
}

/// Marks every descriptor above 2 close-on-exec, so that taskers inherit
/// none of what the engine's parent left open (SPEC 6). Called once at
/// start-up: the engine's own descriptors are opened close-on-exec by Rust
/// already, and spawning keeps using `posix_spawn` (a `pre_exec` hook that
/// closed descriptors would force a full fork of the engine per task).
pub fn close_inherited_descriptors() {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFD) {
            let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
            let _ = fcntl(fd, FcntlArg::F_SETFD(flags));
        }
    }
}

/// Spawns the tasker. On success returns its handle and a future that
/// drives its I/O and resolves to its [`Exit`]; the caller spawns that
/// future on the runtime.
pub fn spawn(launch: Launch) -> Result<(Handle, impl std::future::Future<Output = Exit>), Exit> {
    let mut cmd = tokio::process::Command::new(&launch.argv[0]);
    cmd.args(&launch.argv[1..])
        .current_dir(&launch.dir)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let transient = matches!(
                e.raw_os_error(),
                Some(nix::libc::EAGAIN | nix::libc::ENOMEM | nix::libc::EMFILE | nix::libc::ENFILE)
            );
            return Err(Exit::SpawnFailed {
                message: format!("cannot spawn {:?}: {e}", launch.argv[0]),
                transient,
            });
        }
    };
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let (stop_tx, stop_rx) = oneshot::channel();
    let fut = drive(child_io(&mut child), child, pid, launch, stop_rx);
    Ok((
        Handle {
            pgid: pid,
            stop: stop_tx,
        },
        fut,
    ))
}

struct ChildIo {
    stdin: Option<tokio::process::ChildStdin>,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
}

fn child_io(child: &mut tokio::process::Child) -> ChildIo {
    ChildIo {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
    }
}

fn signal_group(pgid: i32, sig: Signal) {
    if pgid > 0 {
        // ESRCH (the group is gone) is fine.
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
}

async fn drive(
    io: ChildIo,
    mut child: tokio::process::Child,
    pgid: i32,
    launch: Launch,
    mut stop_rx: oneshot::Receiver<StopReason>,
) -> Exit {
    let Launch {
        stdin: input,
        stderr_path,
        stderr_prefix,
        timeout,
        kill_grace,
        ..
    } = launch;

    // stdin: written concurrently; a tasker that exits without reading is
    // not an error (EPIPE is ignored).
    let writer = async move {
        if let Some(mut stdin) = io.stdin {
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        }
    };
    // stdout: read up to the reply limit.
    let reader = async move {
        let mut buf = Vec::new();
        let mut oversized = false;
        if let Some(stdout) = io.stdout {
            let mut limited = stdout.take(REPLY_LIMIT as u64 + 1);
            let _ = limited.read_to_end(&mut buf).await;
            if buf.len() > REPLY_LIMIT {
                oversized = true;
                buf.clear();
                signal_group(pgid, Signal::SIGKILL);
            }
        }
        (buf, oversized)
    };
    let errors = copy_stderr(io.stderr, stderr_path, stderr_prefix);
    let io_done = async { tokio::join!(writer, reader, errors) };

    let mut timed_out = false;
    let mut stopped = None;
    let mut term_sent_at: Option<tokio::time::Instant> = None;
    let mut killed = false;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut stop_open = true;
    let mut status = None;
    // Once the leader has exited, how long its pipes may stay open (held by
    // a background child) before the rest of its group is killed.
    let mut linger: Option<tokio::time::Instant> = None;

    tokio::pin!(io_done);
    let mut io_result = None;
    while status.is_none() || io_result.is_none() {
        let kill_at = term_sent_at.map(|t| t + kill_grace);
        tokio::select! {
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                linger = Some(tokio::time::Instant::now() + LINGER);
            }
            r = &mut io_done, if io_result.is_none() => { io_result = Some(r); }
            _ = sleep_until(linger), if linger.is_some() => {
                // The leader exited but something still holds its stdout or
                // stderr: end the group; if a process escaped the group, give
                // up on its output.
                if killed {
                    break;
                }
                signal_group(pgid, Signal::SIGKILL);
                killed = true;
                linger = Some(tokio::time::Instant::now() + LINGER);
            }
            _ = sleep_until(deadline), if deadline.is_some() && term_sent_at.is_none() && status.is_none() => {
                timed_out = true;
                signal_group(pgid, Signal::SIGTERM);
                term_sent_at = Some(tokio::time::Instant::now());
            }
            reason = &mut stop_rx, if stop_open => {
                stop_open = false;
                if let Ok(reason) = reason {
                    stopped = Some(reason);
                    if term_sent_at.is_none() && status.is_none() {
                        signal_group(pgid, Signal::SIGTERM);
                        term_sent_at = Some(tokio::time::Instant::now());
                    }
                }
            }
            _ = sleep_until(kill_at), if kill_at.is_some() && !killed => {
                signal_group(pgid, Signal::SIGKILL);
                killed = true;
            }
        }
    }
    // When the engine ended the tasker, nothing of its group outlives it.
    if timed_out || stopped.is_some() {
        signal_group(pgid, Signal::SIGKILL);
    }
    let status = status.expect("the loop ends only after the leader exited");
    let ((), (stdout, oversized), stderr_tail) = io_result.unwrap_or_default();
    match status {
        Ok(status) => Exit::Exited {
            status,
            stdout,
            oversized,
            stderr_tail,
            timed_out,
            stopped,
        },
        Err(e) => Exit::SpawnFailed {
            message: format!("waiting for the tasker failed: {e}"),
            transient: true,
        },
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Copies stderr into the `.err` file, each line prefixed, opening the
/// file only when the first byte arrives. Returns the last lines.
async fn copy_stderr(
    stderr: Option<tokio::process::ChildStderr>,
    path: PathBuf,
    prefix: String,
) -> Vec<String> {
    use std::io::Write;
    let Some(mut stderr) = stderr else {
        return Vec::new();
    };
    let mut lines = StderrLines::new(prefix);
    let mut file: Option<std::fs::File> = None;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stderr.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // One write per chunk read, however many lines it holds.
        let out = lines.push(&chunk[..n], false);
        if !out.is_empty() {
            if file.is_none() {
                file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .ok();
            }
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(&out);
            }
        }
    }
    let out = lines.push(&[], true);
    if !out.is_empty() {
        let f = file.or_else(|| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .ok()
        });
        if let Some(mut f) = f {
            let _ = f.write_all(&out);
        }
    }
    lines.tail.into_iter().collect()
}

/// Splits a tasker's stderr into prefixed lines (long lines cut at
/// [`STDERR_LINE_LIMIT`]) and keeps the last few for a failure's reason.
struct StderrLines {
    prefix: String,
    pending: Vec<u8>,
    tail: VecDeque<String>,
}

impl StderrLines {
    fn new(prefix: String) -> StderrLines {
        StderrLines {
            prefix,
            pending: Vec::new(),
            tail: VecDeque::new(),
        }
    }

    /// Takes bytes read; returns the complete lines among them, prefixed
    /// (with `end`, also the unterminated rest).
    fn push(&mut self, bytes: &[u8], end: bool) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::with_capacity(self.pending.len() + 64);
        let mut start = 0;
        let data = std::mem::take(&mut self.pending);
        loop {
            let rest = &data[start..];
            let cut = match rest.iter().position(|b| *b == b'\n') {
                Some(i) if i <= STDERR_LINE_LIMIT => Some((i, i + 1)),
                _ if rest.len() > STDERR_LINE_LIMIT => Some((STDERR_LINE_LIMIT, STDERR_LINE_LIMIT)),
                _ if end && !rest.is_empty() => Some((rest.len(), rest.len())),
                _ => None,
            };
            let Some((len, consumed)) = cut else { break };
            let line = &rest[..len];
            out.extend_from_slice(self.prefix.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(line);
            out.push(b'\n');
            if self.tail.len() == STDERR_TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail
                .push_back(String::from_utf8_lossy(&line[..line.len().min(512)]).into_owned());
            start += consumed;
        }
        self.pending = data[start..].to_vec();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn reply_table() {
        let p = obj(json!({"a": 1}));
        assert_eq!(parse_reply(b"", &p), Reply::Completed(p.clone()));
        assert_eq!(parse_reply(b" \n", &p), Reply::Completed(p.clone()));
        assert_eq!(
            parse_reply(br#"{"b":2}"#, &p),
            Reply::Completed(obj(json!({"b": 2})))
        );
        assert_eq!(
            parse_reply(br#"{"point":"completed","payload":{"c":3}}"#, &p),
            Reply::Completed(obj(json!({"c": 3})))
        );
        assert_eq!(
            parse_reply(br#"{"point":"completed"}"#, &p),
            Reply::Completed(p.clone())
        );
        assert_eq!(
            parse_reply(br#"{"point":"failed","reason":"no ink"}"#, &p),
            Reply::Failed("no ink".into())
        );
        assert_eq!(
            parse_reply(br#"{"point":"refused","reason":"busy"}"#, &p),
            Reply::Refused("busy".into())
        );
        assert_eq!(
            parse_reply(
                br#"{"point":"uncompleted","payload":{"n":1},"after":"30s"}"#,
                &p
            ),
            Reply::Uncompleted {
                payload: obj(json!({"n": 1})),
                after: Some(Dur(Duration::from_secs(30)))
            }
        );
        for bad in [
            &b"hello"[..],
            b"[1,2]",
            b"42",
            br#"{"point":"exploded"}"#,
            br#"{"point":7}"#,
            br#"{"point":"completed","payload":"x"}"#,
            br#"{"point":"uncompleted","after":"soon"}"#,
            b"{\"a\":1} trailing",
        ] {
            assert!(matches!(parse_reply(bad, &p), Reply::Invalid(_)), "{bad:?}");
        }
    }

    #[test]
    fn stderr_lines_are_prefixed_cut_and_tailed() {
        let mut l = StderrLines::new("t1".into());
        assert_eq!(l.push(b"one\ntw", false), b"t1: one\n");
        assert_eq!(l.push(b"o\n\nthree", false), b"t1: two\nt1: \n");
        assert_eq!(l.push(b"", true), b"t1: three\n");
        assert_eq!(l.tail, ["one", "two", "", "three"]);
        let long = vec![b'x'; STDERR_LINE_LIMIT + 10];
        let out = l.push(&long, false);
        assert_eq!(out.len(), 4 + STDERR_LINE_LIMIT + 1);
        assert_eq!(l.push(b"", true).len(), 4 + 10 + 1);
        assert_eq!(l.tail.len(), STDERR_TAIL_LINES);
    }

    #[test]
    fn tasker_json_is_validated() {
        let c = TaskerConfig::parse(
            br#"{"cmd":["python3","stamp.py"],"in":"task","timeout":"30s","start_timeout":"10m",
                "retries":3,"retry_on_timeout":false,"max_concurrent":4,
                "concurrency":[{"key":"payload.book","limit":1}],"env":{"LANG":"C.UTF-8"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.cmd,
            Some(Cmd::Argv(vec!["python3".into(), "stamp.py".into()]))
        );
        assert_eq!(c.input, Input::Task);
        assert_eq!(c.max_concurrent, Some(4));
        assert_eq!(c.concurrency[0].limit, 1);
        assert_eq!(c.env["LANG"], "C.UTF-8");
        let c = TaskerConfig::parse(br#"{"cmd":"echo hi"}"#).unwrap();
        assert_eq!(c.cmd, Some(Cmd::Shell("echo hi".into())));
        assert_eq!(c.input, Input::Payload);
        for bad in [
            &br#"{}"#[..],
            br#"{"cmd":[]}"#,
            br#"{"cmd":"x","colour":1}"#,
            br#"{"cmd":"x","in":"stdin"}"#,
            br#"{"cmd":"x","max_concurrent":0}"#,
            br#"{"cmd":"x","concurrency":[{"key":"book","limit":1}]}"#,
            br#"{"cmd":"x","timeout":"soon"}"#,
            br#"{"cmd":"x","env":{"A=B":"c"}}"#,
        ] {
            assert!(
                TaskerConfig::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
