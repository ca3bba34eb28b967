//! Strict JSON decoding with CNI error codes.
//!
//! Two steps, each with its own class of fault:
//! 1. [`decode`]: bytes to a JSON value. Empty or whitespace-only input, malformed JSON,
//!    trailing data, nesting deeper than 128 and a key repeated within one object are all
//!    code 6 (failed to decode), with line and column.
//! 2. [`from_value`]: the value to a typed config. A wrong type or value is code 7 naming
//!    the field by its path (`ipam.routes[0].dst`). Structs are read from JSON objects only
//!    (serde would otherwise take `[["0.0.0.0/0"]]` for a list of routes), and a `null`
//!    member of a struct counts as absent, as with the Go plugins.

use serde::de::value::{MapAccessDeserializer, MapDeserializer, SeqDeserializer};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, Visitor,
};
use serde_json::{Map, Number, Value};

use crate::error::{Code, Error};

/// Marks the error of a repeated key, so it is classed as a decoding fault.
const DUPLICATE: &str = "duplicate key ";

/// Decodes `bytes` into a JSON value; every fault is code 6 (an I/O error from the reader,
/// which cannot happen on a slice, would be 5).
pub(crate) fn decode(bytes: &[u8]) -> Result<Value, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::new(Code::DecodingFailure, "failed to decode the config: the input is empty"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = de.deserialize_any(Checked).map_err(|e| decode_error(&e))?;
    de.end().map_err(|e| decode_error(&e))?;
    Ok(value)
}

/// Reads a typed value; a wrong field is code 7 naming it.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(Strict(value)).map_err(|e| path_error(&e))
}

/// [`decode`] then [`from_value`].
pub(crate) fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    from_value(decode(bytes)?)
}

fn path_error(e: &serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = e.path().to_string();
    // The root's path is "."; serde's own message names a missing field.
    let why = e.inner().to_string().replace("unit value", "null");
    if path == "." {
        Error::new(Code::InvalidConfig, format!("invalid network config: {why}"))
    } else {
        Error::invalid_config(&path, why)
    }
}

fn decode_error(e: &serde_json::Error) -> Error {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => Error::new(Code::IoFailure, format!("reading JSON: {e}")),
        Category::Data if e.to_string().starts_with(DUPLICATE) => {
            Error::new(Code::DecodingFailure, format!("failed to decode the config: {e}"))
        }
        _ => Error::new(
            Code::DecodingFailure,
            format!("malformed JSON at line {} column {}: {e}", e.line(), e.column()),
        ),
    }
}

/// Builds a [`Value`], refusing a key repeated within one object (serde_json would keep
/// the last one silently; other parsers keep the first: the two readings must not differ).
struct Checked;

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(Checked)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Checked)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("{DUPLICATE}{key:?}")));
            }
            let v = map.next_value_seed(Checked)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// A [`Value`] read strictly: structs only from objects (their `null` members skipped).
struct Strict(Value);

impl<'de> IntoDeserializer<'de, serde_json::Error> for Strict {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

fn unexpected(v: &Value) -> Unexpected<'_> {
    match v {
        Value::Null => Unexpected::Other("null"),
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Unexpected::Unsigned(u),
            (None, Some(i)) => Unexpected::Signed(i),
            _ => Unexpected::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

fn visit_object<'de, V: Visitor<'de>>(
    m: Map<String, Value>,
    skip_null: bool,
    v: V,
) -> Result<V::Value, serde_json::Error> {
    let entries =
        m.into_iter().filter(|(_, val)| !(skip_null && val.is_null())).map(|(k, val)| (k, Strict(val)));
    let mut map = MapDeserializer::new(entries);
    let out = v.visit_map(&mut map)?;
    map.end()?;
    Ok(out)
}

impl<'de> Deserializer<'de> for Strict {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => v.visit_u64(u),
                (None, Some(i)) => v.visit_i64(i),
                _ => v.visit_f64(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => v.visit_string(s),
            Value::Array(a) => {
                let mut seq = SeqDeserializer::new(a.into_iter().map(Strict));
                let out = v.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Object(m) => visit_object(m, false, v),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => v.visit_none(),
            other => v.visit_some(Strict(other)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(m) => visit_object(m, true, v),
            other => Err(de::Error::invalid_type(unexpected(&other), &v)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::String(s) => v.visit_enum(IntoDeserializer::<serde_json::Error>::into_deserializer(s)),
            Value::Object(m) if m.len() == 1 => {
                let map = MapDeserializer::new(m.into_iter().map(|(k, val)| (k, Strict(val))));
                v.visit_enum(MapAccessDeserializer::new(map))
            }
            other => Err(de::Error::invalid_type(unexpected(&other), &v)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => v.visit_unit(),
            other => Err(de::Error::invalid_type(unexpected(&other), &v)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_unit(v)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf seq tuple tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Route {
        dst: String,
        #[serde(default)]
        gw: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Conf {
        #[serde(default)]
        routes: Vec<Route>,
        #[serde(default)]
        flag: bool,
    }

    #[test]
    fn decode_faults_are_code_6() {
        for bad in
            [&b""[..], b" \n\t", b"{", b"{\"a\":1,\"a\":2}", b"{\"x\":{\"a\":1,\"a\":1}}", b"{} x", b"[1,]"]
        {
            let e = decode(bad).unwrap_err();
            assert_eq!(e.code, 6, "{:?}: {e}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(decode(deep.as_bytes()).unwrap_err().code, 6);
        assert!(decode(b"{\"a\":{\"b\":1},\"b\":[{\"b\":1},{\"b\":2}]}").is_ok());
    }

    #[test]
    fn structs_only_from_objects_and_null_is_absent() {
        let e = from_slice::<Conf>(br#"{"routes":[["0.0.0.0/0"]]}"#).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("routes[0]"), "{e}");
        let c: Conf = from_slice(br#"{"routes":[{"dst":"0.0.0.0/0","gw":null}],"flag":null}"#).unwrap();
        assert_eq!(c, Conf { routes: vec![Route { dst: "0.0.0.0/0".into(), gw: None }], flag: false });
        let e = from_slice::<Conf>(br#"{"flag":1}"#).unwrap_err();
        assert!(e.msg.starts_with("invalid network config: flag: invalid type"), "{e}");
        let e = from_slice::<Conf>(br#"{"routes":[{"gw":"1.2.3.4"}]}"#).unwrap_err();
        assert!(e.msg.contains("routes[0]") && e.msg.contains("dst"), "{e}");
        let e = from_slice::<Conf>(br#"[]"#).unwrap_err();
        assert_eq!(e.code, 7);
    }
}
