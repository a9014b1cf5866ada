//! The model: validated names, the task file and record, points and
//! durations. Wire types only: nothing here touches the filesystem.

pub mod names;
pub mod point;
pub mod schema;
pub mod task;

/// A JSON number as an integer, if it is one: `-0` (which serde_json
/// reads as the float −0.0, as it does `-0.0`) counts as 0; `1.0` and
/// `1e3` do not count.
pub fn json_int(v: &serde_json::Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .is_some_and(|f| f == 0.0 && f.is_sign_negative())
            .then_some(0)
    })
}

/// A count for `retries`: what [`json_int`] reads, from 0 to `u32::MAX`.
pub fn json_count(v: &serde_json::Value) -> Option<u32> {
    json_int(v).and_then(|n| u32::try_from(n).ok())
}

/// What a count must be, in the messages that refuse one.
pub const COUNT_EXPECTED: &str = "a non-negative integer (at most 4294967295)";

#[cfg(test)]
mod tests {
    use super::{json_count, json_int};
    use serde_json::json;

    #[test]
    fn integers_include_minus_zero_but_no_float() {
        let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(json_int(&parse("-0")), Some(0));
        assert_eq!(json_int(&parse("-7")), Some(-7));
        assert_eq!(json_int(&parse("0.0")), None);
        assert_eq!(json_int(&parse("1.5")), None);
        assert_eq!(json_int(&json!("3")), None);
        assert_eq!(json_count(&parse("-0")), Some(0));
        assert_eq!(json_count(&parse("4294967295")), Some(u32::MAX));
        assert_eq!(json_count(&parse("4294967296")), None);
        assert_eq!(json_count(&parse("-1")), None);
    }
}
