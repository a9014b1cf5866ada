//! Fault injection, honoured only in debug builds (tests run the debug
//! binary; a release build compiles `inject` to nothing).
//!
//! `SPOOLFLOW_FAULT` holds comma-separated rules `OP:N[:KIND][@TEXT]`: the
//! `N`-th `OP` (`write`, `fsync` or `rename`) of the process fails with
//! `KIND` (`eio`, the default, `enospc`, `erofs` or `edquot`); with
//! `@TEXT`, only operations on a path containing `TEXT` (either side of a
//! rename) are counted. Each rule fails one operation, once: like a real
//! disk, the next attempt may succeed, which must never be taken to mean
//! that the data of the failed one is safe. For example
//! `SPOOLFLOW_FAULT=fsync:1@/spool/done/` fails the first fsync of a
//! record. The KIND `slow` fails nothing: it holds that operation for
//! [`SLOW`], then lets it be done, to widen a race's window in a test.

#[cfg(debug_assertions)]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(debug_assertions)]
use std::sync::OnceLock;

use super::Op;
use std::io;
use std::path::Path;

/// The environment variable read.
pub const VAR: &str = "SPOOLFLOW_FAULT";

/// How long the KIND `slow` holds its operation.
pub const SLOW: std::time::Duration = std::time::Duration::from_secs(2);

/// An unreadable `SPOOLFLOW_FAULT`.
#[derive(Debug, thiserror::Error)]
#[error("{VAR}: {rule:?} is not OP:N[:KIND][@TEXT] (OP write, fsync or rename; N from 1; KIND eio, enospc, erofs or edquot)")]
pub struct BadRule {
    pub rule: String,
}

/// One rule of `SPOOLFLOW_FAULT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub op: Op,
    pub nth: u64,
    /// The error to fail with; 0 for `slow` (held, then done).
    pub errno: i32,
    pub within: Option<String>,
}

/// Parses a `SPOOLFLOW_FAULT` value.
pub fn parse(spec: &str) -> Result<Vec<Rule>, BadRule> {
    spec.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            parse_rule(r).ok_or_else(|| BadRule {
                rule: r.to_string(),
            })
        })
        .collect()
}

fn parse_rule(rule: &str) -> Option<Rule> {
    let (head, within) = match rule.split_once('@') {
        Some((h, w)) if !w.is_empty() => (h, Some(w.to_string())),
        Some(_) => return None,
        None => (rule, None),
    };
    let mut parts = head.split(':');
    let op = match parts.next()? {
        "write" => Op::Write,
        "fsync" => Op::Fsync,
        "rename" => Op::Rename,
        _ => return None,
    };
    let nth: u64 = parts.next()?.parse().ok().filter(|n| *n >= 1)?;
    let errno = match parts.next() {
        None | Some("eio") => nix::libc::EIO,
        Some("enospc") => nix::libc::ENOSPC,
        Some("erofs") => nix::libc::EROFS,
        Some("edquot") => nix::libc::EDQUOT,
        Some("slow") => 0,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Rule {
        op,
        nth,
        errno,
        within,
    })
}

#[cfg(debug_assertions)]
struct Armed {
    rule: Rule,
    seen: AtomicU64,
}

#[cfg(debug_assertions)]
fn armed() -> &'static [Armed] {
    static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let spec = std::env::var(VAR).unwrap_or_default();
        let rules = parse(&spec).unwrap_or_else(|e| {
            // `check` refuses it where it matters (the engine's start).
            tracing::error!("{e}; no fault injected");
            Vec::new()
        });
        rules
            .into_iter()
            .map(|rule| Armed {
                rule,
                seen: AtomicU64::new(0),
            })
            .collect()
    })
}

/// Checks `SPOOLFLOW_FAULT` (debug builds; always fine in release
/// builds, which ignore it), and logs the faults armed.
pub fn check() -> Result<(), BadRule> {
    #[cfg(debug_assertions)]
    {
        let spec = std::env::var(VAR).unwrap_or_default();
        parse(&spec)?;
        for a in armed() {
            tracing::warn!(
                "{VAR}: the {:?} #{} {}will {}",
                a.rule.op,
                a.rule.nth,
                a.rule
                    .within
                    .as_ref()
                    .map(|w| format!("on a path containing {w:?} "))
                    .unwrap_or_default(),
                match a.rule.errno {
                    0 => format!("be held {SLOW:?}"),
                    errno => format!("fail with {}", io::Error::from_raw_os_error(errno)),
                }
            );
        }
    }
    Ok(())
}

/// Fails this operation if a rule says so (debug builds only).
#[cfg(debug_assertions)]
pub fn inject(op: Op, path: &Path, other: Option<&Path>) -> io::Result<()> {
    for a in armed() {
        if a.rule.op != op {
            continue;
        }
        if let Some(w) = &a.rule.within {
            let has = |p: &Path| p.to_string_lossy().contains(w.as_str());
            if !has(path) && !other.is_some_and(has) {
                continue;
            }
        }
        if a.seen.fetch_add(1, Ordering::SeqCst) + 1 == a.rule.nth {
            if a.rule.errno == 0 {
                tracing::warn!("{VAR}: holding {op:?} of {} {SLOW:?}", path.display());
                std::thread::sleep(SLOW);
                continue;
            }
            let e = io::Error::from_raw_os_error(a.rule.errno);
            tracing::warn!("{VAR}: injecting {e} into {op:?} of {}", path.display());
            return Err(e);
        }
    }
    Ok(())
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn inject(_op: Op, _path: &Path, _other: Option<&Path>) -> io::Result<()> {
    Ok(())
}
