//! The reply table of SPEC section 6: what a tasker's stdout (exit status
//! 0) asks for. Pure: bytes in, [`Reply`] out.

use serde_json::Value;

use crate::model::task::{Dur, Object};

/// The largest reply a tasker may write on stdout (SPEC 6).
pub const REPLY_LIMIT: usize = 16 * 1024 * 1024;

/// What a tasker's reply (exit status 0) asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Completed(Object),
    Failed(String),
    Refused(String),
    Uncompleted {
        payload: Object,
        after: Option<Dur>,
    },
    /// Anything else: fails the task (`user`) with this reason.
    Invalid(String),
}

/// Reads stdout by the table of SPEC 6. `payload` is the input payload
/// (kept when the reply carries none).
pub fn parse_reply(stdout: &[u8], payload: &Object) -> Reply {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Reply::Completed(payload.clone());
    }
    let value: Value = match serde_json::from_slice(stdout) {
        Ok(v) => v,
        Err(e) => {
            let head = String::from_utf8_lossy(&stdout[..stdout.len().min(80)]).into_owned();
            return Reply::Invalid(format!(
                "reply is not JSON ({e}): {}",
                crate::text::quoted(&head)
            ));
        }
    };
    let Value::Object(mut obj) = value else {
        return Reply::Invalid("reply is JSON but not an object".into());
    };
    let Some(point) = obj.remove("point") else {
        return Reply::Completed(obj);
    };
    let payload_of = |obj: &mut Object| -> Result<Object, String> {
        match obj.remove("payload") {
            None | Some(Value::Null) => Ok(payload.clone()),
            Some(Value::Object(o)) => Ok(o),
            Some(_) => Err("reply's \"payload\" is not a JSON object".into()),
        }
    };
    let reason_of = |obj: &Object| -> String {
        match obj.get("reason") {
            Some(Value::String(s)) => s.clone(),
            Some(v) if !v.is_null() => v.to_string(),
            _ => "no reason given".into(),
        }
    };
    match point.as_str() {
        Some("completed") => match payload_of(&mut obj) {
            Ok(p) => Reply::Completed(p),
            Err(e) => Reply::Invalid(e),
        },
        Some("failed") => Reply::Failed(reason_of(&obj)),
        Some("refused") => Reply::Refused(reason_of(&obj)),
        Some("uncompleted") => {
            let after = match obj.get("after") {
                None | Some(Value::Null) => None,
                Some(v) => match Dur::from_json(v) {
                    Ok(d) => Some(d),
                    Err(e) => return Reply::Invalid(format!("reply's \"after\": {e}")),
                },
            };
            match payload_of(&mut obj) {
                Ok(payload) => Reply::Uncompleted { payload, after },
                Err(e) => Reply::Invalid(e),
            }
        }
        Some(other) => Reply::Invalid(format!(
            "reply names unknown point {}",
            crate::text::quoted(other)
        )),
        None => Reply::Invalid("reply's \"point\" is not a string".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn obj(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn reply_table() {
        let p = obj(json!({"a": 1}));
        assert_eq!(parse_reply(b"", &p), Reply::Completed(p.clone()));
        assert_eq!(parse_reply(b" \n", &p), Reply::Completed(p.clone()));
        assert_eq!(
            parse_reply(br#"{"b":2}"#, &p),
            Reply::Completed(obj(json!({"b": 2})))
        );
        assert_eq!(
            parse_reply(br#"{"point":"completed","payload":{"c":3}}"#, &p),
            Reply::Completed(obj(json!({"c": 3})))
        );
        assert_eq!(
            parse_reply(br#"{"point":"completed"}"#, &p),
            Reply::Completed(p.clone())
        );
        assert_eq!(
            parse_reply(br#"{"point":"failed","reason":"no ink"}"#, &p),
            Reply::Failed("no ink".into())
        );
        assert_eq!(
            parse_reply(br#"{"point":"refused","reason":"busy"}"#, &p),
            Reply::Refused("busy".into())
        );
        assert_eq!(
            parse_reply(
                br#"{"point":"uncompleted","payload":{"n":1},"after":"30s"}"#,
                &p
            ),
            Reply::Uncompleted {
                payload: obj(json!({"n": 1})),
                after: Some(Dur(Duration::from_secs(30)))
            }
        );
        for bad in [
            &b"hello"[..],
            b"[1,2]",
            b"42",
            br#"{"point":"exploded"}"#,
            br#"{"point":7}"#,
            br#"{"point":"completed","payload":"x"}"#,
            br#"{"point":"uncompleted","after":"soon"}"#,
            b"{\"a\":1} trailing",
        ] {
            assert!(matches!(parse_reply(bad, &p), Reply::Invalid(_)), "{bad:?}");
        }
    }
}
