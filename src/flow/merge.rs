//! Merge rules: how a `concurrence` combines its branches' outputs, and
//! how `set` changes a payload.

use serde_json::Value;

use super::tree::Merge;
use crate::model::task::Object;

/// Merges `top` into `base`: objects key by key, recursively; a key of
/// `top` wins a conflict; anything but two objects is replaced. Keys only
/// `base` has stay.
pub fn deep_merge(base: &mut Object, top: Object) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(Value::Object(b)), Value::Object(t)) => deep_merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The output of a concurrence whose branches gave `outputs`, in branch
/// order (not completion order); `input` when it has no branch.
pub fn merge(mode: Merge, outputs: Vec<Object>, input: &Object) -> Object {
    let mut outputs = outputs.into_iter();
    match mode {
        Merge::First => outputs.next(),
        Merge::Last => outputs.next_back(),
        Merge::Deep => outputs.reduce(|mut acc, o| {
            deep_merge(&mut acc, o);
            acc
        }),
    }
    .unwrap_or_else(|| input.clone())
}

/// `set`: each top-level key set to its value; `null` removes the key.
pub fn apply_set(payload: &mut Object, values: &Object) {
    for (k, v) in values {
        if v.is_null() {
            payload.remove(k);
        } else {
            payload.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        match v {
            Value::Object(o) => o,
            _ => unreachable!("test values are objects"),
        }
    }

    #[test]
    fn deep_merges_recursively_later_wins() {
        let a = obj(json!({"x": 1, "n": {"a": 1, "b": {"c": 1}}, "l": [1]}));
        let b = obj(json!({"y": 2, "n": {"b": {"d": 2}, "a": 9}, "l": [2, 3]}));
        let c = obj(json!({"n": 5}));
        let out = merge(Merge::Deep, vec![a.clone(), b.clone()], &Object::new());
        assert_eq!(
            Value::Object(out),
            json!({"x": 1, "y": 2, "n": {"a": 9, "b": {"c": 1, "d": 2}}, "l": [2, 3]})
        );
        let out = merge(Merge::Deep, vec![a.clone(), b.clone(), c], &Object::new());
        assert_eq!(out["n"], json!(5));
        assert_eq!(merge(Merge::First, vec![a.clone(), b.clone()], &c_in()), a);
        assert_eq!(merge(Merge::Last, vec![a, b.clone()], &c_in()), b);
        for m in [Merge::Deep, Merge::First, Merge::Last] {
            assert_eq!(merge(m, vec![], &c_in()), c_in());
        }
    }

    fn c_in() -> Object {
        obj(json!({"input": true}))
    }

    #[test]
    fn set_sets_and_removes() {
        let mut p = obj(json!({"a": 1, "b": 2}));
        apply_set(&mut p, &obj(json!({"a": null, "c": {"d": 1}, "b": [1]})));
        assert_eq!(Value::Object(p), json!({"b": [1], "c": {"d": 1}}));
    }
}
