//! Scopes (RFC 6749 §3.3): a space-separated set of printable tokens.

use std::collections::BTreeSet;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(String);

impl Scope {
    /// `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`
    pub fn parse(value: &str) -> Option<Self> {
        let valid = !value.is_empty()
            && value.len() <= 128
            && value
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        valid.then(|| Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses the `scope` request parameter; `None` when any token is malformed.
    pub fn parse(value: &str) -> Option<Self> {
        value
            .split(' ')
            .filter(|token| !token.is_empty())
            .map(Scope::parse)
            .collect::<Option<BTreeSet<_>>>()
            .map(Self)
    }

    /// From stored values, which the database constrains; malformed ones are dropped.
    pub fn from_stored(values: &[String]) -> Self {
        Self(
            values
                .iter()
                .filter_map(|value| Scope::parse(value))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        Self(self.0.intersection(&other.0).cloned().collect())
    }

    /// Members of `self` that `other` lacks.
    pub fn difference(&self, other: &ScopeSet) -> ScopeSet {
        Self(self.0.difference(&other.0).cloned().collect())
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().map(|scope| scope.0.clone()).collect()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for scope in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(&scope.0)?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_space_separated_scopes_and_rejects_forbidden_characters() {
        let set = ScopeSet::parse("ledger:read  payments:write").unwrap();
        assert_eq!(set.to_string(), "ledger:read payments:write");
        assert!(ScopeSet::parse("ok bad\"quote").is_none());
        assert!(ScopeSet::parse("back\\slash").is_none());
    }

    #[test]
    fn subset_and_difference() {
        let wide = ScopeSet::parse("a b c").unwrap();
        let narrow = ScopeSet::parse("a c").unwrap();
        assert!(narrow.is_subset(&wide));
        assert!(!wide.is_subset(&narrow));
        assert_eq!(wide.difference(&narrow).to_string(), "b");
    }
}
