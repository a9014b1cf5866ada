//! Taskmasters (SPEC section 5): finding a domain's `taskmaster.rhai`, the
//! cache of compiled scripts, and
//! [`Taskmasters::choose`], which runs a task's taskmaster and returns the
//! taskee it chose (or its rejection of the task).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rhai::{Dynamic, Engine, EvalAltResult, Position, Scope, AST, INT};

use crate::sandbox::{
    limit_exceeded, lowercase_first, sandbox_engine, shorten, with_deadline, RUN_DEADLINE,
};

use crate::lookup::Lookups;
use crate::model::names::{Domain, Nid, TaskId, Taskee};
use crate::model::task::{Object, Refusal};
use crate::userfile::{self, CONFIG_LIMIT};

/// What a taskmaster sees of a task.
#[derive(Debug, Clone, Copy)]
pub struct TaskmasterInput<'a> {
    pub id: &'a TaskId,
    pub exid: &'a TaskId,
    pub nid: &'a Nid,
    pub domain: &'a Domain,
    /// The requested taskee (`tasker` in the task file).
    pub tasker: Option<&'a Taskee>,
    /// 1 on the first attempt.
    pub attempt: u32,
    /// Offers made before this one.
    pub offers: u32,
    pub headers: &'a Object,
    pub refusals: &'a [Refusal],
    pub payload: &'a Object,
}

/// A taskmaster's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Offer the task to this taskee.
    Taskee(Taskee),
    /// `reject(reason)`: fail the task (`error.kind` `config`).
    Reject(String),
}

/// Why no taskee could be chosen; the engine fails the task `config` with
/// this message. `path` is the script's path relative to the root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskmasterError {
    #[error("{path}: cannot read: {message}")]
    Read { path: String, message: String },
    #[error("{path}: syntax error: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: script error: {message}")]
    Script { path: String, message: String },
    #[error("{path}: exceeded the sandbox's {limit}")]
    Limit { path: String, limit: String },
    #[error("{path}: chose invalid taskee {}: a taskee is [A-Za-z0-9][A-Za-z0-9_-]{{0,63}} (no dot, no slash)", crate::text::quoted(.taskee))]
    InvalidTaskee { path: String, taskee: String },
    #[error("{path}: `_taskee_` must be a string, not {type_name}")]
    TaskeeNotString { path: String, type_name: String },
    #[error("{path}: the taskmaster evaluated to {value}; expected a taskee name or nothing")]
    NotATaskee { path: String, value: String },
    #[error("{path}: chose no taskee and the task requested no tasker")]
    NoChoice { path: String },
    #[error("no taskmaster and no requested tasker for domain {0}")]
    NoTaskee(Domain),
}

/// The token `reject(reason)` terminates a script with. Termination cannot
/// be caught by a script's `try`/`catch`, and no script can build this type.
#[derive(Debug, Clone)]
struct Rejected(String);

/// The outcome of a run that did not finish normally: a rejection, or an
/// error.
fn classify(path: &str, err: &EvalAltResult) -> Result<Choice, TaskmasterError> {
    if let EvalAltResult::ErrorTerminated(token, _) = err.unwrap_inner() {
        if let Some(Rejected(reason)) = token.clone().try_cast::<Rejected>() {
            return Ok(Choice::Reject(reason));
        }
    }
    Err(match limit_exceeded(err) {
        Some(limit) => TaskmasterError::Limit {
            path: path.to_string(),
            limit,
        },
        None => TaskmasterError::Script {
            path: path.to_string(),
            message: lowercase_first(&err.to_string()),
        },
    })
}

// ---------------------------------------------------------------- taskmasters

/// What identifies a version of a script file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
    ino: u64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            mtime: m.modified().ok(),
            len: m.len(),
            ino: m.ino(),
        }
    }
}

struct Cached {
    stamp: Stamp,
    compiled: Result<Arc<AST>, TaskmasterError>,
    /// Neither the file nor a directory on its way is a symlink (changes
    /// to it are seen by the watch on tsk/).
    plain: bool,
}

/// Whether `path` (under `tsk`) is reached without a symlink.
fn is_plain(tsk: &Path, path: &Path) -> bool {
    match (tsk.canonicalize(), path.canonicalize()) {
        (Ok(t), Ok(p)) => path.strip_prefix(tsk).is_ok_and(|rel| t.join(rel) == p),
        _ => false,
    }
}

/// The taskmasters of a root: one sandboxed engine and the compiled scripts
/// of `tsk/*/taskmaster.rhai`, recompiled when a file changes.
///
/// Finding and compiling ([`prepare`](Self::prepare)) needs `&mut self`;
/// running ([`Script::choose`]) does not, so several threads can share one
/// `Taskmasters` behind a lock held only while preparing, and a script
/// that runs for its whole deadline holds up nobody else.
pub struct Taskmasters {
    root: PathBuf,
    tsk: PathBuf,
    engine: Arc<Engine>,
    cache: HashMap<PathBuf, Cached>,
    /// Which script serves a domain; trusted while `tsk/` is watched (see
    /// [`Taskmasters::invalidate`]), and so are compiled scripts.
    found: Lookups<Domain, Option<PathBuf>>,
}

impl std::fmt::Debug for Taskmasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taskmasters")
            .field("tsk", &self.tsk)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

/// A domain's compiled taskmaster, ready to run on any thread.
#[derive(Clone)]
pub struct Script {
    engine: Arc<Engine>,
    ast: Arc<AST>,
    label: String,
}

impl Taskmasters {
    /// Taskmasters live under `root_dir/tsk`.
    pub fn new(root_dir: &Path) -> Taskmasters {
        let mut engine = sandbox_engine();
        engine.register_fn(
            "reject",
            |reason: &str| -> Result<Dynamic, Box<EvalAltResult>> {
                Err(EvalAltResult::ErrorTerminated(
                    Dynamic::from(Rejected(reason.to_string())),
                    Position::NONE,
                )
                .into())
            },
        );
        Taskmasters {
            root: root_dir.to_path_buf(),
            tsk: root_dir.join("tsk"),
            engine: Arc::new(engine),
            cache: HashMap::new(),
            found: Lookups::default(),
        }
    }

    /// Trusts cached lookups until [`invalidate`](Self::invalidate): the
    /// caller watches `tsk/` and calls it on every change there.
    pub fn set_watched(&mut self, watched: bool) {
        self.found.set_watched(watched);
        self.invalidate();
    }

    /// Forgets cached lookups and stamps (something under `tsk/` changed).
    pub fn invalidate(&mut self) {
        self.found.clear();
        for c in self.cache.values_mut() {
            c.stamp.mtime = None;
            c.stamp.len = u64::MAX;
        }
    }

    /// Whether the cache knows, without touching the disk, that `domain`
    /// has no taskmaster (its tasks go to their requested tasker).
    pub fn known_absent(&self, domain: &Domain) -> bool {
        matches!(self.found.get(domain), Some(None))
    }

    /// [`find`](Self::find), cached while watched.
    fn find_cached(&mut self, domain: &Domain) -> Option<PathBuf> {
        if let Some(found) = self.found.get(domain) {
            return found;
        }
        let found = self.find(domain);
        // A script reached through a symlink changes without an event under
        // tsk/: only a plain file is trusted until invalidated.
        if found.as_ref().is_none_or(|p| is_plain(&self.tsk, p)) {
            self.found.insert(domain.clone(), found.clone());
        }
        found
    }

    /// The taskmaster of `domain`: the first file of
    /// `tsk/a.b.c/taskmaster.rhai`, `tsk/a.b/…`, `tsk/a/…`, `tsk/any/…`.
    pub fn find(&self, domain: &Domain) -> Option<PathBuf> {
        domain
            .branch()
            .chain(std::iter::once("any"))
            .map(|d| self.tsk.join(d).join("taskmaster.rhai"))
            // Whatever stands at the path (a directory, a FIFO, a dangling
            // link) is this domain's taskmaster, and fails its tasks
            // `config` when it cannot be read: never skipped for the next.
            .find(|p| p.symlink_metadata().is_ok())
    }

    /// How a script is named in messages: relative to the root when it lies
    /// inside it.
    fn label(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// Reads and compiles a script. The outer error is a file that cannot
    /// be opened; the stamp is that of the version read.
    fn load(
        engine: &Engine,
        path: &Path,
        label: &str,
    ) -> Result<(Stamp, Result<AST, TaskmasterError>), TaskmasterError> {
        let read_err = |e: &dyn std::fmt::Display| TaskmasterError::Read {
            path: label.to_string(),
            message: e.to_string(),
        };
        let file = userfile::open(path).map_err(|e| read_err(&e))?;
        let stamp = Stamp::of(&file.metadata().map_err(|e| read_err(&e))?);
        let mut source = String::new();
        if let Err(e) = file.take(CONFIG_LIMIT + 1).read_to_string(&mut source) {
            return Ok((stamp, Err(read_err(&e))));
        }
        // A longer script is refused whole: running the first 4 MiB of
        // it would run another script.
        if source.len() as u64 > CONFIG_LIMIT {
            let e = userfile::UserFileError::TooLarge {
                limit: CONFIG_LIMIT,
            };
            return Ok((stamp, Err(read_err(&e))));
        }
        let compiled = engine
            .compile(&source)
            .map(|mut ast| {
                ast.set_source(label);
                ast
            })
            .map_err(|e| TaskmasterError::Syntax {
                path: label.to_string(),
                message: lowercase_first(&e.to_string()),
            });
        Ok((stamp, compiled))
    }

    /// The compiled script at `path`, from the cache unless the file changed.
    fn compiled(&mut self, path: &Path, label: &str) -> Result<Arc<AST>, TaskmasterError> {
        // While watched, an entry is fresh until invalidated (which spoils
        // its stamp); otherwise the file's stamp is compared.
        let watched = self.found.is_watched();
        let fresh = match self.cache.get(path) {
            Some(c) if watched && c.stamp.len != u64::MAX && c.plain => true,
            Some(c) => std::fs::metadata(path)
                .ok()
                .is_some_and(|m| Stamp::of(&m) == c.stamp),
            None => false,
        };
        if !fresh {
            match Self::load(&self.engine, path, label) {
                Ok((stamp, compiled)) => {
                    let plain = is_plain(&self.tsk, path);
                    self.cache.insert(
                        path.to_path_buf(),
                        Cached {
                            stamp,
                            compiled: compiled.map(Arc::new),
                            plain,
                        },
                    );
                }
                Err(e) => {
                    self.cache.remove(path);
                    return Err(e);
                }
            }
        }
        match &self.cache[path].compiled {
            Ok(ast) => Ok(ast.clone()),
            Err(e) => Err(e.clone()),
        }
    }

    /// The compiled taskmaster of `domain`, or `None` when it has none
    /// (the requested tasker stands).
    pub fn prepare(&mut self, domain: &Domain) -> Result<Option<Script>, TaskmasterError> {
        let Some(path) = self.find_cached(domain) else {
            return Ok(None);
        };
        let label = self.label(&path);
        let ast = self.compiled(&path, &label)?;
        Ok(Some(Script {
            engine: self.engine.clone(),
            ast,
            label,
        }))
    }

    /// Runs the taskmaster of `input.domain` and returns its choice; without
    /// a taskmaster, the requested tasker.
    pub fn choose(&mut self, input: &TaskmasterInput) -> Result<Choice, TaskmasterError> {
        match self.prepare(input.domain)? {
            Some(script) => script.choose(input),
            None => requested(input),
        }
    }

    /// Compiles the script at `path` without running it (`spoolflow check`).
    pub fn check(&self, path: &Path) -> Result<(), TaskmasterError> {
        let label = self.label(path);
        Self::load(&self.engine, path, &label)?.1.map(|_| ())
    }
}

/// The choice when a domain has no taskmaster: the requested tasker.
pub fn requested(input: &TaskmasterInput) -> Result<Choice, TaskmasterError> {
    input
        .tasker
        .cloned()
        .map(Choice::Taskee)
        .ok_or_else(|| TaskmasterError::NoTaskee(input.domain.clone()))
}

impl Script {
    /// Runs the script (within the sandbox's deadline) and returns its
    /// choice; a script that chooses nothing leaves the requested tasker.
    pub fn choose(&self, input: &TaskmasterInput) -> Result<Choice, TaskmasterError> {
        let label = &self.label;
        let script_err = |e: Box<EvalAltResult>| TaskmasterError::Script {
            path: label.clone(),
            message: lowercase_first(&e.to_string()),
        };
        let mut scope = Scope::new();
        scope.push("task", task_map(input).map_err(script_err)?);
        scope.push(
            "payload",
            rhai::serde::to_dynamic(input.payload).map_err(script_err)?,
        );
        scope.push("_taskee_", Dynamic::UNIT);

        let run = with_deadline(label, RUN_DEADLINE, || {
            self.engine
                .eval_ast_with_scope::<Dynamic>(&mut scope, &self.ast)
        });
        let returned = match run {
            Ok(v) => v,
            Err(e) => return classify(label, &e),
        };

        let assigned = scope
            .get_value::<Dynamic>("_taskee_")
            .unwrap_or(Dynamic::UNIT);
        let chosen = if assigned.is_string() {
            Some(assigned)
        } else if assigned.is_unit() {
            if returned.is_string() {
                Some(returned)
            } else if returned.is_unit() {
                None
            } else {
                return Err(TaskmasterError::NotATaskee {
                    path: label.clone(),
                    value: described(&returned),
                });
            }
        } else {
            return Err(TaskmasterError::TaskeeNotString {
                path: label.clone(),
                type_name: assigned.type_name().to_string(),
            });
        };
        match chosen {
            Some(name) => {
                let name = name.into_string().unwrap_or_default();
                name.parse::<Taskee>().map(Choice::Taskee).map_err(|_| {
                    TaskmasterError::InvalidTaskee {
                        path: label.clone(),
                        taskee: shorten(&name, 80),
                    }
                })
            }
            None => input
                .tasker
                .cloned()
                .map(Choice::Taskee)
                .ok_or(TaskmasterError::NoChoice {
                    path: label.clone(),
                }),
        }
    }
}

/// A value a script returned, in words: `a number (42)`, `an array
/// ([1, 2])`.
fn described(value: &Dynamic) -> String {
    let kind = if value.is_int() || value.is_float() {
        "a number"
    } else if value.is_bool() {
        "a boolean"
    } else if value.is_array() {
        "an array"
    } else if value.is_map() {
        "a map"
    } else if value.is_char() {
        "a character"
    } else {
        value.type_name()
    };
    format!("{kind} ({})", shorten(&value.to_string(), 60))
}

/// The `task` map a script sees.
fn task_map(input: &TaskmasterInput) -> Result<Dynamic, Box<EvalAltResult>> {
    let mut m = rhai::Map::new();
    m.insert("id".into(), input.id.as_str().into());
    m.insert("exid".into(), input.exid.as_str().into());
    m.insert("nid".into(), input.nid.as_str().into());
    m.insert("domain".into(), input.domain.as_str().into());
    m.insert(
        "tasker".into(),
        input.tasker.map_or(Dynamic::UNIT, |t| t.as_str().into()),
    );
    m.insert("attempt".into(), Dynamic::from(INT::from(input.attempt)));
    m.insert("offers".into(), Dynamic::from(INT::from(input.offers)));
    m.insert("headers".into(), rhai::serde::to_dynamic(input.headers)?);
    let refusals: rhai::Array = input
        .refusals
        .iter()
        .map(|r| {
            let mut o = rhai::Map::new();
            o.insert("taskee".into(), r.taskee.as_str().into());
            o.insert("reason".into(), r.reason.as_str().into());
            Dynamic::from_map(o)
        })
        .collect();
    m.insert("refusals".into(), Dynamic::from_array(refusals));
    Ok(Dynamic::from_map(m))
}

#[cfg(test)]
mod tests;
