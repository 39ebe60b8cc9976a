//! Payloads between MessagePack and JSON.
//!
//! Decoding is total: whatever MessagePack holds becomes JSON (binary as `{"$bin": "<hex>"}`,
//! a map key that is not a string as its JSON text, a non-finite float as a string), and bytes
//! that are not exactly one MessagePack value are reported as such, for the caller to show as
//! hex. Encoding writes maps with named keys, as the derive's `rmp_serde::to_vec_named` does.

use std::fmt;
use std::io::Cursor;

use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A payload as shown: JSON when it is one MessagePack value, else why not.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// It decoded.
    Json(Value),
    /// No bytes at all.
    Empty,
    /// Not MessagePack (or not exactly one value): the reason.
    Undecodable(String),
}

impl Payload {
    /// Decodes `bytes`.
    pub fn decode(bytes: &[u8]) -> Payload {
        if bytes.is_empty() {
            return Payload::Empty;
        }
        let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
        match AnyValue::deserialize(&mut de) {
            Ok(AnyValue(v)) => {
                let used = de.position() as usize;
                if used == bytes.len() {
                    Payload::Json(v)
                } else {
                    Payload::Undecodable(format!(
                        "not one MessagePack value ({} bytes left after the first value)",
                        bytes.len() - used
                    ))
                }
            }
            Err(e) => Payload::Undecodable(format!("not MessagePack: {e}")),
        }
    }

    /// The payload's fields of a JSON object: `payload` (the value, or `null`), and for
    /// undecodable bytes `payload_hex` and `payload_error`.
    pub fn json_fields(&self, bytes: &[u8], into: &mut Map<String, Value>) {
        match self {
            Payload::Json(v) => {
                into.insert("payload".into(), v.clone());
            }
            Payload::Empty => {
                into.insert("payload".into(), Value::Null);
            }
            Payload::Undecodable(why) => {
                into.insert("payload".into(), Value::Null);
                into.insert("payload_hex".into(), Value::String(hex(bytes)));
                into.insert("payload_error".into(), Value::String(why.clone()));
            }
        }
    }
}

/// JSON text to MessagePack, maps with named keys.
pub fn encode_json(text: &str) -> Result<Vec<u8>, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("the payload is not valid JSON: {e}"))?;
    rmp_serde::to_vec_named(&value).map_err(|e| format!("cannot encode the payload: {e}"))
}

/// Lowercase hex, two digits per byte.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Any MessagePack value as JSON.
struct AnyValue(Value);

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyVisitor).map(AnyValue)
    }
}

struct AnyVisitor;

fn float(x: f64) -> Value {
    Number::from_f64(x).map_or_else(|| Value::String(x.to_string()), Value::Number)
}

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any MessagePack value")
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
    fn visit_f32<E>(self, v: f32) -> Result<Value, E> {
        Ok(float(f64::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        let mut m = Map::new();
        m.insert("$bin".into(), Value::String(hex(v)));
        Ok(Value::Object(m))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        let mut m = Map::new();
        m.insert("$bin".into(), Value::String(hex(&v)));
        Ok(Value::Object(m))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(AnyVisitor)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        // MessagePack extension types arrive here (as a sequence: tag, data).
        d.deserialize_any(AnyVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(AnyValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let AnyValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// A map key as a JSON object key: a string as it is, anything else as its JSON text.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        match d.deserialize_any(AnyVisitor)? {
            Value::String(s) => Ok(s),
            other => Ok(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Outbound {
        channel: String,
        n: u32,
        ratio: f64,
        tags: Vec<String>,
        missing: Option<u8>,
    }

    #[test]
    fn named_structs_decode_to_objects() {
        let bytes = rmp_serde::to_vec_named(&Outbound {
            channel: "slack".into(),
            n: 7,
            ratio: 0.5,
            tags: vec!["a".into()],
            missing: None,
        })
        .unwrap();
        assert_eq!(
            Payload::decode(&bytes),
            Payload::Json(serde_json::json!({
                "channel": "slack", "n": 7, "ratio": 0.5, "tags": ["a"], "missing": null
            }))
        );
    }

    #[test]
    fn bytes_int_keys_and_odd_floats_are_shown() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(1u8, Bin(&[0xde, 0xad]));
        let bytes = rmp_serde::to_vec(&m).unwrap();
        assert_eq!(
            Payload::decode(&bytes),
            Payload::Json(serde_json::json!({"1": {"$bin": "dead"}}))
        );
        let nan = rmp_serde::to_vec(&f64::NAN).unwrap();
        assert_eq!(Payload::decode(&nan), Payload::Json("NaN".into()));
    }

    /// Serializes as MessagePack binary.
    struct Bin<'a>(&'a [u8]);

    impl Serialize for Bin<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    #[test]
    fn text_and_trailing_bytes_are_undecodable() {
        // "hello" starts with 0x68, a valid fixint: one value and four bytes left over.
        assert!(
            matches!(Payload::decode(b"hello"), Payload::Undecodable(why) if why.contains("4 bytes left"))
        );
        assert!(matches!(Payload::decode(&[0xc1]), Payload::Undecodable(_)));
        assert!(matches!(
            Payload::decode(&[0x92, 0x01]),
            Payload::Undecodable(_)
        ));
        assert_eq!(Payload::decode(b""), Payload::Empty);
        let mut fields = Map::new();
        Payload::decode(b"hi").json_fields(b"hi", &mut fields);
        assert_eq!(fields["payload_hex"], "6869");
        assert_eq!(fields["payload"], Value::Null);
    }

    #[test]
    fn json_encodes_as_named_maps() {
        let bytes = encode_json(r#"{"accepted": true, "n": -3}"#).unwrap();
        #[derive(serde::Deserialize, PartialEq, Debug)]
        struct Reply {
            accepted: bool,
            n: i32,
        }
        assert_eq!(
            rmp_serde::from_slice::<Reply>(&bytes).unwrap(),
            Reply {
                accepted: true,
                n: -3
            }
        );
        // Named: the keys are in the bytes.
        assert!(bytes.windows(8).any(|w| w == b"accepted"));
        assert!(encode_json("{nope").unwrap_err().contains("not valid JSON"));
    }
}
