//! Resolving a taskee to something runnable under `tsk/` (SPEC section 6):
//! the lookup up the domain's branch, then `tsk/any/`; an executable file
//! or a directory with a `tasker.json`; never a path outside `tsk/`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::config::{Cmd, TaskerConfig};
use crate::lookup::Lookups;
use crate::model::names::{Domain, Taskee};

/// Why a taskee could not be resolved or configured (the task fails
/// `config`).
#[derive(Debug, thiserror::Error)]
pub enum TaskerError {
    #[error("no tasker {} for domain {domain} (looked in tsk/{domain} up its branch and in tsk/any)", crate::text::quoted(.taskee.as_str()))]
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
    /// Resolutions, cached while a watcher reports every change under
    /// `tsk/` (see [`Taskers::invalidate`]).
    resolved: Lookups<(Domain, Taskee), Resolved>,
}

impl Taskers {
    pub fn new(tsk: PathBuf) -> Taskers {
        let tsk_canonical = tsk.canonicalize().ok();
        Taskers {
            tsk,
            tsk_canonical,
            configs: HashMap::new(),
            resolved: Lookups::default(),
        }
    }

    /// Caches resolutions until [`invalidate`](Self::invalidate): the
    /// caller watches `tsk/` and calls it on every change there.
    pub fn set_watched(&mut self, watched: bool) {
        self.resolved.set_watched(watched);
        self.invalidate();
    }

    /// A resolution the cache holds, without touching the disk.
    pub fn cached(&self, domain: &Domain, taskee: &Taskee) -> Option<Resolved> {
        self.resolved.get(&(domain.clone(), taskee.clone()))
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
        if !self.resolved.is_watched() {
            return self.resolve_uncached(domain, taskee);
        }
        let key = (domain.clone(), taskee.clone());
        if let Some(r) = self.resolved.get(&key) {
            return Ok(r);
        }
        let r = self.resolve_uncached(domain, taskee)?;
        // A tasker reached through a symlink changes without an event under
        // tsk/: only one reached without any is cached.
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
            let Some(cmd) = config.cmd.as_ref() else {
                return Err(TaskerError::Config {
                    path,
                    message: "missing key \"cmd\"".into(),
                });
            };
            let argv = match cmd {
                Cmd::Argv(v) => {
                    let mut argv: Vec<OsString> = v.iter().map(OsString::from).collect();
                    // A relative program path with a slash is relative to
                    // the tasker's directory.
                    if v[0].contains('/') && !v[0].starts_with('/') {
                        argv[0] = real.join(&v[0]).into_os_string();
                    }
                    argv
                }
                Cmd::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.into()],
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
        // Read as `check` reads it: through a link (`tsk/` is the
        // operator's), only a regular file, never waiting on a FIFO.
        let limit = crate::userfile::CONFIG_LIMIT;
        let bytes = crate::userfile::read(path, limit).map_err(|e| TaskerError::Config {
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
