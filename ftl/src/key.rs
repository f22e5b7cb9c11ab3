//! Cache keys: the sha256 of a canonical JSON document naming every input
//! that can change a layer, and nothing else.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// A cache key and the canonical document it was computed from.
///
/// The document is kept (it is what `ftl cache ls` shows and what a
/// snapshot test asserts); only its hash is used to look a layer up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// Lowercase hex sha256 of [`CacheKey::canonical`].
    pub hex: String,
    /// The canonical JSON (object keys sorted, no insignificant whitespace).
    pub canonical: String,
}

impl CacheKey {
    /// Builds a key for a layer of `plugin` (its id and key version) from
    /// `inputs`, which must already hold only what affects the layer's bytes.
    pub fn new(plugin: &str, key_version: u32, inputs: Value) -> Self {
        let doc = serde_json::json!({
            "plugin": plugin,
            "key_version": key_version,
            "inputs": inputs,
        });
        let canonical = canonical_json(&doc);
        let hex = hex::encode(Sha256::digest(canonical.as_bytes()));
        CacheKey { hex, canonical }
    }

    /// This key with one more input, `name: value`, in its inputs document
    /// (for inputs the engine owns, such as the layer writer's settings).
    pub fn with_input(&self, name: &str, value: Value) -> Self {
        let mut doc: Value = serde_json::from_str(&self.canonical).unwrap_or(Value::Null);
        if let Some(inputs) = doc.get_mut("inputs") {
            if let Some(map) = inputs.as_object_mut() {
                map.insert(name.to_string(), value);
            } else {
                let mut map = serde_json::Map::new();
                map.insert("plugin_inputs".to_string(), inputs.take());
                map.insert(name.to_string(), value);
                *inputs = Value::Object(map);
            }
        }
        let canonical = canonical_json(&doc);
        let hex = hex::encode(Sha256::digest(canonical.as_bytes()));
        CacheKey { hex, canonical }
    }

    /// The inputs document as a JSON value.
    pub fn inputs(&self) -> Value {
        serde_json::from_str::<Value>(&self.canonical)
            .ok()
            .and_then(|v| v.get("inputs").cloned())
            .unwrap_or(Value::Null)
    }
}

/// Serializes `v` canonically: object keys sorted, no whitespace.
pub fn canonical_json(v: &Value) -> String {
    // serde_json's Map is a BTreeMap (the `preserve_order` feature is off in
    // this workspace), so keys serialize sorted; re-sort anyway to be robust
    // against a dependency enabling that feature.
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<_> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sort(v)).expect("a JSON value always serializes")
}

/// sha256 of `bytes` as `sha256:<hex>`, for hashing secrets or file contents
/// into a key document without storing them.
pub fn sha256_tagged(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The first 16 hex digits of the sha256 of `bytes`: a short name for a
/// directory that stands for a longer string (a scope, a repository).
pub fn short_digest(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_order_independent_and_stable() {
        let a = CacheKey::new(
            "python",
            1,
            serde_json::json!({"b": 1, "a": [2, {"y": 1, "x": 0}]}),
        );
        let b = CacheKey::new(
            "python",
            1,
            serde_json::json!({"a": [2, {"x": 0, "y": 1}], "b": 1}),
        );
        assert_eq!(a, b);
        assert_eq!(
            a.canonical,
            r#"{"inputs":{"a":[2,{"x":0,"y":1}],"b":1},"key_version":1,"plugin":"python"}"#
        );
        assert_ne!(a.hex, CacheKey::new("python", 2, a.inputs()).hex);
    }

    #[test]
    fn with_input_is_a_new_key_over_the_same_document() {
        let a = CacheKey::new("generic", 1, serde_json::json!({"files": "x"}));
        let b = a.with_input("layer_writer", serde_json::json!({"mtime": 5}));
        assert_ne!(a.hex, b.hex);
        assert_eq!(
            b,
            CacheKey::new(
                "generic",
                1,
                serde_json::json!({"files": "x", "layer_writer": {"mtime": 5}})
            )
        );
    }
}
