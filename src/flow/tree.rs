//! The flow tree (SPEC 12): a flow's JSON parsed into [`FlowNode`]s, with a
//! reason a person understands for every refusal; stored flows inlined
//! ([`resolve`], in `stored.rs`); the limits ([`MAX_DEPTH`], [`MAX_NODES`]);
//! and the addressing of nodes by nid ([`at`]).
//!
//! Nids: the root is `0`; the children of a `sequence` or `concurrence` are
//! `<nid>_<i>`; an `if` node's `then` is `<nid>_0` and its `else`
//! `<nid>_1`; run *i* of an `each` is `<nid>_<i>` (its body, and the body's
//! descendants below that). Parse errors name the node by this path; inside
//! an `each` body, where the run is not known yet, the run's place is
//! written `*` (`node 0_2_*_1: …`).

use serde_json::Value;

use crate::model::names::{Nid, Taskee};
use crate::model::task::{Dur, Object, TaskOptions};

pub use super::stored::{resolve, valid_flow_name};

/// The deepest a flow may nest (the root alone has depth 1).
pub const MAX_DEPTH: usize = 64;
/// The most nodes a flow may have, containers included (and, while it runs,
/// the nodes its `each` runs add).
pub const MAX_NODES: usize = 10_000;

/// One node of a flow: what it does, and what its failure does.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowNode {
    pub kind: Kind,
    pub on_error: OnError,
}

/// `on_error`: whether a failure of the node fails its parent (`fail`, the
/// default) or lets the node's input pass through as its output
/// (`continue`, the failure being noted in the record's `errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    #[default]
    Fail,
    Continue,
}

/// How a `concurrence` merges its branches' outputs, in branch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Merge {
    /// Objects merged key by key, recursively; a later branch wins a
    /// conflict; anything but two objects is replaced.
    #[default]
    Deep,
    /// The first branch's output.
    First,
    /// The last branch's output.
    Last,
}

/// The kinds of node of SPEC 12.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `{ "task": "T", … }`: the per-task options as written on the node
    /// (the engine applies the flow's own where these are `None`).
    Task {
        taskee: Taskee,
        options: TaskOptions,
        priority: Option<i32>,
        headers: Option<Object>,
    },
    Sequence(Vec<FlowNode>),
    Concurrence {
        children: Vec<FlowNode>,
        merge: Merge,
    },
    If {
        cond: String,
        then: Box<FlowNode>,
        otherwise: Option<Box<FlowNode>>,
    },
    Set(Object),
    Each {
        key: String,
        body: Box<FlowNode>,
        concurrency: Option<u32>,
        into: Option<String>,
    },
    Sleep(Dur),
    /// `{ "flow": "NAME" }`, before [`resolve`] inlines it.
    Stored(String),
}

impl FlowNode {
    /// A node with `on_error` `fail`.
    pub fn new(kind: Kind) -> FlowNode {
        FlowNode {
            kind,
            on_error: OnError::Fail,
        }
    }

    /// The node's children, in nid order (an `each` has its body once).
    pub fn children(&self) -> Vec<&FlowNode> {
        match &self.kind {
            Kind::Sequence(c) | Kind::Concurrence { children: c, .. } => c.iter().collect(),
            Kind::If {
                then, otherwise, ..
            } => std::iter::once(&**then)
                .chain(otherwise.as_deref())
                .collect(),
            Kind::Each { body, .. } => vec![&**body],
            Kind::Task { .. } | Kind::Set(_) | Kind::Sleep(_) | Kind::Stored(_) => Vec::new(),
        }
    }

    /// The node's kind key, as written in JSON (`"task"`, `"each"`, …).
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            Kind::Task { .. } => "task",
            Kind::Sequence(_) => "sequence",
            Kind::Concurrence { .. } => "concurrence",
            Kind::If { .. } => "if",
            Kind::Set(_) => "set",
            Kind::Each { .. } => "each",
            Kind::Sleep(_) => "sleep",
            Kind::Stored(_) => "flow",
        }
    }
}

/// Why a flow was refused. Every message names the node (by its path from
/// the root, see the module doc) or the stored flow at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("node {node}: a node must be a JSON object, not {found}")]
    NotObject { node: String, found: &'static str },
    #[error("node {node}: unknown key {}", crate::text::quoted(.key))]
    UnknownKey { node: String, key: String },
    #[error(
        "node {node}: no kind key (give one of task, sequence, concurrence, if, set, each, sleep, flow)"
    )]
    NoKind { node: String },
    #[error("node {node}: two kind keys {} and {} (a node has exactly one)", crate::text::quoted(.first), crate::text::quoted(.second))]
    TwoKinds {
        node: String,
        first: &'static str,
        second: &'static str,
    },
    #[error("node {node}: {} belongs on {owner} nodes, not on {kind} nodes", crate::text::quoted(.key))]
    Misplaced {
        node: String,
        key: String,
        owner: &'static str,
        kind: &'static str,
    },
    #[error("node {node}: `{key}` must be {expected}")]
    BadValue {
        node: String,
        key: &'static str,
        expected: &'static str,
    },
    #[error("node {node}: `{kind}` needs `{key}`")]
    Missing {
        node: String,
        kind: &'static str,
        key: &'static str,
    },
    #[error("node {node}: invalid duration for `{key}`: {message}")]
    Duration {
        node: String,
        key: &'static str,
        message: String,
    },
    #[error("node {node}: {message}")]
    Taskee { node: String, message: String },
    #[error("invalid stored flow name {}: [A-Za-z0-9][A-Za-z0-9_-]{{0,63}} (no dot, no slash)", crate::text::quoted(.0))]
    FlowName(String),
    #[error("flow is deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("flow has {0} nodes (at most {MAX_NODES})")]
    TooMany(usize),
    #[error("unknown stored flow {}", crate::text::quoted(.0))]
    UnknownStored(String),
    #[error("stored flow {} includes itself ({chain})", crate::text::quoted(.name))]
    Cycle { name: String, chain: String },
    #[error("stored flows nest more than {MAX_DEPTH} deep ({chain})")]
    StoredTooDeep { chain: String },
    #[error("stored flow {}: {message}", crate::text::quoted(.name))]
    Lookup { name: String, message: String },
    #[error("stored flow {}: {error}", crate::text::quoted(.name))]
    InStored { name: String, error: Box<FlowError> },
}

// ---------------------------------------------------------------- parse

/// The kind keys, in the order a node with two of them names them.
const KINDS: &[&str] = &[
    "task",
    "sequence",
    "concurrence",
    "if",
    "set",
    "each",
    "sleep",
    "flow",
];

/// Every other key a node may hold, with the kind it belongs to (`None`:
/// any kind).
const KEYS: &[(&str, Option<&str>)] = &[
    ("on_error", None),
    ("timeout", Some("task")),
    ("start_timeout", Some("task")),
    ("retries", Some("task")),
    ("retry_on_timeout", Some("task")),
    ("priority", Some("task")),
    ("headers", Some("task")),
    ("merge", Some("concurrence")),
    ("then", Some("if")),
    ("else", Some("if")),
    ("do", Some("each")),
    ("concurrency", Some("each")),
    ("into", Some("each")),
];

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a flow (SPEC 12): every node is an object with exactly one kind
/// key and the common keys; unknown keys, keys of another kind of node and
/// values of the wrong type are refused. `null` for an optional key counts
/// as absent. A string at the root is the name of a stored flow (a task
/// file's `"flow": "NAME"`) and parses to a [`Kind::Stored`] node.
///
/// Also refuses a flow deeper than [`MAX_DEPTH`] or with more than
/// [`MAX_NODES`] nodes (inlining stored flows only adds to both; [`resolve`]
/// checks them again on the whole).
pub fn parse(v: &Value) -> Result<FlowNode, FlowError> {
    if let Value::String(name) = v {
        if !valid_flow_name(name) {
            return Err(FlowError::FlowName(name.clone()));
        }
        return Ok(FlowNode::new(Kind::Stored(name.clone())));
    }
    let node = parse_node(v, "0", 1)?;
    let n = count(&node);
    if n > MAX_NODES {
        return Err(FlowError::TooMany(n));
    }
    Ok(node)
}

fn parse_node(v: &Value, path: &str, depth: usize) -> Result<FlowNode, FlowError> {
    if depth > MAX_DEPTH {
        return Err(FlowError::TooDeep);
    }
    let node = || path.to_string();
    let Value::Object(obj) = v else {
        return Err(FlowError::NotObject {
            node: node(),
            found: type_name(v),
        });
    };
    let owner = |k: &str| KEYS.iter().find(|(key, _)| *key == k).map(|(_, o)| *o);
    if let Some(k) = obj
        .keys()
        .find(|k| !KINDS.contains(&k.as_str()) && owner(k).is_none())
    {
        return Err(FlowError::UnknownKey {
            node: node(),
            key: k.clone(),
        });
    }
    let mut kinds = KINDS.iter().copied().filter(|k| obj.contains_key(*k));
    let kind = match (kinds.next(), kinds.next()) {
        (None, _) => return Err(FlowError::NoKind { node: node() }),
        (Some(first), Some(second)) => {
            return Err(FlowError::TwoKinds {
                node: node(),
                first,
                second,
            })
        }
        (Some(k), None) => k,
    };
    for k in obj.keys() {
        if let Some(Some(o)) = owner(k) {
            if o != kind {
                return Err(FlowError::Misplaced {
                    node: node(),
                    key: k.clone(),
                    owner: o,
                    kind,
                });
            }
        }
    }
    let on_error = match obj.get("on_error") {
        None | Some(Value::Null) => OnError::Fail,
        Some(Value::String(s)) if s == "fail" => OnError::Fail,
        Some(Value::String(s)) if s == "continue" => OnError::Continue,
        Some(_) => return Err(bad(path, "on_error", "\"fail\" or \"continue\"")),
    };
    let kind = parse_kind(kind, obj, path, depth)?;
    Ok(FlowNode { kind, on_error })
}

fn bad(path: &str, key: &'static str, expected: &'static str) -> FlowError {
    FlowError::BadValue {
        node: path.to_string(),
        key,
        expected,
    }
}

/// An optional key: `None` when absent or `null`.
fn opt<'v>(obj: &'v Object, key: &str) -> Option<&'v Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn parse_kind(kind: &str, obj: &Object, path: &str, depth: usize) -> Result<Kind, FlowError> {
    let v = &obj[kind];
    let child = |v: &Value, i: &str| parse_node(v, &format!("{path}_{i}"), depth + 1);
    let children = |key: &'static str| -> Result<Vec<FlowNode>, FlowError> {
        let arr = v
            .as_array()
            .ok_or_else(|| bad(path, key, "an array of nodes"))?;
        arr.iter()
            .enumerate()
            .map(|(i, c)| child(c, &i.to_string()))
            .collect()
    };
    Ok(match kind {
        "task" => parse_task(v, obj, path)?,
        "sequence" => Kind::Sequence(children("sequence")?),
        "concurrence" => Kind::Concurrence {
            children: children("concurrence")?,
            merge: match opt(obj, "merge") {
                None => Merge::Deep,
                Some(Value::String(s)) if s == "deep" => Merge::Deep,
                Some(Value::String(s)) if s == "first" => Merge::First,
                Some(Value::String(s)) if s == "last" => Merge::Last,
                Some(_) => return Err(bad(path, "merge", "\"deep\", \"first\" or \"last\"")),
            },
        },
        "if" => Kind::If {
            cond: v
                .as_str()
                .ok_or_else(|| bad(path, "if", "a string"))?
                .to_string(),
            then: Box::new(child(
                opt(obj, "then").ok_or_else(|| missing(path, "if", "then"))?,
                "0",
            )?),
            otherwise: opt(obj, "else")
                .map(|e| child(e, "1").map(Box::new))
                .transpose()?,
        },
        "set" => Kind::Set(
            v.as_object()
                .ok_or_else(|| bad(path, "set", "an object of payload keys and values"))?
                .clone(),
        ),
        "each" => parse_each(v, obj, path, depth)?,
        "sleep" => Kind::Sleep(Dur::from_json(v).map_err(|message| FlowError::Duration {
            node: path.to_string(),
            key: "sleep",
            message,
        })?),
        _ => {
            let name = v
                .as_str()
                .ok_or_else(|| bad(path, "flow", "the name of a stored flow (a string)"))?;
            if !valid_flow_name(name) {
                return Err(FlowError::FlowName(name.to_string()));
            }
            Kind::Stored(name.to_string())
        }
    })
}

fn missing(path: &str, kind: &'static str, key: &'static str) -> FlowError {
    FlowError::Missing {
        node: path.to_string(),
        kind,
        key,
    }
}

fn parse_each(v: &Value, obj: &Object, path: &str, depth: usize) -> Result<Kind, FlowError> {
    let name = |v: Option<&Value>, key: &'static str| -> Result<Option<String>, FlowError> {
        match v {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(bad(path, key, "a payload key (a non-empty string)")),
        }
    };
    let key = name(Some(v), "each")?.unwrap_or_default();
    let body = opt(obj, "do").ok_or_else(|| missing(path, "each", "do"))?;
    let body = parse_node(body, &format!("{path}_*"), depth + 1)?;
    let concurrency = match opt(obj, "concurrency") {
        None => None,
        Some(c) => Some(
            c.as_u64()
                .filter(|n| *n >= 1)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad(path, "concurrency", "an integer of at least 1"))?,
        ),
    };
    Ok(Kind::Each {
        key,
        body: Box::new(body),
        concurrency,
        into: name(opt(obj, "into"), "into")?,
    })
}

fn parse_task(v: &Value, obj: &Object, path: &str) -> Result<Kind, FlowError> {
    let taskee = v
        .as_str()
        .ok_or_else(|| bad(path, "task", "a taskee (a string)"))?
        .parse::<Taskee>()
        .map_err(|e| FlowError::Taskee {
            node: path.to_string(),
            message: e.to_string(),
        })?;
    let dur = |key: &'static str| {
        opt(obj, key)
            .map(|v| {
                Dur::from_json(v).map_err(|message| FlowError::Duration {
                    node: path.to_string(),
                    key,
                    message,
                })
            })
            .transpose()
    };
    let options = TaskOptions {
        timeout: dur("timeout")?,
        start_timeout: dur("start_timeout")?,
        retries: opt(obj, "retries")
            .map(|v| {
                crate::model::json_count(v)
                    .ok_or_else(|| bad(path, "retries", crate::model::COUNT_EXPECTED))
            })
            .transpose()?,
        retry_on_timeout: opt(obj, "retry_on_timeout")
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| bad(path, "retry_on_timeout", "true or false"))
            })
            .transpose()?,
    };
    let priority = opt(obj, "priority")
        .map(|v| {
            crate::model::json_int(v)
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| bad(path, "priority", "an integer (i32)"))
        })
        .transpose()?;
    let headers = opt(obj, "headers")
        .map(|v| {
            v.as_object()
                .cloned()
                .ok_or_else(|| bad(path, "headers", "a JSON object"))
        })
        .transpose()?;
    Ok(Kind::Task {
        taskee,
        options,
        priority,
        headers,
    })
}

// ---------------------------------------------------------------- back to JSON

/// The node in SPEC 12 syntax; `parse(&to_json(n)) == Ok(n)` for every
/// node `parse` can return (durations are written in whole milliseconds,
/// which is all [`Dur`]'s display keeps). Defaults are left out
/// (`on_error` `fail`, `merge` `deep`).
pub fn to_json(node: &FlowNode) -> Value {
    let mut o = Object::new();
    let nodes = |c: &[FlowNode]| Value::Array(c.iter().map(to_json).collect());
    match &node.kind {
        Kind::Task {
            taskee,
            options,
            priority,
            headers,
        } => {
            o.insert("task".into(), taskee.as_str().into());
            if let Value::Object(opts) = serde_json::to_value(options).unwrap_or_default() {
                o.extend(opts);
            }
            if let Some(p) = priority {
                o.insert("priority".into(), (*p).into());
            }
            if let Some(h) = headers {
                o.insert("headers".into(), Value::Object(h.clone()));
            }
        }
        Kind::Sequence(c) => {
            o.insert("sequence".into(), nodes(c));
        }
        Kind::Concurrence { children, merge } => {
            o.insert("concurrence".into(), nodes(children));
            match merge {
                Merge::Deep => {}
                Merge::First => {
                    o.insert("merge".into(), "first".into());
                }
                Merge::Last => {
                    o.insert("merge".into(), "last".into());
                }
            }
        }
        Kind::If {
            cond,
            then,
            otherwise,
        } => {
            o.insert("if".into(), cond.as_str().into());
            o.insert("then".into(), to_json(then));
            if let Some(e) = otherwise {
                o.insert("else".into(), to_json(e));
            }
        }
        Kind::Set(values) => {
            o.insert("set".into(), Value::Object(values.clone()));
        }
        Kind::Each {
            key,
            body,
            concurrency,
            into,
        } => {
            o.insert("each".into(), key.as_str().into());
            o.insert("do".into(), to_json(body));
            if let Some(c) = concurrency {
                o.insert("concurrency".into(), (*c).into());
            }
            if let Some(i) = into {
                o.insert("into".into(), i.as_str().into());
            }
        }
        Kind::Sleep(d) => {
            o.insert("sleep".into(), d.to_string().into());
        }
        Kind::Stored(name) => {
            o.insert("flow".into(), name.as_str().into());
        }
    }
    if node.on_error == OnError::Continue {
        o.insert("on_error".into(), "continue".into());
    }
    Value::Object(o)
}

// ---------------------------------------------------------------- measures

/// The number of nodes, containers included (an `each` body once).
pub fn count(node: &FlowNode) -> usize {
    1 + node.children().into_iter().map(count).sum::<usize>()
}

/// The depth: the root alone is 1.
pub fn depth(node: &FlowNode) -> usize {
    1 + node.children().into_iter().map(depth).max().unwrap_or(0)
}

/// Every `if` expression, in tree order (to compile each once, and for
/// `spoolflow check`).
pub fn conditions(node: &FlowNode) -> Vec<&str> {
    let mut out = Vec::new();
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        if let Kind::If { cond, .. } = &n.kind {
            out.push(cond.as_str());
        }
        stack.extend(n.children().into_iter().rev());
    }
    out
}

/// The node at `nid` (see the module doc); `None` when no node is there.
/// Every run `<nid>_<i>` of an `each` addresses its body, whatever `i`.
pub fn at<'a>(root: &'a FlowNode, nid: &Nid) -> Option<&'a FlowNode> {
    let mut parts = nid.as_str().split('_');
    if parts.next() != Some("0") {
        return None;
    }
    let mut node = root;
    for part in parts {
        let i: usize = part.parse().ok()?;
        node = match &node.kind {
            Kind::Sequence(c) | Kind::Concurrence { children: c, .. } => c.get(i)?,
            Kind::If {
                then, otherwise, ..
            } => match i {
                0 => then,
                1 => otherwise.as_deref()?,
                _ => return None,
            },
            Kind::Each { body, .. } => body,
            Kind::Task { .. } | Kind::Set(_) | Kind::Sleep(_) | Kind::Stored(_) => return None,
        };
    }
    Some(node)
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
