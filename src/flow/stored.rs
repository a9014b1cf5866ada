//! Stored flows (SPEC 12): `{ "flow": "NAME" }` nodes inlined by
//! [`resolve`], once, when a flow is claimed, so that editing a stored flow
//! never changes a flow already running.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::tree::{parse, FlowError, FlowNode, Kind, OnError, MAX_DEPTH, MAX_NODES};

/// Whether `name` may name a stored flow: `[A-Za-z0-9][A-Za-z0-9_-]{0,63}`,
/// as a taskee (the engine builds `flows/NAME.json` from it, so no dot and
/// no slash).
pub fn valid_flow_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
}

/// Inlines every [`Kind::Stored`] node: `lookup(name)` returns the stored
/// file's JSON (`Ok(None)`: there is none), parsed as a tree and itself
/// resolved. Each name is looked up once, however often it is used.
///
/// Refused: an invalid or unknown name, a lookup's `Err(message)` (the
/// error names the stored flow), a stored flow that does not parse (the
/// error names the stored flow, then the node by its path inside that
/// flow), a stored flow that includes itself, stored flows included more
/// than [`MAX_DEPTH`] deep in one another, and a result deeper than
/// [`MAX_DEPTH`] or with more than [`MAX_NODES`] nodes (measured before it
/// is built, so a flow that would blow up exponentially costs nothing).
///
/// A `{ "flow": NAME, "on_error": "continue" }` node gives `continue` to
/// the inlined root; with `fail` (the default) the stored root keeps its
/// own `on_error`.
pub fn resolve(
    node: FlowNode,
    lookup: &mut dyn FnMut(&str) -> Result<Option<Value>, String>,
) -> Result<FlowNode, FlowError> {
    let mut r = Resolver {
        lookup,
        loaded: HashMap::new(),
        stack: Vec::new(),
    };
    for name in stored_names(&node) {
        r.load(name)?;
    }
    let (count, depth) = r.measure(&node);
    if depth > MAX_DEPTH {
        return Err(FlowError::TooDeep);
    }
    if count > MAX_NODES {
        return Err(FlowError::TooMany(count));
    }
    Ok(r.inline(node))
}

/// A stored flow, parsed, with the measures of its resolved tree.
struct Loaded {
    tree: FlowNode,
    count: usize,
    depth: usize,
}

struct Resolver<'l> {
    lookup: &'l mut dyn FnMut(&str) -> Result<Option<Value>, String>,
    loaded: HashMap<String, Loaded>,
    /// The stored flows being loaded, outermost first (for cycles).
    stack: Vec<String>,
}

impl Resolver<'_> {
    fn load(&mut self, name: &str) -> Result<(), FlowError> {
        if self.loaded.contains_key(name) {
            return Ok(());
        }
        if !valid_flow_name(name) {
            return Err(FlowError::FlowName(name.to_string()));
        }
        let chain = |from: usize, stack: &[String]| {
            let mut names: Vec<&str> = stack[from..].iter().map(String::as_str).collect();
            names.push(name);
            names.join(" -> ")
        };
        if let Some(pos) = self.stack.iter().position(|n| n == name) {
            return Err(FlowError::Cycle {
                name: name.to_string(),
                chain: chain(pos, &self.stack),
            });
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(FlowError::StoredTooDeep {
                chain: chain(0, &self.stack),
            });
        }
        let value = (self.lookup)(name)
            .map_err(|message| FlowError::Lookup {
                name: name.to_string(),
                message,
            })?
            .ok_or_else(|| FlowError::UnknownStored(name.to_string()))?;
        let tree = parse(&value).map_err(|e| FlowError::InStored {
            name: name.to_string(),
            error: Box::new(e),
        })?;
        self.stack.push(name.to_string());
        for inner in stored_names(&tree) {
            self.load(inner)?;
        }
        self.stack.pop();
        let (count, depth) = self.measure(&tree);
        self.loaded
            .insert(name.to_string(), Loaded { tree, count, depth });
        Ok(())
    }

    /// The count and depth of `node` once resolved (every name it uses is
    /// loaded). Saturating: a blow-up only has to exceed the limits.
    fn measure(&self, node: &FlowNode) -> (usize, usize) {
        if let Kind::Stored(name) = &node.kind {
            let l = &self.loaded[name];
            return (l.count, l.depth);
        }
        node.children()
            .into_iter()
            .map(|c| self.measure(c))
            .fold((1, 1), |(n, d), (cn, cd)| {
                (n.saturating_add(cn), d.max(cd.saturating_add(1)))
            })
    }

    fn inline(&self, node: FlowNode) -> FlowNode {
        let FlowNode { kind, on_error } = node;
        let kind = match kind {
            Kind::Stored(name) => {
                let mut inlined = self.inline(self.loaded[&name].tree.clone());
                if on_error == OnError::Continue {
                    inlined.on_error = OnError::Continue;
                }
                return inlined;
            }
            Kind::Sequence(c) => Kind::Sequence(self.inline_all(c)),
            Kind::Concurrence { children, merge } => Kind::Concurrence {
                children: self.inline_all(children),
                merge,
            },
            Kind::If {
                cond,
                then,
                otherwise,
            } => Kind::If {
                cond,
                then: Box::new(self.inline(*then)),
                otherwise: otherwise.map(|e| Box::new(self.inline(*e))),
            },
            Kind::Each {
                key,
                body,
                concurrency,
                into,
            } => Kind::Each {
                key,
                body: Box::new(self.inline(*body)),
                concurrency,
                into,
            },
            k @ (Kind::Task { .. } | Kind::Set(_) | Kind::Sleep(_)) => k,
        };
        FlowNode { kind, on_error }
    }

    fn inline_all(&self, nodes: Vec<FlowNode>) -> Vec<FlowNode> {
        nodes.into_iter().map(|n| self.inline(n)).collect()
    }
}

/// The names of the stored flows a tree uses, in tree order, each once.
fn stored_names(node: &FlowNode) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        if let Kind::Stored(name) = &n.kind {
            if seen.insert(name.as_str()) {
                out.push(name);
            }
        }
        stack.extend(n.children().into_iter().rev());
    }
    out
}
