//! The canonical key of a layer: one value tree from which both the id (binary encoding) and the
//! human-readable key (JSON, for `envc why`) are derived, so the two can never disagree.
//!
//! Encoding rules: every node starts with a one-byte type tag; strings and byte strings are
//! prefixed with their length as a little-endian u64; records carry their tag name and their fields
//! (name, value) in a fixed order; maps are sorted by key (BTreeMap). No floats, no spans, no
//! timestamps, no `Debug` output.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::id::{ID_LEN, hex};

/// The context string of the layer-id derivation. Changing anything in the encoding means a new
/// version here, so that old and new ids can never collide.
pub const LAYER_ID_CONTEXT: &str = "envc 2026-11-25 layer id v1";

/// A length-prefixed byte string.
fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

/// A node of a canonical key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// An absent optional value.
    None,
    /// A boolean.
    Bool(bool),
    /// An unsigned integer.
    U64(u64),
    /// UTF-8 text.
    Str(String),
    /// Raw bytes (host paths, symlink targets).
    Bytes(Vec<u8>),
    /// A 32-byte digest or id.
    Digest([u8; ID_LEN]),
    /// An ordered list.
    List(Vec<Key>),
    /// A map with sorted keys.
    Map(BTreeMap<String, Key>),
    /// A tagged record with fields in a fixed order.
    Record(&'static str, Vec<(&'static str, Key)>),
}

impl Key {
    /// A tagged record.
    pub fn record(tag: &'static str, fields: Vec<(&'static str, Key)>) -> Key {
        Key::Record(tag, fields)
    }

    /// A string.
    pub fn str(s: impl Into<String>) -> Key {
        Key::Str(s.into())
    }

    /// An optional string.
    pub fn opt_str(s: Option<&str>) -> Key {
        s.map_or(Key::None, Key::str)
    }

    /// A list of strings.
    pub fn strs<S: AsRef<str>>(items: &[S]) -> Key {
        Key::List(items.iter().map(|s| Key::str(s.as_ref())).collect())
    }

    /// The canonical binary encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(&mut out);
        out
    }

    /// The head of a record's encoding: what [`Key::encode`] writes for `Record(tag, fields)`
    /// before its fields, for encoders that write the fields one at a time.
    pub(crate) fn write_record_head(tag: &str, fields: usize, out: &mut Vec<u8>) {
        out.push(8);
        bytes(out, tag.as_bytes());
        out.extend_from_slice(&(fields as u64).to_le_bytes());
    }

    /// A record field's name, before its value.
    pub(crate) fn write_field_name(name: &str, out: &mut Vec<u8>) {
        bytes(out, name.as_bytes());
    }

    /// The head of a list of `len` items, before the items.
    pub(crate) fn write_list_head(len: usize, out: &mut Vec<u8>) {
        out.push(6);
        out.extend_from_slice(&(len as u64).to_le_bytes());
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Key::None => out.push(0),
            Key::Bool(b) => {
                out.push(1);
                out.push(u8::from(*b));
            }
            Key::U64(v) => {
                out.push(2);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Key::Str(s) => {
                out.push(3);
                bytes(out, s.as_bytes());
            }
            Key::Bytes(b) => {
                out.push(4);
                bytes(out, b);
            }
            Key::Digest(d) => {
                out.push(5);
                out.extend_from_slice(d);
            }
            Key::List(items) => {
                Key::write_list_head(items.len(), out);
                for item in items {
                    item.encode_into(out);
                }
            }
            Key::Map(map) => {
                out.push(7);
                out.extend_from_slice(&(map.len() as u64).to_le_bytes());
                for (k, v) in map {
                    bytes(out, k.as_bytes());
                    v.encode_into(out);
                }
            }
            Key::Record(tag, fields) => {
                Key::write_record_head(tag, fields.len(), out);
                for (name, value) in fields {
                    Key::write_field_name(name, out);
                    value.encode_into(out);
                }
            }
        }
    }

    /// The 32-byte hash of the canonical encoding under `context`.
    pub fn hash(&self, context: &str) -> [u8; ID_LEN] {
        let mut hasher = blake3::Hasher::new_derive_key(context);
        hasher.update(&self.encode());
        *hasher.finalize().as_bytes()
    }

    /// A JSON rendering of the key, for people (`envc why`) and the store's metadata.
    /// Records become objects with their tag under `"type"`.
    pub fn to_json(&self) -> Value {
        match self {
            Key::None => Value::Null,
            Key::Bool(b) => Value::Bool(*b),
            Key::U64(v) => Value::from(*v),
            Key::Str(s) => Value::String(s.clone()),
            Key::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => Value::String(s.to_owned()),
                Err(_) => Value::String(format!("hex:{}", hex(b))),
            },
            Key::Digest(d) => Value::String(hex(d)),
            Key::List(items) => Value::Array(items.iter().map(Key::to_json).collect()),
            Key::Map(map) => {
                Value::Object(map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
            Key::Record(tag, fields) => {
                let mut obj = Map::new();
                obj.insert("type".to_owned(), Value::String((*tag).to_owned()));
                for (name, value) in fields {
                    obj.insert((*name).to_owned(), value.to_json());
                }
                Value::Object(obj)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixes_prevent_ambiguity() {
        let a = Key::List(vec![Key::str("ab"), Key::str("c")]);
        let b = Key::List(vec![Key::str("a"), Key::str("bc")]);
        assert_ne!(a.encode(), b.encode());
    }

    #[test]
    fn tags_distinguish_types() {
        assert_ne!(Key::str("a").encode(), Key::Bytes(b"a".to_vec()).encode());
        assert_ne!(Key::None.encode(), Key::Bool(false).encode());
        assert_ne!(
            Key::record("x", vec![]).encode(),
            Key::record("y", vec![]).encode()
        );
    }

    #[test]
    fn context_changes_hash() {
        let k = Key::str("same");
        assert_ne!(k.hash("ctx a"), k.hash("ctx b"));
    }

    #[test]
    fn json_names_record_fields() {
        let k = Key::record(
            "run",
            vec![("command", Key::str("true")), ("user", Key::None)],
        );
        assert_eq!(
            k.to_json(),
            serde_json::json!({"type": "run", "command": "true", "user": null})
        );
    }
}
