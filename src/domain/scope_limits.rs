//! Why requested scopes were refused. Each limit on a token's scopes has a name, so that a
//! refusal says which one lacks a scope (the subject, the audience, the client's registration,
//! the data owner's trust profile, the consent) rather than a blanket "not allowed".

use crate::scopes::ScopeSet;

/// One limit on the scopes a token may carry, named as a refusal should name it.
#[derive(Debug, Clone, Copy)]
pub struct Limit<'a> {
    pub holder: &'static str,
    pub scopes: &'a ScopeSet,
}

/// The description of a scope refusal: the first limit, in the order given, that lacks a
/// requested scope, with the scopes it lacks; when nothing was requested, that the limits
/// share no scope.
pub fn explain(requested: Option<&ScopeSet>, limits: &[Limit<'_>]) -> String {
    let Some(requested) = requested else {
        let holders: Vec<&str> = limits.iter().map(|limit| limit.holder).collect();
        return format!("no scope can be granted: {} share none", holders.join(", "));
    };
    limits
        .iter()
        .map(|limit| (limit.holder, requested.difference(limit.scopes)))
        .find(|(_, missing)| !missing.is_empty())
        .map_or_else(
            || "no scope can be granted".to_owned(),
            |(holder, missing)| format!("{holder} does not allow: {missing}"),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(value: &str) -> ScopeSet {
        ScopeSet::parse(value).unwrap()
    }

    #[test]
    fn the_first_limit_lacking_a_scope_is_named() {
        let audience = set("a b c");
        let registration = set("a");
        let limits = [
            Limit {
                holder: "the audience",
                scopes: &audience,
            },
            Limit {
                holder: "the client's registration",
                scopes: &registration,
            },
        ];
        assert_eq!(
            explain(Some(&set("a x")), &limits),
            "the audience does not allow: x"
        );
        assert_eq!(
            explain(Some(&set("a b")), &limits),
            "the client's registration does not allow: b"
        );
        assert_eq!(
            explain(None, &limits),
            "no scope can be granted: the audience, the client's registration share none"
        );
    }
}
