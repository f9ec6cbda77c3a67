//! A JSON Web Key Set (RFC 7517) as a client or partner registered it. The domain keeps the
//! document; the crypto layer parses the keys it verifies with.

use base64::Engine;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct PublicKeys(Vec<Value>);

impl PublicKeys {
    /// A document with a `keys` array of objects that each name their `kty`; anything else is
    /// not a key set.
    pub fn from_document(document: &Value) -> Option<Self> {
        let keys = document.get("keys")?.as_array()?;
        keys.iter()
            .all(|key| key.get("kty").is_some_and(Value::is_string))
            .then(|| Self(keys.clone()))
    }

    /// The key set as a JWKS document.
    pub fn document(&self) -> Value {
        serde_json::json!({ "keys": self.0 })
    }

    pub fn keys(&self) -> &[Value] {
        &self.0
    }

    /// RFC 8705 §2.2: whether `der` is the leaf (first `x5c` entry) of a registered key.
    pub fn has_leaf_certificate(&self, der: &[u8]) -> bool {
        self.0.iter().any(|key| {
            key.get("x5c")
                .and_then(|chain| chain.get(0))
                .and_then(Value::as_str)
                .and_then(|leaf| base64::engine::general_purpose::STANDARD.decode(leaf).ok())
                .is_some_and(|leaf| leaf == der)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_key_sets_are_accepted() {
        assert!(PublicKeys::from_document(&json!({ "keys": [{ "kty": "EC" }] })).is_some());
        assert!(PublicKeys::from_document(&json!({ "keys": [{ "x": 1 }] })).is_none());
        assert!(PublicKeys::from_document(&json!({ "keys": {} })).is_none());
        assert!(PublicKeys::from_document(&json!([])).is_none());
    }

    #[test]
    fn finds_a_registered_leaf() {
        let der = b"leaf-der";
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let keys =
            PublicKeys::from_document(&json!({ "keys": [{ "kty": "EC", "x5c": [x5c] }] })).unwrap();
        assert!(keys.has_leaf_certificate(der));
        assert!(!keys.has_leaf_certificate(b"other"));
    }
}
