//! RFC 4514 distinguished names, compared structurally.

use std::fmt;

/// A distinguished name in RFC 4514 order (the most significant RDN last), attribute types as
/// upper-case short names or dotted OIDs, values exact. Equality is structural, so two
/// spellings of one name compare equal and no substring can pass for a whole name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistinguishedName(Vec<Vec<(String, String)>>);

impl DistinguishedName {
    pub(super) fn from_x509(name: &x509_parser::x509::X509Name<'_>) -> Self {
        let registry = x509_parser::objects::oid_registry();
        let rdns = name
            .iter()
            .map(|rdn| {
                let mut attributes: Vec<(String, String)> = rdn
                    .iter()
                    .map(|attribute| {
                        let oid = attribute.attr_type();
                        let kind = x509_parser::objects::oid2abbrev(oid, registry)
                            .map(str::to_ascii_uppercase)
                            .unwrap_or_else(|_| oid.to_id_string());
                        let value = match attribute.as_str() {
                            Ok(text) => text.to_owned(),
                            Err(_) => format!("#{}", hex(attribute.attr_value().data)),
                        };
                        (kind, value)
                    })
                    .collect();
                attributes.sort();
                attributes
            })
            .collect::<Vec<_>>();
        Self(rdns.into_iter().rev().collect())
    }

    /// Parses the RFC 4514 string form; `None` when it is malformed.
    pub fn parse(text: &str) -> Option<Self> {
        let mut rdns = Vec::new();
        for rdn in split_unescaped(text, ',') {
            let mut attributes = Vec::new();
            for attribute in split_unescaped(rdn, '+') {
                let (kind, value) = attribute.split_once('=')?;
                let kind = kind.trim();
                if kind.is_empty() {
                    return None;
                }
                attributes.push((kind.to_ascii_uppercase(), unescape_rfc4514(value.trim())?));
            }
            attributes.sort();
            rdns.push(attributes);
        }
        (!rdns.is_empty()).then_some(Self(rdns))
    }
}

impl fmt::Display for DistinguishedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, rdn) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            for (position, (kind, value)) in rdn.iter().enumerate() {
                if position > 0 {
                    f.write_str("+")?;
                }
                write!(f, "{kind}={}", escape_rfc4514(value))?;
            }
        }
        Ok(())
    }
}

fn split_unescaped(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (index, character) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if character == '\\' {
            escaped = true;
        } else if character == separator {
            parts.push(&text[start..index]);
            start = index + character.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

fn escape_rfc4514(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (index, character) in value.chars().enumerate() {
        let special = matches!(character, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (index == 0 && matches!(character, ' ' | '#'))
            || (index == last && character == ' ');
        if special {
            escaped.push('\\');
        }
        if character == '\0' {
            escaped.push_str("\\00");
        } else {
            escaped.push(character);
        }
    }
    escaped
}

fn unescape_rfc4514(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte != b'\\' {
            bytes.push(byte);
            rest = tail;
            continue;
        }
        match tail {
            [high, low, more @ ..] if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                let hex = std::str::from_utf8(&[*high, *low]).ok()?.to_owned();
                bytes.push(u8::from_str_radix(&hex, 16).ok()?);
                rest = more;
            }
            [special, more @ ..] => {
                bytes.push(*special);
                rest = more;
            }
            [] => return None,
        }
    }
    String::from_utf8(bytes).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguished_names_compare_structurally() {
        let a = DistinguishedName::parse("CN=partner-a,O=Tessera Dev").unwrap();
        let b = DistinguishedName::parse("cn = partner-a , o=Tessera Dev").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "CN=partner-a,O=Tessera Dev");
        let escaped = DistinguishedName::parse(r"CN=a\,b,O=x").unwrap();
        assert_eq!(escaped.to_string(), r"CN=a\,b,O=x");
        assert_ne!(a, DistinguishedName::parse("CN=partner-a").unwrap());
        assert_ne!(
            a,
            DistinguishedName::parse("CN=partner-a,O=Tessera Dev,C=GB").unwrap()
        );
        assert_eq!(
            DistinguishedName::parse(r"CN=\41b").unwrap(),
            DistinguishedName::parse("CN=Ab").unwrap()
        );
        assert!(DistinguishedName::parse("garbage").is_none());
    }

    #[test]
    fn escapes_rfc4514_specials() {
        assert_eq!(escape_rfc4514("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_rfc4514(" #x "), "\\ #x\\ ");
        assert_eq!(escape_rfc4514("#lead"), "\\#lead");
    }
}
