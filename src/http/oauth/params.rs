//! `application/x-www-form-urlencoded` request bodies, strictly: RFC 6749 §3.2 forbids
//! repeating a parameter, except where a later RFC allows several (`resource`, `audience`).

use std::collections::HashMap;

use super::OAuthError;

const REPEATABLE: [&str; 2] = ["resource", "audience"];

#[derive(Default)]
pub struct Params(HashMap<String, Vec<String>>);

/// Names only: values include tokens and assertions.
impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Params {
    pub fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let mut params: HashMap<String, Vec<String>> = HashMap::new();
        for (name, value) in form_urlencoded::parse(body) {
            let values = params.entry(name.into_owned()).or_default();
            values.push(value.into_owned());
        }
        for (name, values) in &params {
            if values.len() > 1 && !REPEATABLE.contains(&name.as_str()) {
                return Err(OAuthError::InvalidRequest(format!(
                    "parameter `{name}` must not be repeated"
                )));
            }
        }
        Ok(Self(params))
    }

    /// The single value of a parameter; an empty value counts as absent (RFC 6749 §3.1).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .and_then(|values| values.first())
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }

    pub fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::InvalidRequest(format!("parameter `{name}` is required")))
    }

    pub fn all(&self, name: &str) -> &[String] {
        self.0.get(name).map(Vec::as_slice).unwrap_or_default()
    }

    /// The single value of a parameter read before the client is authenticated: it must be
    /// at most `max_len` bytes and free of control characters, since it reaches the registry
    /// and the audit trail on behalf of a caller nobody knows yet.
    pub fn unauthenticated(&self, name: &str, max_len: usize) -> Result<Option<&str>, OAuthError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        if value.len() > max_len {
            return Err(OAuthError::InvalidRequest(format!(
                "parameter `{name}` is longer than {max_len} bytes"
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(OAuthError::InvalidRequest(format!(
                "parameter `{name}` contains control characters"
            )));
        }
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_are_refused_except_targets() {
        assert!(Params::parse(b"scope=a&scope=b").is_err());
        let params = Params::parse(b"resource=https%3A%2F%2Fa&resource=https%3A%2F%2Fb").unwrap();
        assert_eq!(params.all("resource").len(), 2);
        assert_eq!(Params::parse(b"scope=").unwrap().get("scope"), None);
    }

    #[test]
    fn unauthenticated_values_are_bounded_and_printable() {
        let params = Params::parse(b"a=ok&b=x%00y&c=%0A&d=12345").unwrap();
        assert_eq!(params.unauthenticated("a", 4).unwrap(), Some("ok"));
        assert!(params.unauthenticated("b", 4).is_err());
        assert!(params.unauthenticated("c", 4).is_err());
        assert!(params.unauthenticated("d", 4).is_err());
        assert_eq!(params.unauthenticated("e", 4).unwrap(), None);
    }
}
