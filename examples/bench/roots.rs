//! Temporary bench roots (a `cat` tasker under `tsk/bench/`) and running
//! the engine in-process on them.

use super::*;

// ================================================================ roots

/// The directory new roots are made in (the filesystem being measured).
static BASE: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Makes every later root under `dir`.
pub fn set_base(dir: &Path) {
    *BASE.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.to_path_buf());
}

fn base() -> PathBuf {
    BASE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(std::env::temp_dir)
}

/// A temporary root with `tsk/bench/cat`.
pub struct BenchRoot {
    pub _tmp: tempfile::TempDir,
    pub root: Root,
}

impl BenchRoot {
    pub fn new() -> BenchResult<BenchRoot> {
        let tmp = tempfile::Builder::new()
            .prefix("spoolflow-bench.")
            .tempdir_in(base())
            .map_err(|e| format!("cannot create a temporary root: {e}"))?;
        let root = Root::new(tmp.path()).map_err(|e| e.to_string())?;
        root.init().map_err(|e| e.to_string())?;
        let dir = root.tsk().join("bench");
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let cat = dir.join("cat");
        fs::write(&cat, "#!/bin/sh\ncat\n").map_err(|e| e.to_string())?;
        fs::set_permissions(&cat, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        Ok(BenchRoot { _tmp: tmp, root })
    }

    pub fn tasker(&self) -> PathBuf {
        self.root.tsk().join("bench/cat")
    }

    /// Drops task `i` into `in/` (a dotfile temporary, then a rename) and
    /// returns its id.
    pub fn drop_task(&self, i: usize) -> BenchResult<String> {
        let id = format!("t{i:07}");
        let dir = self.root.spool_in();
        let tmp = dir.join(format!(".{id}.tmp"));
        let body = format!(r#"{{"domain":"bench","tasker":"cat","payload":{{"n":{i}}}}}"#);
        fs::write(&tmp, body).map_err(|e| format!("write {}: {e}", tmp.display()))?;
        fs::rename(&tmp, dir.join(format!("{id}.json")))
            .map_err(|e| format!("rename {}: {e}", tmp.display()))?;
        Ok(id)
    }

    pub fn count(&self, dir: &Path) -> usize {
        count_files(dir)
    }

    /// Fails unless `done/` holds `expect` records and `failed/` and
    /// `rejected/` are empty.
    pub fn verify_done(&self, expect: usize, what: &str) -> BenchResult<()> {
        let done = self.count(&self.root.done());
        let failed = self.count(&self.root.failed());
        let rejected = self.count(&self.root.rejected());
        if done != expect || failed != 0 || rejected != 0 {
            let sample = fs::read_dir(self.root.failed())
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok())
                .and_then(|e| fs::read_to_string(e.path()).ok())
                .unwrap_or_default();
            return Err(format!(
                "{what}: expected {expect} records in done/, found {done} (failed/ {failed}, \
                 rejected/ {rejected}, in/ {}, run/ {}){}",
                self.count(&self.root.spool_in()),
                self.count(&self.root.run()),
                if sample.is_empty() {
                    String::new()
                } else {
                    format!("; a failed record: {sample}")
                }
            ));
        }
        Ok(())
    }
}

/// Entries of a directory, temporaries (dotfiles) excluded.
pub fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

// ================================================================ engine runs

/// Runs the engine on another thread; `Ok` once it returned.
pub fn spawn_engine(
    root: Root,
    options: Options,
    stop: Option<tokio::sync::mpsc::UnboundedReceiver<StopRequest>>,
) -> std_mpsc::Receiver<Result<(), String>> {
    let (tx, rx) = std_mpsc::channel();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let r = spoolflow::engine::run_blocking(root, options, stop);
            let _ = tx.send(r.map_err(|e| e.to_string()));
        })
        .expect("spawn the engine thread");
    rx
}

pub fn join_engine(
    rx: &std_mpsc::Receiver<Result<(), String>>,
    deadline: Duration,
) -> BenchResult<()> {
    match rx.recv_timeout(deadline) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("engine failed: {e}")),
        Err(_) => Err(format!("engine did not return within {deadline:?}")),
    }
}

pub fn options(workers: usize, drain: bool) -> Options {
    Options {
        workers,
        drain,
        ..Options::default()
    }
}
