//! Validated names of SPEC section 2: [`Domain`], [`TaskId`] (also used as an
//! exid), [`Taskee`] and [`Nid`].
//!
//! Each is built only through `FromStr`/`TryFrom<String>` (and serde, which
//! goes through the same check), so the rest of the code never re-checks:
//! a `Domain` cannot hold `..` or `/`, a `Taskee` cannot address a path.
//!
//! Each holds an `Arc<str>`: the engine keeps the same id in several maps
//! (its executions, its nodes, the scheduler's queue) and the same domain
//! and taskee in thousands of queued tasks, and a clone shares the text
//! instead of copying it (see `engine::state` on the memory a queued task
//! takes).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "invalid domain {}: dot-separated labels of [a-z0-9][a-z0-9_-]*, at most 255 characters",
        crate::text::quoted(.0)
    )]
    Domain(String),
    #[error("domain {} is reserved: no task's domain is `any` or starts with `any.`", crate::text::quoted(.0))]
    ReservedDomain(String),
    #[error("invalid task id {}: [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}", crate::text::quoted(.0))]
    TaskId(String),
    #[error("invalid taskee {}: [A-Za-z0-9][A-Za-z0-9_-]{{0,63}} (no dot, no slash)", crate::text::quoted(.0))]
    Taskee(String),
    #[error("invalid nid {}: `0` or `0_N_M…`", crate::text::quoted(.0))]
    Nid(String),
}

/// Shortens a refused name for an error message (it may be huge or hostile).
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn is_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                s.parse()
            }
        }
        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0.to_string()
            }
        }
    };
}

/// A domain such as `org.example.sales`. May be `any` only through
/// [`Domain::any`] (the taskers' shared directory), never from a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(Arc<str>);
string_newtype!(Domain);

impl FromStr for Domain {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > 255 || !s.split('.').all(is_label) {
            return Err(NameError::Domain(shown(s)));
        }
        if s == "any" || s.starts_with("any.") {
            return Err(NameError::ReservedDomain(s.to_string()));
        }
        Ok(Domain(s.into()))
    }
}

impl Domain {
    /// The branch of this domain, from itself up to its top label:
    /// `a.b.c`, `a.b`, `a`.
    pub fn branch(&self) -> impl Iterator<Item = &str> {
        let s: &str = &self.0;
        std::iter::once(s).chain(s.match_indices('.').rev().map(move |(i, _)| &s[..i]))
    }

    /// Whether `self` is `other` or lies below it (`org.example.sales` is in
    /// the branch of `org.example` and `org`).
    pub fn is_in_branch_of(&self, other: &Domain) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&*other.0)
                && self.0.as_bytes()[other.0.len()] == b'.')
    }
}

/// A task id; also an exid (the id of an execution).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(Arc<str>);
string_newtype!(TaskId);

/// The execution id: a standalone task's own id, or a flow's id.
pub type Exid = TaskId;

impl FromStr for TaskId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && b[0].is_ascii_alphanumeric()
            && b[1..]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if ok {
            Ok(TaskId(s.into()))
        } else {
            Err(NameError::TaskId(shown(s)))
        }
    }
}

impl TaskId {
    /// A generated, time-ordered id: `t` + microseconds since the epoch (hex,
    /// fixed width) + a per-process counter, so ids sort by creation.
    pub fn generate() -> TaskId {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        TaskId(
            format!(
                "t{micros:014x}-{:04x}{:04x}",
                std::process::id() & 0xffff,
                seq & 0xffff
            )
            .into(),
        )
    }
}

impl TaskId {
    /// The id of a dropped file that names none and whose stem is not a
    /// valid id: time-ordered by the file's modification time, and the same
    /// every time the same file is looked at (inode and ctime), so that a
    /// file taken again after a crash is recognised as a duplicate instead
    /// of running twice under a new id.
    pub fn for_file(meta: &std::fs::Metadata) -> TaskId {
        use std::os::unix::fs::MetadataExt;
        let micros = (meta.mtime() as u64)
            .saturating_mul(1_000_000)
            .saturating_add(meta.mtime_nsec() as u64 / 1000);
        // Both halves of the inode and of the ctime folded into 32 bits (a
        // rotation by 32 put the nanoseconds where the mask dropped them).
        let ctime = (meta.ctime() as u64)
            .wrapping_mul(1_000_000_007)
            .wrapping_add(meta.ctime_nsec() as u64);
        let mixed = meta.ino() ^ ctime.rotate_left(17);
        let salt = (mixed ^ (mixed >> 32)) & 0xffff_ffff;
        TaskId(format!("t{micros:014x}-{salt:08x}").into())
    }
}

/// A taskee: the name of a tasker, never a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Taskee(Arc<str>);
string_newtype!(Taskee);

impl FromStr for Taskee {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 64
            && b[0].is_ascii_alphanumeric()
            && b[1..]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'));
        if ok {
            Ok(Taskee(s.into()))
        } else {
            Err(NameError::Taskee(shown(s)))
        }
    }
}

/// A node id inside an execution: `0` for the root (and for a standalone
/// task), `0_1_0` for the first child of the second child of the root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Nid(Arc<str>);
string_newtype!(Nid);

impl Nid {
    /// The root node, `0`.
    pub fn root() -> Nid {
        /// One `0` shared by every standalone task.
        static ROOT: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("0"));
        Nid(ROOT.clone())
    }

    /// The `i`-th child of this node.
    pub fn child(&self, i: usize) -> Nid {
        Nid(format!("{}_{}", self.0, i).into())
    }
}

impl FromStr for Nid {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let mut parts = s.split('_');
        let ok = parts.next() == Some("0")
            && parts.all(|p| {
                !p.is_empty()
                    && p.bytes().all(|c| c.is_ascii_digit())
                    && (p == "0" || !p.starts_with('0'))
            })
            && s.len() <= 512;
        if ok {
            Ok(Nid(s.into()))
        } else {
            Err(NameError::Nid(shown(s)))
        }
    }
}

/// The JSON Schema of a name: a string with the name's pattern (what the
/// name's `FromStr` accepts, as far as a regular expression can say it).
macro_rules! name_schema {
    ($name:ident, $description:expr, $schema:tt) => {
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let mut schema = schemars::json_schema!($schema);
                schema.insert("description".into(), $description.into());
                schema
            }
        }
    };
}

name_schema!(
    Domain,
    "Dot-separated labels of [a-z0-9][a-z0-9_-]*, at most 255 characters; not `any` nor `any.…`.",
    {
        "type": "string",
        "maxLength": 255,
        "pattern": "^[a-z0-9][a-z0-9_-]*(\\.[a-z0-9][a-z0-9_-]*)*$",
        "not": { "pattern": "^any(\\.|$)" }
    }
);
name_schema!(
    TaskId,
    "A task id (also an execution id): [A-Za-z0-9][A-Za-z0-9._-]{0,127}.",
    { "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$" }
);
name_schema!(
    Taskee,
    "A tasker's name: [A-Za-z0-9][A-Za-z0-9_-]{0,63}, no dot, no slash.",
    { "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$" }
);
name_schema!(
    Nid,
    "A node id: `0` for the root (and a standalone task), `0_1_0` for the first child of the second child.",
    {
        "type": "string",
        "maxLength": 512,
        "pattern": "^0(_(0|[1-9][0-9]*))*$"
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_id_changes_with_its_ctime_not_only_its_inode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no name.json");
        std::fs::write(&p, "{}").unwrap();
        let before = std::fs::metadata(&p).unwrap();
        assert_eq!(
            TaskId::for_file(&before),
            TaskId::for_file(&std::fs::metadata(&p).unwrap())
        );
        // A new ctime (the same inode and mtime): another file's look.
        use std::os::unix::fs::MetadataExt;
        let start = std::time::Instant::now();
        let changed = loop {
            // ctime moves with the kernel's clock tick: changed until it does.
            for mode in [0o600, 0o644] {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            let m = std::fs::metadata(&p).unwrap();
            if (m.ctime(), m.ctime_nsec()) != (before.ctime(), before.ctime_nsec()) {
                break m;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "ctime never moved"
            );
        };
        assert_ne!(TaskId::for_file(&before), TaskId::for_file(&changed));
    }

    #[test]
    fn domains() {
        for ok in ["org", "org.example.sales", "a-b.c_d.0x", "x"] {
            assert!(ok.parse::<Domain>().is_ok(), "{ok}");
        }
        for bad in [
            "", "Org", "org..x", ".org", "org.", "../etc", "org/x", "-org", "org._x", "any",
            "any.x", "or g",
        ] {
            assert!(bad.parse::<Domain>().is_err(), "{bad}");
        }
        assert!("anything.x".parse::<Domain>().is_ok());
        let long = vec!["a"; 128].join(".");
        assert_eq!(long.len(), 255);
        assert!(long.parse::<Domain>().is_ok());
        assert!(format!("{long}b").parse::<Domain>().is_err());
    }

    #[test]
    fn branch_and_membership() {
        let d: Domain = "org.example.sales".parse().unwrap();
        assert_eq!(
            d.branch().collect::<Vec<_>>(),
            ["org.example.sales", "org.example", "org"]
        );
        let org: Domain = "org".parse().unwrap();
        let orgx: Domain = "org.example".parse().unwrap();
        let orgxy: Domain = "org.examplex".parse().unwrap();
        assert!(d.is_in_branch_of(&org));
        assert!(d.is_in_branch_of(&orgx));
        assert!(d.is_in_branch_of(&d));
        assert!(!orgx.is_in_branch_of(&d));
        assert!(!orgxy.is_in_branch_of(&orgx));
    }

    #[test]
    fn task_ids() {
        for ok in ["order-1234", "a", "A.b_c-d", &"x".repeat(128)] {
            assert!(ok.parse::<TaskId>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "..",
            "a b",
            &"x".repeat(129),
            "é",
        ] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad}");
        }
        let a = TaskId::generate();
        let b = TaskId::generate();
        assert!(a < b, "{a} < {b}");
        assert!(a.as_str().parse::<TaskId>().is_ok());
    }

    #[test]
    fn taskees() {
        for ok in ["stamp", "a_b-C9", &"t".repeat(64)] {
            assert!(ok.parse::<Taskee>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a.b",
            "../../bin/sh",
            "/bin/sh",
            "a/b",
            "..",
            "_x",
            &"t".repeat(65),
        ] {
            assert!(bad.parse::<Taskee>().is_err(), "{bad}");
        }
    }

    #[test]
    fn nids() {
        assert_eq!(Nid::root().as_str(), "0");
        assert_eq!(Nid::root().child(1).child(0).as_str(), "0_1_0");
        for ok in ["0", "0_0", "0_12_3"] {
            assert!(ok.parse::<Nid>().is_ok(), "{ok}");
        }
        for bad in ["", "1", "0_", "0__1", "0_01", "0_a", "00"] {
            assert!(bad.parse::<Nid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_goes_through_validation() {
        assert!(serde_json::from_str::<Domain>("\"../x\"").is_err());
        let t: Taskee = serde_json::from_str("\"stamp\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"stamp\"");
    }
}
