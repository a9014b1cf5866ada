//! Test support: [`TestRoot`], a spoolflow root in a temporary directory,
//! with helpers to write taskmasters and taskers (real scripts), drop task
//! files, run the engine (in-process or as the built binary), and wait for
//! conditions with a deadline (never a sleep as synchronisation).

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use spoolflow::{Options, Root};

pub mod slurm;

/// The deadline used by most waits: generous, since a loaded CI machine
/// is slow, and a passing test never waits for it.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` until it holds or `deadline` passes; panics with `what`
/// then.
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(2);
    while !cond() {
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

pub struct TestRoot {
    pub tmp: tempfile::TempDir,
    pub root: Root,
}

impl TestRoot {
    pub fn new() -> TestRoot {
        TestRoot::named("")
    }

    /// A root whose directory's name begins with `prefix` (a space, a
    /// `%`: what a path may hold).
    pub fn named(prefix: &str) -> TestRoot {
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("tempdir");
        let root = Root::new(tmp.path()).expect("root");
        root.init().expect("init");
        TestRoot { tmp, root }
    }

    pub fn path(&self) -> &Path {
        self.root.dir()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.root.dir().join(rel)
    }

    /// The lines of a file under the root (none when it is absent).
    pub fn lines_of(&self, rel: &str) -> Vec<String> {
        fs::read_to_string(self.join(rel))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Writes an executable file at `tsk/<domain>/<name>`.
    pub fn tasker(&self, domain: &str, name: &str, script: &str) -> PathBuf {
        let dir = self.root.tsk().join(domain);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        write_executable(&path, script);
        path
    }

    /// Writes a tasker directory `tsk/<domain>/<name>/` with a
    /// `tasker.json` and the given (executable) files.
    pub fn tasker_dir(
        &self,
        domain: &str,
        name: &str,
        config: &str,
        files: &[(&str, &str)],
    ) -> PathBuf {
        let dir = self.root.tsk().join(domain).join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("tasker.json"), config).unwrap();
        for (f, body) in files {
            write_executable(&dir.join(f), body);
        }
        dir
    }

    /// Writes `tsk/<domain>/taskmaster.rhai`.
    pub fn taskmaster(&self, domain: &str, script: &str) {
        let dir = self.root.tsk().join(domain);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("taskmaster.rhai"), script).unwrap();
    }

    /// Drops a task file into `in/` the safe way (temporary, then rename).
    pub fn drop_task(&self, name: &str, json: &str) -> PathBuf {
        self.drop_bytes("", name, json.as_bytes())
    }

    /// Drops a task file into `in/<domain>/`.
    pub fn drop_task_in(&self, domain: &str, name: &str, json: &str) -> PathBuf {
        self.drop_bytes(domain, name, json.as_bytes())
    }

    /// Drops raw bytes as `in/[sub/]name` (temporary, then rename).
    pub fn drop_bytes(&self, sub: &str, name: &str, bytes: &[u8]) -> PathBuf {
        let dir = if sub.is_empty() {
            self.root.spool_in()
        } else {
            self.root.spool_in().join(sub)
        };
        fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, bytes).unwrap();
        let dst = dir.join(name);
        fs::rename(&tmp, &dst).unwrap();
        dst
    }

    /// Runs the engine in-process with `--drain` and the given workers;
    /// panics if it does not drain within the deadline.
    pub fn run_drain(&self, workers: usize) {
        self.run_drain_with(Options {
            workers,
            drain: true,
            ..Options::default()
        });
    }

    pub fn run_drain_with(&self, options: Options) {
        let root = self.root.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = spoolflow::engine::run_blocking(root, options, None);
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("engine failed: {e}"),
            Err(_) => panic!("engine did not drain within 60s"),
        }
    }

    /// Starts the engine in-process in a background thread (no drain);
    /// stop it with [`InProcessEngine::stop`].
    pub fn start_in_process(&self, options: Options) -> InProcessEngine {
        let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
        let root = self.root.clone();
        let thread = std::thread::spawn(move || {
            spoolflow::engine::run_blocking(root, options, Some(stop_rx)).map_err(|e| e.to_string())
        });
        InProcessEngine { stop_tx, thread }
    }

    /// The built binary with `--root` set.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_spoolflow"));
        c.arg("--root").arg(self.path());
        c.env_remove("SPOOLFLOW_ROOT");
        c
    }

    /// `spoolflow run ARGS` ready to spawn: stdin and stdout closed,
    /// stderr kept (see [`EngineProcess::wait`]); more may be set on it.
    pub fn run_command(&self, args: &[&str]) -> Command {
        let mut c = self.cmd();
        c.arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    /// Starts `spoolflow run` (the binary) with extra arguments.
    pub fn spawn_engine(&self, args: &[&str]) -> EngineProcess {
        EngineProcess::spawn(&mut self.run_command(args))
    }

    /// Starts `spoolflow run` without colour, with `SPOOLFLOW_FAULT` set
    /// to `fault` (`None`: unset).
    pub fn spawn_engine_with_fault(&self, fault: Option<&str>, args: &[&str]) -> EngineProcess {
        let mut cmd = self.run_command(args);
        match fault {
            Some(f) => cmd.env("SPOOLFLOW_FAULT", f),
            None => cmd.env_remove("SPOOLFLOW_FAULT"),
        };
        EngineProcess::spawn(cmd.env("NO_COLOR", "1"))
    }

    /// The final record of `id` (from `done/` or `failed/`), if written.
    pub fn record(&self, id: &str) -> Option<Value> {
        for dir in ["done", "failed"] {
            let p = self.join(&format!("var/spool/{dir}/{id}.json"));
            if let Ok(b) = fs::read(&p) {
                return Some(serde_json::from_slice(&b).expect("record is JSON"));
            }
        }
        None
    }

    /// The progress of flow `id` as a restart reads it (the `progress` of
    /// its `run/` file, then its journal); `None` when it is not in `run/`
    /// or has no progress yet.
    #[allow(dead_code)]
    pub fn flow_progress(&self, id: &str) -> Option<Value> {
        let bytes = fs::read(self.join(&format!("var/spool/run/{id}.json"))).ok()?;
        let file: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("run/{id}.json is not JSON ({e})"));
        let id = id.parse().expect("a task id");
        let progress =
            spoolflow::store::flows::load_progress(&self.root, &id, file.get("progress").cloned())
                .unwrap_or_else(|e| panic!("the progress of {id} does not read: {e}"))?;
        Some(serde_json::to_value(progress).expect("progress serializes"))
    }

    /// The final record of `id`, panicking when absent.
    pub fn must_record(&self, id: &str) -> Value {
        self.record(id).unwrap_or_else(|| {
            panic!(
                "no record for {id}; points: {:#?}; rejected: {:?}",
                self.points(id),
                self.list("var/spool/rejected")
            )
        })
    }

    /// The record of a cancelled task or flow (`reason`, the cancel
    /// request's), checked: `aborted`, in `failed/`, its `run/` file gone.
    pub fn must_cancelled_record(&self, id: &str, reason: &str) -> Value {
        let rec = self.must_record(id);
        assert_eq!(rec["state"], "aborted", "{rec:#}");
        assert_eq!(rec["error"]["kind"], "aborted", "{rec:#}");
        assert_eq!(rec["reason"], reason, "{rec:#}");
        assert!(self.join(&format!("var/spool/failed/{id}.json")).exists());
        assert!(!self.join(&format!("var/spool/run/{id}.json")).exists());
        rec
    }

    /// The points of an execution, parsed.
    pub fn points(&self, exid: &str) -> Vec<Value> {
        let p = self.join(&format!("var/log/tsk/{exid}.log"));
        let Ok(text) = fs::read_to_string(p) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| serde_json::from_str(l).expect("point is JSON"))
            .collect()
    }

    /// The points of `exid` named `name`.
    pub fn points_named(&self, exid: &str, name: &str) -> Vec<Value> {
        self.points(exid)
            .into_iter()
            .filter(|p| p["point"] == name)
            .collect()
    }

    /// The one-line reason of `rejected/<name>`, without its newline;
    /// panics unless it is one non-empty line ending in a newline.
    pub fn reason(&self, name: &str) -> String {
        let r = self.rejected_reason(name).unwrap_or_else(|| {
            panic!(
                "no rejected/{name}.reason; rejected: {:?}",
                self.list("var/spool/rejected")
            )
        });
        assert!(
            r.ends_with('\n'),
            "reason of {name} ends with a newline: {r:?}"
        );
        let line = r.trim_end_matches('\n');
        assert!(!line.is_empty(), "reason of {name} is not empty");
        assert!(
            !line.contains('\n') && !line.contains('\r'),
            "reason of {name} is one line: {r:?}"
        );
        line.to_string()
    }

    /// The point names of an execution, in order.
    pub fn point_names(&self, exid: &str) -> Vec<String> {
        names_of(&self.points(exid))
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// The `.reason` of `rejected/<name>`.
    pub fn rejected_reason(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.join(&format!("var/spool/rejected/{name}.reason"))).ok()
    }

    /// Sorted file names in a directory relative to the root.
    pub fn list(&self, rel: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.join(rel))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// The `point` names of parsed points, in order.
pub fn names_of(points: &[Value]) -> Vec<&str> {
    points
        .iter()
        .map(|p| p["point"].as_str().expect("a point names itself"))
        .collect()
}

/// Whether process `pid` is gone: absent, or a zombie nobody reaped yet.
pub fn process_gone(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the command name, which is in parentheses and may
    // hold anything: look after the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    matches!(state, Some('Z') | Some('X') | None)
}

/// Pids of live (not zombie) processes whose environment carries
/// `SPOOLFLOW_ROOT=<root>`: taskers of that root and what they started.
pub fn processes_of(root: &Path) -> Vec<i32> {
    let mut want = b"SPOOLFLOW_ROOT=".to_vec();
    want.extend_from_slice(root.as_os_str().as_encoded_bytes());
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(env) = fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == want.as_slice()) && !process_gone(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Every tasker of the engines killed on `root` is gone (an engine's
/// start kills a dead engine's taskers), within 5 s.
pub fn assert_taskers_gone(root: &Path) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_of(root);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < end,
            "tasker processes of killed engines still run: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tasker script that appends `count` `progress` points of about
/// `pad` + 40 bytes to `$SPOOLFLOW_POINTS`, runs the shell fragment
/// `then`, and replies `{}`.
pub fn chatty_script(count: usize, pad: usize, then: &str) -> String {
    format!(
        "#!/bin/sh\ncat >/dev/null\n\
         awk 'BEGIN {{ for (i = 0; i < {count}; i++) printf \"{{\\\"point\\\":\\\"progress\\\",\\\"i\\\":%d,\\\"pad\\\":\\\"%0{pad}d\\\"}}\\n\", i, 0 }}' >> \"$SPOOLFLOW_POINTS\"\n\
         {then}\necho '{{}}'\n"
    )
}

/// A shell fragment that waits (at most ~20 s) until
/// `$SPOOLFLOW_ROOT/<rel>` exists, so that a test that fails early never
/// leaves a tasker behind for long.
pub fn wait_file(rel: &str) -> String {
    format!(
        r#"i=0; while [ ! -e "$SPOOLFLOW_ROOT/{rel}" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done"#
    )
}

pub fn write_executable(path: &Path, body: &str) {
    fs::write(path, body).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// An engine running in a thread of the test process.
pub struct InProcessEngine {
    stop_tx: tokio::sync::mpsc::UnboundedSender<spoolflow::StopRequest>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl InProcessEngine {
    /// Asks for a graceful stop and waits for the engine to end.
    pub fn stop(self) {
        self.stop_tx
            .send(spoolflow::StopRequest::Graceful)
            .expect("the engine is running");
        self.thread
            .join()
            .expect("the engine thread did not panic")
            .expect("the engine stopped cleanly");
    }
}

/// A `spoolflow run` process; killed (SIGKILL) when dropped.
pub struct EngineProcess {
    pub child: Child,
}

impl EngineProcess {
    /// Spawns `cmd` (see [`TestRoot::run_command`]).
    pub fn spawn(cmd: &mut Command) -> EngineProcess {
        let child = cmd.spawn().expect("spawn spoolflow run");
        EngineProcess { child }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .expect("signal the engine");
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Waits for the process to exit (within the deadline); returns its
    /// exit code and stderr.
    pub fn wait(mut self, deadline: Duration) -> (Option<i32>, String) {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return (status.code(), err);
            }
            if Instant::now() > end {
                panic!("engine did not exit within {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary; gives (exit code, stdout, stderr).
pub fn sf(t: &TestRoot, args: &[&str]) -> (i32, String, String) {
    let out = t
        .cmd()
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run spoolflow");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary and parses what it printed as JSON (it must exit 0).
pub fn json_of(t: &TestRoot, args: &[&str]) -> Value {
    let (code, out, err) = sf(t, args);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// Runs a command to its end, failing the test if it takes longer than
/// `deadline` (it is killed then).
pub fn output_within(mut c: Command, deadline: Duration) -> std::process::Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spoolflow");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{c:?} did not end within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}
