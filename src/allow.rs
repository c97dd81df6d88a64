//! The destinations a gateway may send to (`allowed_services`): names or `*` patterns, so a
//! client naming anything else is answered before Polaris is asked about it.
//!
//! An entry is `name` (in the configured default namespace) or `namespace/name`; `*` in either
//! part matches any run of characters. Globs, not regexes: a match is linear in the name and
//! the pattern, whatever the client sends.

use crate::destination::valid_name;
use crate::model::ServiceKey;

/// One entry of `allowed_services`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePattern {
    namespace: String,
    name: String,
}

/// The configured allow-list; an empty one is never built (the field absent means "any").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    patterns: Vec<ServicePattern>,
}

impl ServicePattern {
    /// Parses an entry; the error says what is wrong with it.
    pub fn parse(entry: &str, default_namespace: &str) -> Result<ServicePattern, String> {
        let (namespace, name) = match entry.split_once('/') {
            Some((ns, name)) => (ns, name),
            None => (default_namespace, entry),
        };
        for (what, part) in [("namespace", namespace), ("name", name)] {
            if part.is_empty() {
                return Err(format!("`{entry}` has an empty {what}"));
            }
            // A pattern part is a name once each `*` is taken out (a bare `*` is allowed).
            let literal: String = part.chars().filter(|c| *c != '*').collect();
            if !literal.is_empty() && !valid_name(&literal) {
                return Err(format!(
                    "`{entry}`: the {what} may hold only letters, digits, `-`, `_`, `.`, `:` and \
                     `*` (1 to 128 characters)"
                ));
            }
        }
        Ok(ServicePattern {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    pub fn matches(&self, key: &ServiceKey) -> bool {
        glob(&self.namespace, &key.namespace) && glob(&self.name, &key.name)
    }
}

impl AllowList {
    pub fn new(patterns: Vec<ServicePattern>) -> AllowList {
        AllowList { patterns }
    }

    pub fn allows(&self, key: &ServiceKey) -> bool {
        self.patterns.iter().any(|p| p.matches(key))
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (greedy with one
/// backtrack point: linear in `text` for each `*`).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn key(ns: &str, name: &str) -> ServiceKey {
        ServiceKey::new(ns, name)
    }

    #[test]
    fn a_bare_name_is_in_the_default_namespace_and_exact() {
        let p = ServicePattern::parse("echo", "default").unwrap();
        assert!(p.matches(&key("default", "echo")));
        assert!(!p.matches(&key("prod", "echo")));
        assert!(!p.matches(&key("default", "echo2")));
    }

    #[test]
    fn stars_match_any_run_in_either_part() {
        let p = ServicePattern::parse("*/shop-*", "default").unwrap();
        assert!(p.matches(&key("prod", "shop-cart")));
        assert!(p.matches(&key("default", "shop-")));
        assert!(!p.matches(&key("default", "shopcart")));
        let p = ServicePattern::parse("prod/*-api-*v2", "default").unwrap();
        assert!(p.matches(&key("prod", "x-api-y-api-zv2")));
        assert!(!p.matches(&key("prod", "x-api-zv3")));
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        assert!(ServicePattern::parse("", "default").is_err());
        assert!(ServicePattern::parse("ns/", "default").is_err());
        assert!(ServicePattern::parse("a b", "default").is_err());
        assert!(ServicePattern::parse("ns/a/b", "default").is_err());
        assert!(ServicePattern::parse("*", "default").is_ok());
    }

    #[test]
    fn a_list_allows_what_any_entry_matches() {
        let list = AllowList::new(vec![
            ServicePattern::parse("echo", "default").unwrap(),
            ServicePattern::parse("prod/*", "default").unwrap(),
        ]);
        assert!(list.allows(&key("default", "echo")));
        assert!(list.allows(&key("prod", "anything")));
        assert!(!list.allows(&key("default", "other")));
    }

    #[test]
    fn a_hostile_name_against_many_stars_is_decided_quickly() {
        let p = ServicePattern::parse(&"*a".repeat(40), "default").unwrap();
        let name = "a".repeat(127) + "b";
        assert!(!p.matches(&key("default", &name)));
    }
}
