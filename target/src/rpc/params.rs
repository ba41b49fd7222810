//! Typed access to a method's `params` object, with errors that name the offending parameter
//! (-32602). Unknown parameters are refused, except SPDK parameters a method knowingly ignores.

use super::error::RpcError;
use serde_json::{Map, Value};
use uuid::Uuid;

pub struct Params {
    method: &'static str,
    obj: Map<String, Value>,
}

impl Params {
    /// `known`: parameters the method reads; `ignored`: SPDK parameters it accepts and ignores.
    pub fn new(
        method: &'static str,
        params: Option<Value>,
        known: &[&str],
        ignored: &[&str],
    ) -> Result<Self, RpcError> {
        let obj = match params {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(RpcError::invalid_params(format!(
                    "{method}: params must be an object"
                )))
            }
        };
        for k in obj.keys() {
            if !known.contains(&k.as_str()) && !ignored.contains(&k.as_str()) {
                return Err(RpcError::invalid_params(format!(
                    "{method}: unknown parameter '{k}'"
                )));
            }
        }
        Ok(Self { method, obj })
    }

    fn bad(&self, key: &str, what: &str) -> RpcError {
        RpcError::invalid_params(format!(
            "{}: invalid parameter '{key}': {what}",
            self.method
        ))
    }

    fn missing(&self, key: &str) -> RpcError {
        RpcError::invalid_params(format!(
            "{}: missing required parameter '{key}'",
            self.method
        ))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<String>, RpcError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Err(self.bad(key, "must not be empty")),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(key, "expected a string")),
        }
    }

    pub fn str(&self, key: &str) -> Result<String, RpcError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, RpcError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "expected a non-negative integer")),
        }
    }

    pub fn u64(&self, key: &str) -> Result<u64, RpcError> {
        self.opt_u64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, RpcError> {
        match self.opt_u64(key)? {
            None => Ok(None),
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| self.bad(key, "too large")),
        }
    }

    pub fn u32(&self, key: &str) -> Result<u32, RpcError> {
        self.opt_u32(key)?.ok_or_else(|| self.missing(key))
    }

    /// A list of names: a JSON array of strings, or one string of space-separated names.
    pub fn str_list(&self, key: &str) -> Result<Vec<String>, RpcError> {
        let v: Vec<String> = match self.obj.get(key) {
            None | Some(Value::Null) => return Err(self.missing(key)),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| self.bad(key, "expected an array of strings"))?,
            Some(_) => return Err(self.bad(key, "expected an array of strings")),
        };
        if v.is_empty() || v.iter().any(String::is_empty) {
            return Err(self.bad(key, "must list at least one name"));
        }
        Ok(v)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, RpcError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.bad(key, "expected true or false")),
        }
    }

    pub fn opt_uuid(&self, key: &str) -> Result<Option<Uuid>, RpcError> {
        match self.opt_str(key)? {
            None => Ok(None),
            Some(s) => Uuid::parse_str(&s)
                .map(Some)
                .map_err(|_| self.bad(key, "not a UUID")),
        }
    }

    /// A nested object parameter.
    pub fn object(&self, key: &str) -> Result<Option<Map<String, Value>>, RpcError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m.clone())),
            Some(_) => Err(self.bad(key, "expected an object")),
        }
    }

    /// A block size: a power of two from 512 to 65536.
    pub fn block_size(&self, key: &str) -> Result<Option<u32>, RpcError> {
        match self.opt_u32(key)? {
            None => Ok(None),
            Some(bs) if (512..=65536).contains(&bs) && bs.is_power_of_two() => Ok(Some(bs)),
            Some(_) => Err(self.bad(key, "must be a power of two between 512 and 65536")),
        }
    }
}
