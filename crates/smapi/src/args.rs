//! Typed access to a call's named arguments (the JSON object on stdin).
//!
//! Every getter names the argument and the expected type in its error, so
//! an admin reading the xapi log sees which argument of which call was
//! wrong. Unknown extra arguments are ignored: newer xapi versions add
//! optional arguments, and refusing them would break every call.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{SmapiError, SmapiResult};

/// Largest stdin we accept: real calls are a few hundred bytes; a bound
/// keeps a runaway writer from exhausting memory.
pub const STDIN_MAX_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, Default)]
pub struct Args {
    map: Map<String, Value>,
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Args {
    /// Parses stdin text; it must be one JSON object.
    pub fn parse(text: &str) -> SmapiResult<Args> {
        if text.trim().is_empty() {
            return Err(SmapiError::invalid_argument(
                "stdin is empty; expected the call's arguments as one JSON object (run with --json)",
            ));
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(Args { map }),
            Ok(other) => Err(SmapiError::invalid_argument(format!(
                "stdin holds {}; expected the call's arguments as one JSON object",
                describe(&other)
            ))),
            Err(e) => Err(SmapiError::invalid_argument(format!(
                "stdin is not valid JSON ({e}); expected the call's arguments as one JSON object"
            ))),
        }
    }

    pub fn from_value(v: Value) -> SmapiResult<Args> {
        match v {
            Value::Object(map) => Ok(Args { map }),
            other => Err(SmapiError::invalid_argument(format!(
                "arguments are {}, not an object",
                describe(&other)
            ))),
        }
    }

    fn get(&self, name: &str) -> SmapiResult<&Value> {
        match self.map.get(name) {
            None | Some(Value::Null) => Err(SmapiError::invalid_argument(format!(
                "missing argument '{name}'"
            ))),
            Some(v) => Ok(v),
        }
    }

    fn mistyped(name: &str, want: &str, got: &Value) -> SmapiError {
        SmapiError::invalid_argument(format!(
            "argument '{name}' must be {want}, not {}",
            describe(got)
        ))
    }

    pub fn str(&self, name: &str) -> SmapiResult<&str> {
        match self.get(name)? {
            Value::String(s) => Ok(s),
            other => Err(Self::mistyped(name, "a string", other)),
        }
    }

    /// A string argument that may be absent or null.
    pub fn opt_str(&self, name: &str) -> SmapiResult<Option<&str>> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(Self::mistyped(name, "a string", other)),
        }
    }

    pub fn bool(&self, name: &str) -> SmapiResult<bool> {
        match self.get(name)? {
            Value::Bool(b) => Ok(*b),
            other => Err(Self::mistyped(name, "a boolean", other)),
        }
    }

    /// An int64 argument (sizes are bytes).
    pub fn i64(&self, name: &str) -> SmapiResult<i64> {
        match self.get(name)? {
            Value::Number(n) => n.as_i64().ok_or_else(|| {
                SmapiError::invalid_argument(format!(
                    "argument '{name}' must be a 64-bit integer, not {n}"
                ))
            }),
            other => Err(Self::mistyped(name, "an integer", other)),
        }
    }

    /// A size in bytes: a positive int64.
    pub fn size(&self, name: &str) -> SmapiResult<u64> {
        let n = self.i64(name)?;
        if n <= 0 {
            return Err(SmapiError::invalid_argument(format!(
                "argument '{name}' must be a positive number of bytes, not {n}"
            )));
        }
        Ok(n as u64)
    }

    /// A `(string * string) list`, encoded as a JSON object of strings.
    pub fn string_map(&self, name: &str) -> SmapiResult<BTreeMap<String, String>> {
        match self.get(name)? {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(SmapiError::invalid_argument(format!(
                        "argument '{name}' must map strings to strings; key '{k}' holds {}",
                        describe(other)
                    ))),
                })
                .collect(),
            other => Err(Self::mistyped(name, "an object of strings", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::codes;

    #[test]
    fn garbage_and_non_objects_are_refused() {
        for text in ["", "  ", "{", "nonsense", "[1]", "\"sr\"", "null", "42"] {
            let e = Args::parse(text).unwrap_err();
            assert_eq!(e.code, codes::INVALID_ARGUMENT, "{text:?}");
        }
    }

    #[test]
    fn getters_name_the_argument_and_the_type() {
        let a = Args::parse(
            r#"{"dbg":"d","sr":7,"size":-1,"big":1e30,"cfg":{"a":"b","n":1},"flag":"yes","none":null}"#,
        )
        .unwrap();
        assert_eq!(a.str("dbg").unwrap(), "d");
        let e = a.str("sr").unwrap_err();
        assert!(e.message().contains("'sr'") && e.message().contains("a number"));
        assert!(a.str("missing").unwrap_err().message().contains("missing"));
        assert!(a.str("none").unwrap_err().message().contains("missing"));
        assert_eq!(a.opt_str("none").unwrap(), None);
        assert!(a.size("size").unwrap_err().message().contains("positive"));
        assert!(a.i64("big").is_err());
        assert!(a.string_map("cfg").unwrap_err().message().contains("'n'"));
        assert!(a.bool("flag").unwrap_err().message().contains("boolean"));
    }

    #[test]
    fn well_typed_arguments_are_read() {
        let a = Args::parse(r#"{"size":4096,"cfg":{"a":"b"},"s":true,"extra":[1]}"#).unwrap();
        assert_eq!(a.size("size").unwrap(), 4096);
        assert_eq!(a.string_map("cfg").unwrap()["a"], "b");
        assert!(a.bool("s").unwrap());
    }
}
