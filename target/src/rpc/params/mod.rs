//! One parameter struct per RPC method, with SPDK's field names and defaults. The server
//! decodes a request's `params` into it ([`decode`]) and `strata-rpc` builds the request by
//! serialising it ([`CliParams`]); where the CLI mirrors rpc.py's flags the struct is also the
//! subcommand's clap arguments.
//!
//! Decoding goes through a small deserializer of its own rather than `serde_json::from_value`
//! so that errors name the offending parameter (-32602) the way SPDK's do: serde reports
//! missing and unknown fields and ill-typed values to the error type of the deserializer, and
//! only this one knows which key it was reading.

pub mod backup;
pub mod bdev;
pub mod framework;
pub mod journal;
pub mod keyring;
pub mod mirror;
pub mod nvme;
pub mod nvmf;
pub mod parity;

use super::error::RpcError;
use crate::rpc_client::ArgError;
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use uuid::Uuid;

/// A method's parameter struct.
pub trait SpdkParams: Serialize + DeserializeOwned {
    /// SPDK parameters the method accepts and ignores (`outer.inner` for a nested object's).
    /// Every other unknown parameter is refused (the structs deny unknown fields).
    const IGNORED: &'static [&'static str] = &[];
}

/// Decodes `params` for `method` (absent or `null` params are an empty object; a `null`
/// parameter is an absent one, as in SPDK).
pub fn decode<P: SpdkParams>(method: &str, params: Option<Value>) -> Result<P, RpcError> {
    let mut obj = match params {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(RpcError::invalid_params(format!(
                "{method}: params must be an object"
            )))
        }
    };
    for ignored in P::IGNORED {
        match ignored.split_once('.') {
            None => {
                obj.remove(*ignored);
            }
            Some((outer, inner)) => {
                if let Some(Value::Object(o)) = obj.get_mut(outer) {
                    o.remove(inner);
                }
            }
        }
    }
    P::deserialize(ValueDe(Value::Object(obj))).map_err(|e| e.into_rpc(method))
}

/// `-32602 {method}: invalid parameter '{key}': {what}`, for checks made after decoding.
pub fn invalid(method: &str, key: &str, what: impl fmt::Display) -> RpcError {
    RpcError::invalid_params(format!("{method}: invalid parameter '{key}': {what}"))
}

/// A UUID parameter (kept a string in the structs so that `strata-rpc` passes it on as given).
pub fn parse_uuid(method: &str, key: &str, s: Option<&str>) -> Result<Option<Uuid>, RpcError> {
    s.map(|s| Uuid::parse_str(s).map_err(|_| invalid(method, key, "not a UUID")))
        .transpose()
}

/// A block size: a power of two from 512 to 65536.
pub fn check_block_size(method: &str, key: &str, bs: u32) -> Result<u32, RpcError> {
    // The bdev layer's rule, reported under the parameter's name.
    strata_bdev::modules::validate_block_size(bs)
        .map(|()| bs)
        .map_err(|_| invalid(method, key, "must be a power of two between 512 and 65536"))
}

/// What a `strata-rpc` subcommand sends as `params`: `None` for an empty object (rpc.py sends
/// no params then).
pub trait CliParams {
    fn to_params(&self) -> Result<Option<Value>, ArgError>;
}

impl<P: SpdkParams> CliParams for P {
    fn to_params(&self) -> Result<Option<Value>, ArgError> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) if m.is_empty() => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(e) => Err(ArgError(format!("cannot encode the params: {e}"))),
        }
    }
}

/// For `skip_serializing_if`: flags are sent only when given, as rpc.py does.
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn is_true(b: &bool) -> bool {
    *b
}

/// For `#[serde(default = "yes")]`: a flag that is on unless given.
pub(crate) fn yes() -> bool {
    true
}

/// Methods that take no parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}
impl SpdkParams for NoParams {}

/// The delete methods and others naming one bdev: `{"name": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ByName {
    pub name: String,
}
impl SpdkParams for ByName {}

/// A list of bdev names: a JSON array of strings, or (as rpc.py's `-b "A B C"` and SPDK
/// accept) one string of space-separated names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BdevNames(pub Vec<String>);

impl std::str::FromStr for BdevNames {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(BdevNames(
            s.split_whitespace().map(str::to_string).collect(),
        ))
    }
}

impl<'de> Deserialize<'de> for BdevNames {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(s.split_whitespace().map(str::to_string).collect())
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                // Elements as plain values: the message is about the list, not the element.
                while let Some(x) = a.next_element::<Value>()? {
                    match x {
                        Value::String(s) => v.push(s),
                        _ => return Err(de::Error::custom("expected an array of strings")),
                    }
                }
                Ok(v)
            }
        }
        let v = d.deserialize_any(V)?;
        if v.is_empty() || v.iter().any(String::is_empty) {
            return Err(de::Error::custom("must list at least one name"));
        }
        Ok(BdevNames(v))
    }
}

/// Why params did not decode; [`ParamError::into_rpc`] words it as today's -32602 messages.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    #[error("missing required parameter '{0}'")]
    Missing(String),
    #[error("unknown parameter '{0}'")]
    Unknown(String),
    #[error("invalid parameter '{key}': {what}")]
    Invalid { key: String, what: String },
    /// An error inside the nested object parameter `object` (`listen_address`, `namespace`),
    /// reported in that object's name as SPDK does.
    #[error("{object}: {inner}")]
    Nested {
        object: String,
        inner: Box<ParamError>,
    },
    /// A value's problem, before the map it is in attaches the key.
    #[error("{0}")]
    Value(String),
}

impl ParamError {
    fn at(self, key: &str) -> Self {
        match self {
            ParamError::Value(what) => ParamError::Invalid {
                key: key.to_string(),
                what,
            },
            nested @ ParamError::Nested { .. } => nested,
            inner => ParamError::Nested {
                object: key.to_string(),
                inner: Box::new(inner),
            },
        }
    }

    fn into_rpc(self, method: &str) -> RpcError {
        match self {
            nested @ ParamError::Nested { .. } => RpcError::invalid_params(nested.to_string()),
            other => RpcError::invalid_params(format!("{method}: {other}")),
        }
    }
}

/// The wording of a type mismatch, from what the field's deserializer expected.
fn expected(exp: &dyn de::Expected) -> String {
    let exp = exp.to_string();
    match exp.as_str() {
        "u8" | "u16" | "u32" | "u64" => "expected a non-negative integer".into(),
        "a boolean" => "expected true or false".into(),
        e => format!("expected {e}"),
    }
}

impl de::Error for ParamError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ParamError::Value(msg.to_string())
    }
    fn invalid_type(_: de::Unexpected, exp: &dyn de::Expected) -> Self {
        ParamError::Value(expected(exp))
    }
    fn invalid_value(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        match unexp {
            de::Unexpected::Unsigned(_) => ParamError::Value("too large".into()),
            _ => ParamError::Value(expected(exp)),
        }
    }
    fn missing_field(field: &'static str) -> Self {
        ParamError::Missing(field.to_string())
    }
    fn unknown_field(field: &str, _: &'static [&'static str]) -> Self {
        ParamError::Unknown(field.to_string())
    }
}

/// A JSON value as a deserializer whose errors are [`ParamError`]s.
struct ValueDe(Value);

impl IntoDeserializer<'_, ParamError> for ValueDe {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for ValueDe {
    type Error = ParamError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ParamError> {
        match self.0 {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => v.visit_u64(u),
                (_, Some(i), _) => v.visit_i64(i),
                (_, _, f) => v.visit_f64(f.unwrap_or(f64::NAN)),
            },
            Value::String(s) => v.visit_string(s),
            Value::Array(a) => {
                let mut seq = de::value::SeqDeserializer::new(a.into_iter().map(ValueDe));
                let out = v.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Object(m) => v.visit_map(ObjectAccess {
                entries: m.into_iter(),
                fields: &[],
                value: None,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ParamError> {
        match self.0 {
            Value::Null => v.visit_none(),
            other => v.visit_some(ValueDe(other)),
        }
    }

    /// Names are never empty in SPDK's methods.
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ParamError> {
        match &self.0 {
            Value::String(s) if s.is_empty() => Err(ParamError::Value("must not be empty".into())),
            _ => self.deserialize_any(v),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ParamError> {
        self.deserialize_string(v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ParamError> {
        match self.0 {
            Value::Object(m) => v.visit_map(ObjectAccess {
                entries: m.into_iter(),
                fields,
                value: None,
            }),
            // An array would fill the fields by position: refuse anything but an object.
            _ => Err(ParamError::Value("expected an object".into())),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, ParamError> {
        v.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// An object's entries; a value's error gets the key it was under.
struct ObjectAccess {
    entries: serde_json::map::IntoIter,
    /// The struct's parameters: `null` for one of them is its absence; an unknown parameter
    /// is refused even when `null`.
    fields: &'static [&'static str],
    value: Option<(String, Value)>,
}

impl<'de> de::MapAccess<'de> for ObjectAccess {
    type Error = ParamError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ParamError> {
        for (k, v) in self.entries.by_ref() {
            if v.is_null() && self.fields.contains(&k.as_str()) {
                continue;
            }
            let key = seed.deserialize(k.as_str().into_deserializer())?;
            self.value = Some((k, v));
            return Ok(Some(key));
        }
        Ok(None)
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ParamError> {
        let (k, v) = self
            .value
            .take()
            .ok_or_else(|| ParamError::Value("a value without a key".into()))?;
        seed.deserialize(ValueDe(v)).map_err(|e| e.at(&k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct T {
        name: String,
        size: Option<u32>,
        #[serde(default)]
        flag: bool,
        list: Option<BdevNames>,
        inner: Option<Inner>,
    }
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: String,
    }
    impl SpdkParams for T {
        const IGNORED: &'static [&'static str] = &["legacy", "inner.old"];
    }

    fn err(p: Value) -> String {
        decode::<T>("m", Some(p)).unwrap_err().message
    }

    #[test]
    fn messages_name_the_parameter() {
        assert_eq!(err(json!({})), "m: missing required parameter 'name'");
        assert_eq!(
            err(json!({"name": null})),
            "m: missing required parameter 'name'"
        );
        assert_eq!(
            err(json!({"name": ""})),
            "m: invalid parameter 'name': must not be empty"
        );
        assert_eq!(
            err(json!({"name": 1})),
            "m: invalid parameter 'name': expected a string"
        );
        assert_eq!(
            err(json!({"name": "x", "size": -1})),
            "m: invalid parameter 'size': expected a non-negative integer"
        );
        assert_eq!(
            err(json!({"name": "x", "size": "1"})),
            "m: invalid parameter 'size': expected a non-negative integer"
        );
        assert_eq!(
            err(json!({"name": "x", "size": 1u64 << 40})),
            "m: invalid parameter 'size': too large"
        );
        assert_eq!(
            err(json!({"name": "x", "flag": 1})),
            "m: invalid parameter 'flag': expected true or false"
        );
        assert_eq!(
            err(json!({"name": "x", "colour": 1})),
            "m: unknown parameter 'colour'"
        );
        assert_eq!(
            err(json!({"name": "x", "colour": null})),
            "m: unknown parameter 'colour'"
        );
        assert_eq!(
            err(json!({"name": "x", "list": []})),
            "m: invalid parameter 'list': must list at least one name"
        );
        assert_eq!(
            err(json!({"name": "x", "list": [1]})),
            "m: invalid parameter 'list': expected an array of strings"
        );
        assert_eq!(
            err(json!({"name": "x", "inner": "s"})),
            "m: invalid parameter 'inner': expected an object"
        );
        assert_eq!(
            err(json!({"name": "x", "inner": ["by position"]})),
            "m: invalid parameter 'inner': expected an object",
            "an array must not fill a nested object's fields by position"
        );
        assert_eq!(
            err(json!({"name": "x", "inner": {}})),
            "inner: missing required parameter 'a'"
        );
        assert_eq!(
            err(json!({"name": "x", "inner": {"a": "b", "c": 1}})),
            "inner: unknown parameter 'c'"
        );
        assert_eq!(
            decode::<T>("m", Some(json!([1]))).unwrap_err().message,
            "m: params must be an object"
        );
    }

    #[test]
    fn ignored_and_lists() {
        let t: T = decode(
            "m",
            Some(json!({"name": "x", "legacy": 1, "list": "A  B", "inner": {"a": "b", "old": 2}})),
        )
        .unwrap();
        assert_eq!(t.list, Some(BdevNames(vec!["A".into(), "B".into()])));
        assert!(!t.flag);
        let t: T = decode("m", Some(json!({"name": "x", "list": ["A"]}))).unwrap();
        assert_eq!(t.list, Some(BdevNames(vec!["A".into()])));
    }
}
