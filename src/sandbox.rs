//! The Rhai sandbox shared by taskmasters and flow `if` expressions: one
//! engine with every bound set, no `eval`, no modules, and per run a
//! wall-clock deadline and a memory budget ([`with_deadline`]), so that a
//! script that loops or allocates without end fails its own task and
//! nothing else.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, Position};

/// Operations one script run may perform.
pub const MAX_OPERATIONS: u64 = 1_000_000;
/// Depth of nested function calls.
pub const MAX_CALL_LEVELS: usize = 32;
/// Depth of nested expressions, at the top level and inside functions.
pub const MAX_EXPR_DEPTHS: (usize, usize) = (64, 32);
/// Bytes in one string.
pub const MAX_STRING_SIZE: usize = 1 << 20;
/// Elements in one array.
pub const MAX_ARRAY_SIZE: usize = 10_000;
/// Entries in one object map.
pub const MAX_MAP_SIZE: usize = 10_000;
/// Heap one script run may hold at once (what its thread allocated less
/// what it freed since the run began; see [`crate::heap`]). Rhai's own
/// bounds are per string, array and map; this one bounds how many a
/// script keeps (a map grown one key at a time, many large strings).
pub const MAX_RUN_MEMORY: i64 = 256 << 20;
/// Wall-clock time one script run may take.
pub const RUN_DEADLINE: Duration = Duration::from_secs(1);
/// Lines of `print`/`debug` output logged per run; the rest are dropped.
const MAX_LOG_LINES_PER_RUN: u32 = 100;
/// Characters of one `print`/`debug` line that are logged.
const MAX_LOG_LINE: usize = 1000;
/// How often (in operations) the wall-clock deadline is looked at.
const DEADLINE_CHECK_EVERY: u64 = 1024;

/// Per-thread state of the script run in progress (see [`with_deadline`]).
struct RunState {
    /// When the run must end, and the limit that set it.
    deadline: Option<(Instant, Duration)>,
    label: String,
    log_lines: u32,
}

thread_local! {
    static RUN: RefCell<RunState> = const {
        RefCell::new(RunState { deadline: None, label: String::new(), log_lines: 0 })
    };
    /// The thread's heap count above which the run in progress has gone
    /// over [`MAX_RUN_MEMORY`] (`i64::MAX`: no run in progress). Apart
    /// from [`RUN`]: it is looked at on every operation.
    static HEAP_CEILING: Cell<i64> = const { Cell::new(i64::MAX) };
}

/// The token a script is terminated with when its deadline passes.
#[derive(Debug, Clone, Copy)]
struct DeadlinePassed(Duration);

/// The token a script is terminated with when it holds too much memory.
#[derive(Debug, Clone, Copy)]
struct MemoryExceeded;

/// Restores the previous [`RunState`] and heap ceiling when a run ends
/// (even by a panic).
struct RunGuard(Option<RunState>, i64);

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Some(prev) = self.0.take() {
            RUN.with(|r| *r.borrow_mut() = prev);
        }
        HEAP_CEILING.with(|c| c.set(self.1));
    }
}

/// Runs `f`, which runs scripts on a [`sandbox_engine`] on this thread, with
/// a wall-clock deadline of `limit` and a budget of [`MAX_RUN_MEMORY`]: a
/// script still running then, or holding more, is terminated (an
/// `ErrorTerminated`). `label` (the script's path) prefixes
/// the script's `print` and `debug` output in the log, of which only the
/// first lines of each run are kept.
pub fn with_deadline<R>(label: &str, limit: Duration, f: impl FnOnce() -> R) -> R {
    let state = RunState {
        deadline: Some((Instant::now() + limit, limit)),
        label: label.to_string(),
        log_lines: 0,
    };
    let ceiling = crate::heap::thread_net_bytes().saturating_add(MAX_RUN_MEMORY);
    let _guard = RunGuard(
        Some(RUN.with(|r| r.replace(state))),
        HEAP_CEILING.with(|c| c.replace(ceiling)),
    );
    f()
}

pub fn shorten(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Logs one line of script output, unless this run has logged enough.
fn log_script_output(debug: bool, text: &str, pos: Option<Position>) {
    RUN.with(|r| {
        let mut r = r.borrow_mut();
        r.log_lines = r.log_lines.saturating_add(1);
        let label = if r.label.is_empty() {
            "script"
        } else {
            r.label.as_str()
        };
        if r.log_lines > MAX_LOG_LINES_PER_RUN + 1 {
            return;
        }
        if r.log_lines == MAX_LOG_LINES_PER_RUN + 1 {
            tracing::info!("{label}: further output of this run is dropped");
            return;
        }
        let text = shorten(text, MAX_LOG_LINE);
        match (debug, pos) {
            (false, _) => tracing::info!("{label}: {text}"),
            (true, Some(pos)) if !pos.is_none() => tracing::debug!("{label} ({pos}): {text}"),
            (true, _) => tracing::debug!("{label}: {text}"),
        }
    });
}

/// Why a script cannot call `sleep`.
const NO_SLEEP: &str = "sleep() is not available in the sandbox (a script must not hold the engine; a flow waits with a `sleep` node)";

/// The sandboxed engine: no file, process or network access (Rhai has none
/// built in and no module can be loaded), no `eval`, bounds on operations,
/// call and expression depth, and string, array and map sizes, and a
/// wall-clock deadline when run inside [`with_deadline`]. `print` and
/// `debug` go to the log. Also used for flow `if` expressions.
pub fn sandbox_engine() -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(MAX_OPERATIONS)
        .set_max_call_levels(MAX_CALL_LEVELS)
        .set_max_expr_depths(MAX_EXPR_DEPTHS.0, MAX_EXPR_DEPTHS.1)
        .set_max_string_size(MAX_STRING_SIZE)
        .set_max_array_size(MAX_ARRAY_SIZE)
        .set_max_map_size(MAX_MAP_SIZE);
    // `set_max_modules(0)` does not exist with `no_module`: `import` is then
    // a syntax error.
    engine.disable_symbol("eval");
    // Rhai's `sleep` is one operation, however long: the deadline, checked
    // between operations, would not see it, and a script runs on the
    // engine's loop (an `if`) or holds a taskmaster worker. Registered on
    // the engine itself, these win over the package's.
    engine.register_fn("sleep", |_: rhai::INT| -> Result<(), Box<EvalAltResult>> {
        Err(NO_SLEEP.into())
    });
    engine.register_fn(
        "sleep",
        |_: rhai::FLOAT| -> Result<(), Box<EvalAltResult>> { Err(NO_SLEEP.into()) },
    );
    engine.on_progress(|ops| {
        // Every operation: one may allocate up to a whole string's bound.
        if crate::heap::thread_net_bytes() > HEAP_CEILING.with(Cell::get) {
            return Some(Dynamic::from(MemoryExceeded));
        }
        if ops % DEADLINE_CHECK_EVERY != 0 {
            return None;
        }
        let (deadline, limit) = RUN.with(|r| r.borrow().deadline)?;
        if Instant::now() >= deadline {
            Some(Dynamic::from(DeadlinePassed(limit)))
        } else {
            None
        }
    });
    engine.on_print(|s| log_script_output(false, s, None));
    engine.on_debug(|s, _source, pos| log_script_output(true, s, Some(pos)));
    engine
}

/// Lowercases the first letter of a Rhai message ("Variable not found" →
/// "variable not found"), keeping acronyms.
pub fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(a), Some(b)) if a.is_ascii_uppercase() && !b.is_ascii_uppercase() => {
            let mut out = String::with_capacity(s.len());
            out.push(a.to_ascii_lowercase());
            out.push_str(&s[1..]);
            out
        }
        _ => s.to_string(),
    }
}

/// The sandbox bound a run that did not finish went over, described for
/// a person (`time limit (1000 ms)`); `None` for any other error. A
/// termination by another token (a taskmaster's `reject`) is the caller's
/// to recognise first.
pub fn limit_exceeded(err: &EvalAltResult) -> Option<String> {
    Some(match err.unwrap_inner() {
        EvalAltResult::ErrorTerminated(token, _) if token.is::<MemoryExceeded>() => {
            format!("memory limit ({} MiB held by one run)", MAX_RUN_MEMORY >> 20)
        }
        EvalAltResult::ErrorTerminated(token, _) => match token.clone().try_cast::<DeadlinePassed>() {
            Some(DeadlinePassed(d)) => format!("time limit ({} ms)", d.as_millis()),
            None => "time limit".to_string(),
        },
        EvalAltResult::ErrorTooManyOperations(_) => {
            format!("operation limit ({MAX_OPERATIONS} operations)")
        }
        EvalAltResult::ErrorStackOverflow(_) => {
            format!("call depth limit ({MAX_CALL_LEVELS} levels)")
        }
        EvalAltResult::ErrorDataTooLarge(what, _) => format!(
            "size limit ({} too large; strings {MAX_STRING_SIZE} bytes, arrays {MAX_ARRAY_SIZE} and maps {MAX_MAP_SIZE} entries)",
            what.to_lowercase()
        ),
        EvalAltResult::ErrorTooManyVariables(_) => "variable limit".to_string(),
        EvalAltResult::ErrorTooManyModules(_) => "module limit".to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sleep` would stop the whole engine for as long as it asks, the
    /// deadline unseen (it is one operation): it fails at once instead.
    #[test]
    fn sleep_fails_at_once_instead_of_holding_the_engine() {
        let engine = sandbox_engine();
        for script in ["sleep(5); 1", "sleep(2.5); 1"] {
            let started = Instant::now();
            let err = with_deadline("sleepy", Duration::from_secs(1), || {
                engine.eval::<i64>(script)
            })
            .unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(1), "{script}");
            assert!(
                err.to_string().contains("sleep() is not available"),
                "{err}"
            );
        }
    }

    /// Each string and the map stay within their own bounds; together
    /// they do not. A deadline far away: the memory bound is what stops
    /// the run, however loaded the machine (the engine's runs have 1 s).
    #[test]
    fn a_run_holding_too_much_memory_is_stopped_and_gives_it_back() {
        let engine = sandbox_engine();
        // 600 MB at most, should the bound ever fail to stop it.
        let script = r#"let m = #{}; let s = ""; s.pad(1000000, "y");
            for i in 0..600 { m[`k${i}`] = s + i; }"#;
        let before = crate::heap::thread_net_bytes();
        let err = with_deadline("hog", Duration::from_secs(300), || {
            engine.eval::<Dynamic>(script)
        })
        .unwrap_err();
        assert_eq!(
            limit_exceeded(&err).as_deref(),
            Some("memory limit (256 MiB held by one run)"),
            "{err}"
        );
        drop(err);
        let held = crate::heap::thread_net_bytes() - before;
        assert!(held < 1 << 20, "{held} bytes still held");
        // The next run has its whole budget again.
        let ok = with_deadline("small", Duration::from_secs(300), || {
            engine.eval::<i64>(r#"let s = ""; s.pad(1000000, "y"); s.len"#)
        });
        assert_eq!(ok.unwrap(), 1_000_000);
    }
}
