//! Reading typed fields out of a request object, with errors that name the
//! field and what was expected.

use crate::api::{ChatError, ErrorCode};
use serde_json::{Map, Value};

pub struct Fields<'a>(pub &'a Map<String, Value>);

fn missing(key: &str) -> ChatError {
    ChatError::new(ErrorCode::BadRequest, format!("missing field \"{key}\""))
}

fn mistyped(key: &str, what: &str) -> ChatError {
    ChatError::new(
        ErrorCode::BadRequest,
        format!("field \"{key}\" must be {what}"),
    )
}

/// A number, or a string of at most 20 decimal digits.
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::String(s)
            if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().ok()
        }
        v => v.as_u64(),
    }
}

/// A user or group id: a positive integer that fits an `int`.
pub fn is_id(n: u64) -> bool {
    (1..=i32::MAX as u64).contains(&n)
}

impl<'a> Fields<'a> {
    pub fn has(&self, key: &str) -> bool {
        self.0.get(key).is_some_and(|v| !v.is_null())
    }

    pub fn str(&self, key: &str) -> Result<&'a str, ChatError> {
        self.opt_str(key)?.ok_or_else(|| missing(key))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ChatError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(mistyped(key, "a string")),
        }
    }

    /// A user or group id: a positive integer that fits an `int`.
    pub fn id(&self, key: &str) -> Result<u32, ChatError> {
        self.opt_id(key)?.ok_or_else(|| missing(key))
    }

    pub fn opt_id(&self, key: &str) -> Result<Option<u32>, ChatError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => as_u64(v)
                .filter(|n| is_id(*n))
                .map(|n| Some(n as u32))
                .ok_or_else(|| mistyped(key, "a positive integer id")),
        }
    }

    /// A message id or a count: a non-negative 64-bit integer, as a
    /// number or a decimal string (what a browser can hold exactly).
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, ChatError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => as_u64(v)
                .map(Some)
                .ok_or_else(|| mistyped(key, "a non-negative integer")),
        }
    }

    pub fn u64_list(&self, key: &str, max: usize) -> Result<Vec<u64>, ChatError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Err(missing(key)),
            Some(Value::Array(a)) => {
                if a.len() > max {
                    return Err(ChatError::new(
                        ErrorCode::BadRequest,
                        format!("field \"{key}\" may hold at most {max} ids"),
                    ));
                }
                a.iter()
                    .map(|v| as_u64(v).ok_or_else(|| mistyped(key, "an array of message ids")))
                    .collect()
            }
            Some(_) => Err(mistyped(key, "an array of message ids")),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, ChatError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(mistyped(key, "true or false")),
        }
    }
}
