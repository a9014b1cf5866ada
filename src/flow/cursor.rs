//! The cursor: what runs next. One event's work on a flow's progress:
//! entering nodes (down the tree), passing a finished node's outcome up to
//! its ancestors, merging, failing, cancelling and skipping. Used by
//! [`Flow`](super::run::Flow), which holds the public side.

use serde_json::Value;

use super::merge::{apply_set, merge};
use super::run::{
    Action, Conditions, Cursor, End, Ended, NodeError, NodeProgress, Progress, Step, TaskRun,
};
use super::tree::{self, FlowNode, Kind, Merge, OnError, MAX_NODES};
use crate::model::names::Nid;
use crate::model::task::{ErrorKind, Object};

/// The input of a running node. A run of an `each` stores none (it would
/// copy the whole array once per run): its input is the `each`'s input
/// with `item` and `index` set, rebuilt here when it is needed.
pub(super) fn input_of(tree: &FlowNode, progress: &Progress, nid: &Nid) -> Object {
    let stored = match progress.nodes.get(nid.as_str()) {
        Some(NodeProgress::Running { input, .. }) => input,
        _ => return Object::new(),
    };
    if !stored.is_empty() {
        return stored.clone();
    }
    let Some((parent, i)) = parent_of(nid) else {
        return Object::new();
    };
    let Some(Kind::Each { key, .. }) = tree::at(tree, &parent).map(|n| &n.kind) else {
        return Object::new();
    };
    let mut input = input_of(tree, progress, &parent);
    let item = input
        .get(key.as_str())
        .and_then(|items| items.get(i))
        .cloned()
        .unwrap_or(Value::Null);
    input.insert("item".into(), item);
    input.insert("index".into(), i.into());
    input
}

/// Whether `nid` is a run of an `each`.
pub(super) fn is_each_run(tree: &FlowNode, nid: &Nid) -> bool {
    parent_of(nid).is_some_and(|(parent, _)| {
        tree::at(tree, &parent).is_some_and(|p| matches!(p.kind, Kind::Each { .. }))
    })
}

pub(super) fn is_task(tree: &FlowNode, nid: &Nid) -> bool {
    tree::at(tree, nid).is_some_and(|n| matches!(n.kind, Kind::Task { .. }))
}

pub(super) fn aborted(message: &str) -> NodeProgress {
    NodeProgress::Failed {
        kind: ErrorKind::Aborted,
        message: message.to_string(),
        task: None,
    }
}

pub(super) fn task_action(nid: &Nid, node: &FlowNode, payload: Option<Object>) -> Option<Action> {
    match &node.kind {
        Kind::Task {
            taskee,
            options,
            priority,
            headers,
        } => Some(Action::Task {
            nid: nid.clone(),
            taskee: taskee.clone(),
            payload,
            options: options.clone(),
            priority: *priority,
            headers: headers.clone(),
        }),
        _ => None,
    }
}

/// A failure on its way up: where it began, its kind and message.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) nid: Nid,
    pub(super) kind: ErrorKind,
    pub(super) message: String,
}

impl Failure {
    fn user(nid: &Nid, message: String) -> Failure {
        Failure {
            nid: nid.clone(),
            kind: ErrorKind::User,
            message,
        }
    }
}

/// A node's result: its output, or the failure it passes up.
pub(super) type Outcome = Result<Object, Failure>;

/// One event's work: the tree, the progress it changes, and the step it
/// builds.
///
/// `enter` runs down the tree (at most [`tree::MAX_DEPTH`] deep) and
/// returns `Some(outcome)` when the node finished at once; `bubble` climbs
/// from a finished node to its ancestors with a loop, so that a long
/// sequence of nodes that finish at once never deepens the stack.
pub(super) struct Machine<'a> {
    pub(super) tree: &'a FlowNode,
    pub(super) progress: &'a mut Progress,
    pub(super) cond: &'a mut dyn Conditions,
    pub(super) now_ms: i64,
    pub(super) step: Step,
}

/// An `each` node's fields.
#[derive(Clone, Copy)]
struct Each<'a> {
    key: &'a str,
    body: &'a FlowNode,
    concurrency: Option<u32>,
    into: Option<&'a str>,
}

impl<'a> Machine<'a> {
    fn set(&mut self, nid: &Nid, p: NodeProgress) {
        self.progress.nodes.insert(nid.to_string(), p);
    }

    /// Enters `node` at `nid` with `input`; `Some` when it finished at once
    /// (the outcome after its `on_error`).
    pub(super) fn enter(
        &mut self,
        nid: &Nid,
        node: &'a FlowNode,
        input: Object,
    ) -> Option<Outcome> {
        let r = match &node.kind {
            Kind::Task { .. } => {
                self.step
                    .actions
                    .extend(task_action(nid, node, Some(input.clone())));
                self.set(nid, NodeProgress::Running { input, again: None });
                return None;
            }
            Kind::Sleep(d) => {
                let ms = i64::try_from(d.0.as_millis()).unwrap_or(i64::MAX);
                let until_ms = self.now_ms.saturating_add(ms);
                self.step.actions.push(Action::Sleep {
                    nid: nid.clone(),
                    until_ms,
                });
                self.set(nid, NodeProgress::Sleeping { input, until_ms });
                return None;
            }
            Kind::Set(values) => {
                let mut out = input.clone();
                apply_set(&mut out, values);
                Ok(out)
            }
            Kind::Sequence(children) => {
                self.set(nid, running(&input));
                self.sequence_from(nid, children, 0, input.clone())?
            }
            Kind::Concurrence { children, merge } => {
                self.set(nid, running(&input));
                self.enter_concurrence(nid, children, *merge, &input)?
            }
            Kind::If {
                cond,
                then,
                otherwise,
            } => self.enter_if(nid, cond, then, otherwise.as_deref(), &input)?,
            Kind::Each {
                key,
                body,
                concurrency,
                into,
            } => {
                let each = Each {
                    key,
                    body,
                    concurrency: *concurrency,
                    into: into.as_deref(),
                };
                self.enter_each(nid, each, &input)?
            }
            Kind::Stored(name) => Err(Failure {
                nid: nid.clone(),
                kind: ErrorKind::Config,
                message: format!("stored flow {} was not resolved", crate::text::quoted(name)),
            }),
        };
        Some(self.settle(nid, node.on_error, input, r, None))
    }

    /// Records a finished node; applies its `on_error`.
    pub(super) fn settle(
        &mut self,
        nid: &Nid,
        on_error: OnError,
        input: Object,
        r: Outcome,
        task: Option<TaskRun>,
    ) -> Outcome {
        match r {
            Ok(output) => {
                let done = NodeProgress::Done {
                    output: self.kept_output(nid, &output),
                    task,
                };
                self.set(nid, done);
                self.prune_below(nid);
                Ok(output)
            }
            Err(f) => {
                let failed = NodeProgress::Failed {
                    kind: f.kind,
                    message: f.message.clone(),
                    task,
                };
                self.set(nid, failed);
                if on_error == OnError::Continue {
                    self.progress.errors.push(NodeError {
                        nid: nid.to_string(),
                        kind: f.kind,
                        message: f.message,
                    });
                    Ok(input)
                } else {
                    Err(f)
                }
            }
        }
    }

    /// What of a finished node's output its progress keeps: only what a
    /// later event may read. A child of a `sequence` or an `if` hands its
    /// output on at once (as the next child's input, or as the `if`'s
    /// output), a run of an `each` is read for its `item` only, a branch of
    /// a `concurrence` whole (it is merged when the last one ends), the
    /// root whole. Keeping less keeps the progress, rewritten at every
    /// node's end, from growing with every payload that went through.
    fn kept_output(&self, nid: &Nid, output: &Object) -> Object {
        let Some((parent, _)) = parent_of(nid) else {
            return output.clone();
        };
        match tree::at(self.tree, &parent).map(|p| &p.kind) {
            Some(Kind::Sequence(_) | Kind::If { .. }) => Object::new(),
            Some(Kind::Each { .. }) => output
                .get("item")
                .map(|item| Object::from_iter([("item".to_string(), item.clone())]))
                .unwrap_or_default(),
            _ => output.clone(),
        }
    }

    /// Forgets the outputs below a finished node: nothing reads them any
    /// more (its own output, or its failure, stands for them).
    fn prune_below(&mut self, nid: &Nid) {
        // Descendants' nids start with "<nid>_".
        self.progress
            .nodes
            .update_prefix(&format!("{nid}_"), |_, p| match p {
                NodeProgress::Done { output, .. } if !output.is_empty() => {
                    *output = Object::new();
                    true
                }
                _ => false,
            });
    }

    /// Passes a finished node's outcome up, ancestor by ancestor, until one
    /// waits for more, or the root finishes.
    pub(super) fn bubble(&mut self, mut nid: Nid, mut r: Outcome) {
        loop {
            let Some((parent, idx)) = parent_of(&nid) else {
                self.finish_root(r);
                return;
            };
            let Some(pnode) = tree::at(self.tree, &parent) else {
                return;
            };
            if !matches!(
                self.progress.nodes.get(parent.as_str()),
                Some(NodeProgress::Running { .. })
            ) {
                return;
            }
            let input = input_of(self.tree, self.progress, &parent);
            let Some(out) = self.child_finished(&parent, pnode, idx, r, &input) else {
                return;
            };
            r = self.settle(&parent, pnode.on_error, input, out, None);
            nid = parent;
        }
    }

    pub(super) fn finish_root(&mut self, r: Outcome) {
        let ended = match r {
            Ok(payload) => Ended::Completed { payload },
            Err(f) => Ended::Failed {
                nid: f.nid.to_string(),
                kind: f.kind,
                message: f.message,
            },
        };
        self.step.end = Some(End::from(&ended));
        self.progress.end = Some(ended);
    }

    /// Child `idx` of the running container `pnid` finished with `r`;
    /// `Some` when the container finished too (before its `on_error`).
    fn child_finished(
        &mut self,
        pnid: &Nid,
        pnode: &'a FlowNode,
        idx: usize,
        r: Outcome,
        input: &Object,
    ) -> Option<Outcome> {
        match (&pnode.kind, r) {
            (Kind::Sequence(children), Ok(out)) => self.sequence_from(pnid, children, idx + 1, out),
            (Kind::Sequence(children), Err(f)) => {
                self.skip(pnid, idx + 1..children.len());
                Some(Err(f))
            }
            (Kind::Concurrence { children, merge }, Ok(_)) => {
                let c = self.cursor_after_child(pnid, children.len());
                if c.finished < children.len() {
                    self.progress.cursors.insert(pnid.to_string(), c);
                    return None;
                }
                self.progress.cursors.remove(pnid.as_str());
                Some(Ok(self.merged(pnid, children, *merge, input)))
            }
            (Kind::Concurrence { .. }, Err(f)) => {
                self.cancel_below(pnid, &f.nid);
                Some(Err(f))
            }
            (Kind::If { .. }, r) => Some(r),
            (
                Kind::Each {
                    key,
                    body,
                    concurrency,
                    into,
                },
                r,
            ) => {
                let each = Each {
                    key,
                    body,
                    concurrency: *concurrency,
                    into: into.as_deref(),
                };
                let items = input
                    .get(each.key)
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let c = self.cursor_after_child(pnid, items);
                match r {
                    Ok(_) => self.fill_each(pnid, each, input, c),
                    Err(f) => {
                        self.cancel_below(pnid, &f.nid);
                        self.skip(pnid, c.started..items);
                        Some(Err(f))
                    }
                }
            }
            _ => None,
        }
    }

    /// Enters the children of a sequence from `from` on, while they finish
    /// at once.
    fn sequence_from(
        &mut self,
        nid: &Nid,
        children: &'a [FlowNode],
        from: usize,
        input: Object,
    ) -> Option<Outcome> {
        let mut cur = input;
        for (i, child) in children.iter().enumerate().skip(from) {
            match self.enter(&nid.child(i), child, cur)? {
                Ok(out) => cur = out,
                Err(f) => {
                    self.skip(nid, i + 1..children.len());
                    return Some(Err(f));
                }
            }
        }
        Some(Ok(cur))
    }

    fn enter_concurrence(
        &mut self,
        nid: &Nid,
        children: &'a [FlowNode],
        merge: Merge,
        input: &Object,
    ) -> Option<Outcome> {
        let mut finished = 0;
        for (i, child) in children.iter().enumerate() {
            match self.enter(&nid.child(i), child, input.clone()) {
                None => {}
                Some(Ok(_)) => finished += 1,
                Some(Err(f)) => {
                    self.cancel_below(nid, &f.nid);
                    self.skip(nid, i + 1..children.len());
                    return Some(Err(f));
                }
            }
        }
        if finished == children.len() {
            return Some(Ok(self.merged(nid, children, merge, input)));
        }
        let c = Cursor {
            started: children.len(),
            finished,
        };
        self.progress.cursors.insert(nid.to_string(), c);
        None
    }

    /// The merged output of a concurrence whose children all finished
    /// (a child failed with `continue` gave the input).
    fn merged(&self, nid: &Nid, children: &[FlowNode], mode: Merge, input: &Object) -> Object {
        let output = |i: usize| match self.progress.nodes.get(nid.child(i).as_str()) {
            Some(NodeProgress::Done { output, .. }) => output.clone(),
            _ => input.clone(),
        };
        let outputs = match (mode, children.len()) {
            (_, 0) => Vec::new(),
            (Merge::First, _) => vec![output(0)],
            (Merge::Last, n) => vec![output(n - 1)],
            (Merge::Deep, n) => (0..n).map(output).collect(),
        };
        merge(mode, outputs, input)
    }

    fn enter_if(
        &mut self,
        nid: &Nid,
        cond: &str,
        then: &'a FlowNode,
        otherwise: Option<&'a FlowNode>,
        input: &Object,
    ) -> Option<Outcome> {
        let taken = match self.cond.eval(nid, cond, input) {
            Ok(b) => b,
            Err(msg) => {
                let msg = format!(
                    "`if` expression {} failed: {msg}",
                    crate::text::quoted(cond)
                );
                return Some(Err(Failure::user(nid, msg)));
            }
        };
        self.set(nid, running(input));
        let branch = match (taken, otherwise) {
            (true, _) => Some((0, then)),
            (false, e) => e.map(|e| (1, e)),
        };
        if taken && otherwise.is_some() {
            self.set(&nid.child(1), NodeProgress::Skipped);
        } else if !taken {
            self.set(&nid.child(0), NodeProgress::Skipped);
        }
        match branch {
            Some((i, node)) => self.enter(&nid.child(i), node, input.clone()),
            None => Some(Ok(input.clone())),
        }
    }

    fn enter_each(&mut self, nid: &Nid, each: Each<'a>, input: &Object) -> Option<Outcome> {
        let n = match input.get(each.key) {
            Some(Value::Array(items)) => items.len(),
            found => {
                let what = match found {
                    None => "missing".to_string(),
                    Some(v) => format!("{}, not an array", type_name(v)),
                };
                let msg = format!("`each`: payload.{} is {what}", each.key);
                return Some(Err(Failure::user(nid, msg)));
            }
        };
        let per_run = tree::count(each.body);
        let total = tree::count(self.tree)
            .saturating_add(self.progress.spawned)
            .saturating_add(n.saturating_mul(per_run));
        if total > MAX_NODES {
            let msg = format!(
                "`each`: {n} runs of {per_run} nodes would take the flow to {total} nodes (at most {MAX_NODES})"
            );
            return Some(Err(Failure::user(nid, msg)));
        }
        self.progress.spawned += n * per_run;
        self.set(nid, running(input));
        self.fill_each(nid, each, input, Cursor::default())
    }

    /// Starts runs of an `each` while it has room, in element order;
    /// `Some` once every run has finished (or one failed).
    fn fill_each(
        &mut self,
        nid: &Nid,
        each: Each<'a>,
        input: &Object,
        mut c: Cursor,
    ) -> Option<Outcome> {
        let empty = Vec::new();
        let items = match input.get(each.key) {
            Some(Value::Array(items)) => items,
            _ => &empty,
        };
        let limit = each.concurrency.map_or(usize::MAX, |c| c.max(1) as usize);
        while c.started < items.len() && c.started - c.finished < limit {
            let i = c.started;
            c.started += 1;
            let run = nid.child(i);
            if matches!(each.body.kind, Kind::Task { .. }) {
                // A task run: its input is derived when it runs (see
                // `input_of`), never copied here.
                self.step.actions.extend(task_action(&run, each.body, None));
                self.set(&run, running(&Object::new()));
                continue;
            }
            let mut run_input = input.clone();
            run_input.insert("item".into(), items[i].clone());
            run_input.insert("index".into(), i.into());
            match self.enter(&run, each.body, run_input) {
                None => {
                    // Running: its input is rebuilt from the `each`'s.
                    if let Some(NodeProgress::Running { input, .. }) =
                        self.progress.nodes.get_mut(run.as_str())
                    {
                        *input = Object::new();
                    }
                }
                Some(Ok(_)) => c.finished += 1,
                Some(Err(f)) => {
                    self.cancel_below(nid, &f.nid);
                    self.skip(nid, c.started..items.len());
                    return Some(Err(f));
                }
            }
        }
        if c.finished < items.len() {
            self.progress.cursors.insert(nid.to_string(), c);
            return None;
        }
        self.progress.cursors.remove(nid.as_str());
        let results = (0..items.len())
            .map(|i| match self.progress.nodes.get(nid.child(i).as_str()) {
                Some(NodeProgress::Done { output, .. }) => {
                    output.get("item").cloned().unwrap_or(Value::Null)
                }
                // Failed with `continue`: the run's input, whose item is
                // the element.
                _ => items[i].clone(),
            })
            .collect();
        let mut out = input.clone();
        out.insert(
            each.into.unwrap_or(each.key).to_string(),
            Value::Array(results),
        );
        Some(Ok(out))
    }

    /// The cursor of a running container once one more child has
    /// finished (`n`: its number of children or runs); rebuilt from the
    /// children's progress when missing.
    fn cursor_after_child(&self, nid: &Nid, n: usize) -> Cursor {
        if let Some(c) = self.progress.cursors.get(nid.as_str()) {
            return Cursor {
                started: c.started,
                finished: c.finished + 1,
            };
        }
        let mut c = Cursor::default();
        for i in 0..n {
            match self.progress.nodes.get(nid.child(i).as_str()) {
                None | Some(NodeProgress::Skipped) => {}
                Some(p) => {
                    c.started += 1;
                    c.finished += usize::from(p.is_final());
                }
            }
        }
        c
    }

    /// Marks children `range` of `nid` skipped.
    fn skip(&mut self, nid: &Nid, range: std::ops::Range<usize>) {
        for i in range {
            self.set(&nid.child(i), NodeProgress::Skipped);
        }
    }

    /// Stops everything still running below `nid` because `origin` failed:
    /// [`Action::Cancel`] for task nodes; all recorded failed, `aborted`.
    fn cancel_below(&mut self, nid: &Nid, origin: &Nid) {
        let prefix = format!("{nid}_");
        let message = format!("cancelled because node {origin} failed");
        let mut cancelled = Vec::new();
        self.progress.nodes.update_prefix(&prefix, |key, p| {
            if p.is_final() {
                return false;
            }
            if matches!(p, NodeProgress::Running { .. }) {
                cancelled.push(key.to_string());
            }
            *p = aborted(&message);
            true
        });
        for key in cancelled {
            if let Ok(n) = key.parse::<Nid>() {
                if is_task(self.tree, &n) {
                    self.step.actions.push(Action::Cancel { nid: n });
                }
            }
        }
        self.progress.cursors.remove_prefix(&prefix);
        self.progress.cursors.remove(nid.as_str());
    }
}

fn running(input: &Object) -> NodeProgress {
    NodeProgress::Running {
        input: input.clone(),
        again: None,
    }
}

/// The parent of a nid and the nid's position in it; `None` for the root.
fn parent_of(nid: &Nid) -> Option<(Nid, usize)> {
    let (parent, last) = nid.as_str().rsplit_once('_')?;
    Some((parent.parse().ok()?, last.parse().ok()?))
}

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
