//! The model: validated names, the task file and record, points and
//! durations. Wire types only: nothing here touches the filesystem.

pub mod names;
pub mod point;
pub mod schema;
pub mod task;

/// A JSON number as an integer, if it is one: a number with no fractional
/// part, as JSON Schema's `integer` says (`5`, `5.0`, `5e0`, and `-0`,
/// which serde_json reads as the float −0.0); `1.5` and strings are not.
pub fn json_int(v: &serde_json::Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        let f = v.as_f64()?;
        // i64's range as floats: −2^63 is exact, 2^63 is one past the end.
        let bound = (1u64 << 63) as f64;
        (f.fract() == 0.0 && (-bound..bound).contains(&f)).then_some(f as i64)
    })
}

/// A count for `retries`: what [`json_int`] reads, from 0 to `u32::MAX`.
pub fn json_count(v: &serde_json::Value) -> Option<u32> {
    json_int(v).and_then(|n| u32::try_from(n).ok())
}

/// What a count must be, in the messages that refuse one.
pub const COUNT_EXPECTED: &str = "a non-negative integer (at most 4294967295)";

/// Serde readers of counts in files read with serde (`tasker.json`): any
/// JSON Schema integer, as [`json_count`] reads it (`5`, `5.0`), so that a
/// number the task file takes is taken there too.
pub mod count {
    use serde::de::{Deserialize, Deserializer, Error, Unexpected};
    use serde_json::Value;

    /// A count (`u32`).
    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let v = Value::deserialize(d)?;
        super::json_count(&v).ok_or_else(|| refuse(&v))
    }

    /// An optional count (`null` is none).
    pub fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => Ok(None),
            Some(v) => super::json_count(&v).map(Some).ok_or_else(|| refuse(&v)),
        }
    }

    fn refuse<E: Error>(v: &Value) -> E {
        let unexpected = match v {
            Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Unexpected::Signed(i),
                (_, Some(u), _) => Unexpected::Unsigned(u),
                (_, _, f) => Unexpected::Float(f.unwrap_or(f64::NAN)),
            },
            Value::String(s) => Unexpected::Str(s),
            Value::Array(_) => Unexpected::Seq,
            Value::Object(_) => Unexpected::Map,
        };
        match v {
            Value::Number(_) => E::invalid_value(unexpected, &super::COUNT_EXPECTED),
            _ => E::invalid_type(unexpected, &super::COUNT_EXPECTED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{json_count, json_int};
    use serde_json::json;

    #[test]
    fn integers_are_numbers_without_a_fractional_part() {
        let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(json_int(&parse("-0")), Some(0));
        assert_eq!(json_int(&parse("-0.0")), Some(0));
        assert_eq!(json_int(&parse("0.0")), Some(0));
        assert_eq!(json_int(&parse("-7")), Some(-7));
        assert_eq!(json_int(&parse("5.0")), Some(5));
        assert_eq!(json_int(&parse("1e3")), Some(1000));
        assert_eq!(json_int(&parse("1.5")), None);
        assert_eq!(json_int(&parse("1e300")), None);
        assert_eq!(json_int(&parse("-9223372036854775808.0")), Some(i64::MIN));
        assert_eq!(json_int(&json!("3")), None);
        assert_eq!(json_count(&parse("-0")), Some(0));
        assert_eq!(json_count(&parse("4294967295")), Some(u32::MAX));
        assert_eq!(json_count(&parse("4294967296")), None);
        assert_eq!(json_count(&parse("-1")), None);
    }
}
