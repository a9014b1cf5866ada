//! `spoolflow submit --batch`: many tasks in one call, all or nothing, with
//! one sync of the filesystem for the whole batch instead of an fsync per
//! file.
//!
//! A batch is JSON lines: each non-empty line is a task file (SPEC 3),
//! checked by the parser the engine uses for dropped files, with the
//! command line's `--domain`, `--tasker` and `--priority` filling in keys a
//! line lacks. Every line is checked before anything is written; one bad
//! line refuses the whole batch, and every bad line is reported with its
//! number.
//!
//! The durable recipe of a single task file (temporary, fsync, rename,
//! fsync of the directory) is kept, with the fsyncs shared: every file is
//! written into a staging directory inside `in/` (a dot name, which the
//! engine ignores), the filesystem is synced once (`syncfs(2)`), each file
//! is renamed into `in/`, and `in/` is fsynced once. A task file is thus
//! durable before it is visible, and a crash at any instant leaves no task
//! file or a complete one; a staging directory a crash leaves behind holds
//! only tasks that were never reported as submitted, and `gc` removes it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde_json::Value;

use super::{check_served, SubmitError};
use crate::layout::Root;
use crate::model::names::{Domain, TaskId, Taskee};
use crate::model::task::{parse_object, InputError, Object, Task, TaskFile};
use crate::store::spool::{self, SpoolError};

/// Keys a line may leave out, filled in from the command line.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub domain: Option<Domain>,
    /// Not applied to a line that holds a `flow`.
    pub tasker: Option<Taskee>,
    pub priority: Option<i32>,
}

/// How a batch's files are made durable before they are renamed into
/// `in/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BatchSync {
    /// [`BatchSync::EachFile`] for a batch of at most [`SMALL_BATCH`]
    /// tasks, else [`BatchSync::Filesystem`] (the default).
    #[default]
    Auto,
    /// One `syncfs(2)` of the filesystem that holds `in/`. It also writes
    /// whatever other programs left unwritten on that filesystem, which a
    /// small batch should not wait for.
    Filesystem,
    /// An fsync of each file: about a millisecond each on a disk.
    EachFile,
}

/// The largest batch whose files are fsynced one by one (see
/// [`BatchSync::Auto`]).
pub const SMALL_BATCH: usize = 8;

/// How to submit a batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchOptions {
    /// Submit tasks of domains nothing serves.
    pub force: bool,
    pub sync: BatchSync,
}

/// Why one line (or task) of a batch is refused.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Invalid JSON; the position is within the line.
    #[error("invalid JSON at column {column}: {message}")]
    Json { column: usize, message: String },
    #[error(transparent)]
    Input(InputError),
    #[error("no domain: give \"domain\" on the line, or --domain")]
    NoDomain,
    #[error("{0}")]
    Flow(String),
    #[error("duplicate id {id}: line {first} has it too")]
    Repeated { id: TaskId, first: usize },
    #[error("duplicate id {0}: a task with this id is already in the spool")]
    Duplicate(TaskId),
    #[error("the task file would be {size} bytes, more than the engine takes ({limit})")]
    TooLarge { size: usize, limit: u64 },
    #[error("{}{}", super::unserved_message(.domain, .suggestion.as_deref(), .served), more_lines(*.more))]
    Unserved {
        domain: Domain,
        suggestion: Option<String>,
        served: Vec<String>,
        /// Later lines of the same domain, not reported apart.
        more: usize,
    },
}

fn more_lines(more: usize) -> String {
    match more {
        0 => String::new(),
        1 => "; 1 more line has this domain".into(),
        n => format!("; {n} more lines have this domain"),
    }
}

impl From<InputError> for LineError {
    fn from(e: InputError) -> LineError {
        match e {
            // A line is one line: its own line number says where.
            InputError::Json {
                column, message, ..
            } => LineError::Json { column, message },
            e => LineError::Input(e),
        }
    }
}

/// A refused line: its number (1-based; for tasks given as a list, the
/// position) and why.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct Fault {
    pub line: usize,
    pub error: LineError,
}

/// A task of a batch, checked and serialized: what is written.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub id: TaskId,
    pub bytes: Vec<u8>,
}

/// Parses one line into a task file: a JSON object whose missing (or
/// `null`) `domain`, `tasker` (unless it holds a `flow`) and `priority`
/// are taken from `defaults`, then checked key by key as the engine checks
/// a dropped file.
pub fn parse_line(line: &[u8], defaults: &Defaults) -> Result<TaskFile, LineError> {
    let mut obj = parse_object(line)?;
    let lacks = |obj: &Object, key: &str| obj.get(key).is_none_or(Value::is_null);
    if let Some(d) = defaults.domain.as_ref().filter(|_| lacks(&obj, "domain")) {
        obj.insert("domain".into(), d.as_str().into());
    }
    if let Some(t) = &defaults.tasker {
        if lacks(&obj, "tasker") && lacks(&obj, "flow") {
            obj.insert("tasker".into(), t.as_str().into());
        }
    }
    if let Some(p) = defaults.priority.filter(|_| lacks(&obj, "priority")) {
        obj.insert("priority".into(), p.into());
    }
    Ok(TaskFile::from_object(obj)?)
}

/// Parses JSON lines: the task files of the non-empty lines with their
/// line numbers, and the faults of the lines that do not parse.
pub fn parse_lines(text: &[u8], defaults: &Defaults) -> (Vec<(usize, TaskFile)>, Vec<Fault>) {
    let mut files = Vec::new();
    let mut faults = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        match parse_line(line, defaults) {
            Ok(file) => files.push((i + 1, file)),
            Err(error) => faults.push(Fault { line: i + 1, error }),
        }
    }
    (files, faults)
}

/// Checks numbered task files as a batch and prepares them for writing:
/// each has a domain, a valid flow if any, and a size the engine takes;
/// given ids are unique in the batch and in the spool (generated ones are,
/// by construction); unless `force`, something serves each domain. Returns
/// every fault, in line order.
pub fn check_batch(
    root: &Root,
    files: Vec<(usize, TaskFile)>,
    force: bool,
) -> Result<Vec<Prepared>, Vec<Fault>> {
    let mut faults = Vec::new();
    let mut prepared = Vec::with_capacity(files.len());
    let mut given: HashMap<TaskId, usize> = HashMap::new();
    let taken = super::TakenIds::new(root);
    // Domain -> (first line, later lines).
    let mut domains: BTreeMap<Domain, (usize, usize)> = BTreeMap::new();
    for (line, file) in files {
        let named = file.id.is_some();
        let checked = check_task(root, file).and_then(|task| {
            if named {
                check_id(root, &taken, &task.id, line, &mut given)?;
            }
            Ok(task)
        });
        let task = match checked {
            Ok(task) => task,
            Err(error) => {
                faults.push(Fault { line, error });
                continue;
            }
        };
        domains
            .entry(task.domain.clone())
            .and_modify(|(_, more)| *more += 1)
            .or_insert((line, 0));
        match serialize(&task) {
            Ok(bytes) => prepared.push(Prepared { id: task.id, bytes }),
            Err(error) => faults.push(Fault { line, error }),
        }
    }
    if !force {
        faults.extend(unserved(root, domains));
    }
    if faults.is_empty() {
        Ok(prepared)
    } else {
        faults.sort_by_key(|f| f.line);
        Err(faults)
    }
}

/// The task of one file, with its flow (if any) checked as intake checks
/// it; the written file keeps the flow as given, resolved when claimed.
fn check_task(root: &Root, file: TaskFile) -> Result<Task, LineError> {
    if file.domain.is_none() {
        return Err(LineError::NoDomain);
    }
    let task = Task::from_file(file, None, None)?;
    if let Some(flow) = &task.flow {
        crate::store::intake::prepare_flow(root, &task.domain, flow.clone())
            .map_err(LineError::Flow)?;
    }
    Ok(task)
}

/// A given id must be new to the batch and to the spool.
fn check_id(
    root: &Root,
    taken: &super::TakenIds,
    id: &TaskId,
    line: usize,
    given: &mut HashMap<TaskId, usize>,
) -> Result<(), LineError> {
    if let Some(&first) = given.get(id) {
        return Err(LineError::Repeated {
            id: id.clone(),
            first,
        });
    }
    given.insert(id.clone(), line);
    if taken.contains(root, id) {
        return Err(LineError::Duplicate(id.clone()));
    }
    Ok(())
}

/// The task file's bytes: the task with every key filled in, one line.
fn serialize(task: &Task) -> Result<Vec<u8>, LineError> {
    let mut bytes = serde_json::to_vec(&task.to_file_json()).expect("a JSON value serializes");
    bytes.push(b'\n');
    let limit = crate::engine::INPUT_LIMIT;
    if bytes.len() as u64 > limit {
        return Err(LineError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    Ok(bytes)
}

/// One fault per domain nothing serves, on its first line.
fn unserved(root: &Root, domains: BTreeMap<Domain, (usize, usize)>) -> Vec<Fault> {
    let mut faults = Vec::new();
    for (domain, (line, more)) in domains {
        if let Err(SubmitError::Unserved {
            domain,
            suggestion,
            served,
        }) = check_served(root, &domain)
        {
            faults.push(Fault {
                line,
                error: LineError::Unserved {
                    domain,
                    suggestion,
                    served,
                    more,
                },
            });
        }
    }
    faults
}

/// Writes prepared tasks into `in/`, each durable before it is visible:
/// all into a staging directory, one sync (see [`BatchSync`]), renames into
/// `in/` in order (never over a file), one fsync of `in/`. Until the first
/// rename nothing is visible, and a failure removes the staging directory.
/// A failed rename (another writer took an id meanwhile) or a failed fsync
/// of `in/` after some renames is [`SubmitError::Partial`], naming the
/// tasks already in `in/`.
pub fn write_batch(
    root: &Root,
    tasks: &[Prepared],
    options: &BatchOptions,
) -> Result<Vec<TaskId>, SubmitError> {
    root.ensure_exists()?;
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let spool_in = root.spool_in();
    let staging = tempfile::Builder::new()
        .prefix(Root::BATCH_STAGING_PREFIX)
        .suffix(".tmp")
        .tempdir_in(&spool_in)
        .map_err(|source| SpoolError::Write {
            path: spool_in.clone(),
            source,
        })?;
    spool::spread_subdirs(staging.path());
    let fsync_each = match options.sync {
        BatchSync::Auto => tasks.len() <= SMALL_BATCH,
        BatchSync::Filesystem => false,
        BatchSync::EachFile => true,
    };
    let staged = stage(staging.path(), tasks, fsync_each)?;
    if !fsync_each {
        spool::sync_filesystem(staging.path())?;
    }
    let mut submitted = Vec::with_capacity(tasks.len());
    for (task, from) in tasks.iter().zip(&staged) {
        let to = spool_in.join(from.file_name().expect("a staged file has a name"));
        if let Err(e) = spool::rename_no_replace(from, &to) {
            let e = match e {
                SpoolError::Exists(_) => SubmitError::Duplicate(task.id.clone()),
                e => e.into(),
            };
            return Err(partial(&spool_in, submitted, tasks.len(), e));
        }
        submitted.push(task.id.clone());
    }
    if let Err(e) = spool::fsync_dir(&spool_in) {
        return Err(partial(&spool_in, submitted, tasks.len(), e.into()));
    }
    Ok(submitted)
}

/// Writes each task as `staging/<name>/<id>.json`, `<name>` the staging
/// directory's own, and returns the files in the tasks' order. Creating a
/// file is most of the cost of a batch, and the directory it is created in
/// decides where on the disk its inode goes: this one is spread away from
/// `in/` (see [`spool::spread_subdirs`]), each batch's elsewhere, since
/// ext4 looks for a spread directory's place starting from a hash of its
/// name, and a fixed name would take every batch to where the files of the
/// batches before were just freed.
fn stage(
    staging: &std::path::Path,
    tasks: &[Prepared],
    fsync: bool,
) -> Result<Vec<PathBuf>, SpoolError> {
    let name = staging.file_name().unwrap_or_default().to_string_lossy();
    let dir = staging.join(name.trim_start_matches(Root::BATCH_STAGING_PREFIX));
    std::fs::create_dir(&dir).map_err(|source| SpoolError::Write {
        path: dir.clone(),
        source,
    })?;
    tasks
        .iter()
        .map(|t| {
            let path = dir.join(format!("{}.json", t.id));
            spool::write_new(&path, &t.bytes, fsync).map(|()| path)
        })
        .collect()
}

/// The error of a batch that stopped after some renames: those tasks are
/// in `in/` (made durable if the disk allows), the others are not.
fn partial(
    spool_in: &std::path::Path,
    submitted: Vec<TaskId>,
    total: usize,
    error: SubmitError,
) -> SubmitError {
    if submitted.is_empty() {
        return error;
    }
    let _ = spool::fsync_dir(spool_in);
    SubmitError::Partial {
        submitted,
        total,
        error: Box::new(error),
    }
}

/// Submits task files as a batch (numbered by their position, from 1):
/// [`check_batch`], then [`write_batch`]. Returns the ids in order.
pub fn submit_batch(
    root: &Root,
    files: Vec<TaskFile>,
    options: &BatchOptions,
) -> Result<Vec<TaskId>, SubmitError> {
    let numbered = files.into_iter().enumerate().map(|(i, f)| (i + 1, f));
    submit_numbered(root, numbered.collect(), Vec::new(), options)
}

/// Submits a batch given as JSON lines (see [`parse_lines`]): nothing is
/// written unless every line is good, and [`SubmitError::Refused`] lists
/// every bad one.
pub fn submit_lines(
    root: &Root,
    text: &[u8],
    defaults: &Defaults,
    options: &BatchOptions,
) -> Result<Vec<TaskId>, SubmitError> {
    let (files, faults) = parse_lines(text, defaults);
    submit_numbered(root, files, faults, options)
}

fn submit_numbered(
    root: &Root,
    files: Vec<(usize, TaskFile)>,
    mut faults: Vec<Fault>,
    options: &BatchOptions,
) -> Result<Vec<TaskId>, SubmitError> {
    root.ensure_exists()?;
    let total = files.len() + faults.len();
    match check_batch(root, files, options.force) {
        Ok(prepared) if faults.is_empty() => write_batch(root, &prepared, options),
        Ok(_) => Err(SubmitError::Refused { faults, total }),
        Err(more) => {
            faults.extend(more);
            faults.sort_by_key(|f| f.line);
            Err(SubmitError::Refused { faults, total })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            domain: Some("org.example".parse().unwrap()),
            tasker: Some("stamp".parse().unwrap()),
            priority: Some(5),
        }
    }

    #[test]
    fn defaults_fill_only_what_a_line_lacks() {
        let f = parse_line(br#"{"payload":{"n":1}}"#, &defaults()).unwrap();
        assert_eq!(f.domain.unwrap().as_str(), "org.example");
        assert_eq!(f.tasker.unwrap().as_str(), "stamp");
        assert_eq!(f.priority, 5);
        assert_eq!(f.payload["n"], 1);
        let f = parse_line(
            br#"{"domain":"org.other","tasker":"t","priority":0,"id":"a"}"#,
            &defaults(),
        )
        .unwrap();
        assert_eq!(f.domain.unwrap().as_str(), "org.other");
        assert_eq!(f.tasker.unwrap().as_str(), "t");
        assert_eq!(f.priority, 0);
        assert_eq!(f.id.unwrap().as_str(), "a");
        // null counts as absent; a flow takes no default tasker.
        let f = parse_line(br#"{"domain":null,"flow":{"task":"a"}}"#, &defaults()).unwrap();
        assert_eq!(f.domain.unwrap().as_str(), "org.example");
        assert!(f.tasker.is_none() && f.flow.is_some());
        // Without defaults a line keeps what it has.
        let f = parse_line(br#"{}"#, &Defaults::default()).unwrap();
        assert!(f.domain.is_none() && f.tasker.is_none() && f.priority == 0);
    }

    #[test]
    fn bad_lines_are_refused_with_the_engines_reasons() {
        let reason = |line: &str| parse_line(line.as_bytes(), &defaults()).unwrap_err();
        assert_eq!(
            reason(r#"{"payload": }"#).to_string(),
            "invalid JSON at column 13: expected value"
        );
        assert_eq!(
            reason("[1]").to_string(),
            "a task file must hold a JSON object, not an array"
        );
        assert_eq!(
            reason(r#"{"prioity":1}"#).to_string(),
            "unknown key \"prioity\" (did you mean \"priority\"?)"
        );
        assert!(reason(r#"{"domain":"any"}"#)
            .to_string()
            .contains("reserved"));
        assert!(reason(r#"{"payload":[]}"#)
            .to_string()
            .contains("JSON object"));
        assert!(reason(r#"{"tasker":"a","flow":{"task":"b"}}"#)
            .to_string()
            .contains("not both"));
    }

    #[test]
    fn lines_are_numbered_and_blank_ones_skipped() {
        let text = b"{\"id\":\"a\"}\n\n  \r\n{\"id\":\n{\"id\":\"b\"}\r\n";
        let (files, faults) = parse_lines(text, &defaults());
        let lines: Vec<usize> = files.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [1, 5]);
        assert_eq!(files[1].1.id.as_ref().unwrap().as_str(), "b");
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].line, 4);
        assert!(faults[0].to_string().starts_with("line 4: invalid JSON"));
        let (files, faults) = parse_lines(b"", &defaults());
        assert!(files.is_empty() && faults.is_empty());
    }

    #[test]
    fn a_batch_is_checked_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        std::fs::write(root.tsk().join("any/stamp"), "").unwrap();
        std::fs::write(root.done().join("old.json"), "{}").unwrap();
        let text = b"{\"id\":\"a\"}\n{\"id\":\"a\"}\n{\"id\":\"old\"}\n{}\n{\"domain\":null}";
        let d = Defaults {
            domain: None,
            ..defaults()
        };
        let (files, faults) = parse_lines(text, &d);
        assert!(faults.is_empty());
        let faults = check_batch(&root, files, false).unwrap_err();
        let said: Vec<String> = faults.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "line 1: no domain: give \"domain\" on the line, or --domain",
                "line 2: no domain: give \"domain\" on the line, or --domain",
                "line 3: no domain: give \"domain\" on the line, or --domain",
                "line 4: no domain: give \"domain\" on the line, or --domain",
                "line 5: no domain: give \"domain\" on the line, or --domain",
            ]
        );
        let (files, _) = parse_lines(text, &defaults());
        let faults = check_batch(&root, files, false).unwrap_err();
        let said: Vec<String> = faults.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "line 2: duplicate id a: line 1 has it too",
                "line 3: duplicate id old: a task with this id is already in the spool",
            ]
        );
    }

    #[test]
    fn an_unserved_domain_is_one_fault_on_its_first_line() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        std::fs::create_dir_all(root.tsk().join("org.example")).unwrap();
        std::fs::write(root.tsk().join("org.example/taskmaster.rhai"), "").unwrap();
        let text = b"{}\n{\"domain\":\"org.exmaple\"}\n{}\n{\"domain\":\"org.exmaple\"}\n";
        let (files, _) = parse_lines(text, &defaults());
        let faults = check_batch(&root, files, false).unwrap_err();
        assert_eq!(faults.len(), 1, "{faults:?}");
        assert_eq!(faults[0].line, 2);
        let said = faults[0].to_string();
        assert!(said.contains("did you mean \"org.example\"?"), "{said}");
        assert!(said.ends_with("; 1 more line has this domain"), "{said}");
        let (files, _) = parse_lines(text, &defaults());
        assert_eq!(check_batch(&root, files, true).unwrap().len(), 4);
    }

    #[test]
    fn prepared_files_are_the_tasks_the_engine_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::new(tmp.path()).unwrap();
        root.init().unwrap();
        let text = b"{\"headers\":{\"by\":\"me\"},\"timeout\":\"2s\"}\n{\"id\":\"x\"}\n";
        let (files, _) = parse_lines(text, &defaults());
        let prepared = check_batch(&root, files, true).unwrap();
        assert_eq!(prepared[1].id.as_str(), "x");
        let back = TaskFile::parse(&prepared[0].bytes).unwrap();
        let task = Task::from_file(back, None, None).unwrap();
        assert_eq!(task.id, prepared[0].id);
        assert_eq!(task.domain.as_str(), "org.example");
        assert_eq!(task.priority, 5);
        assert_eq!(task.headers["by"], "me");
        assert_eq!(task.options.timeout.unwrap().0.as_secs(), 2);
        let ids = write_batch(&root, &prepared, &BatchOptions::default()).unwrap();
        assert_eq!(ids, [prepared[0].id.clone(), prepared[1].id.clone()]);
        let mut names: Vec<String> = std::fs::read_dir(root.spool_in())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want = vec![format!("{}.json", ids[0]), "x.json".to_string()];
        want.sort();
        assert_eq!(names, want, "the staging directory is gone");
    }
}
