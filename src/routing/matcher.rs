//! Polaris `MatchString`, compiled once per snapshot: one matcher serves rule sources, rule
//! destinations (instance labels) and, later, rate-limit and circuit-breaker rules.
//!
//! Semantics follow polaris-go `pkg/algorithm/match`: an empty value or `*` matches anything; IN
//! and NOT_IN split on `,` without trimming; RANGE is `a~b`, inclusive, over i64. Regexes are
//! compiled here, never per request; a pattern that does not compile is an error, so the rule
//! holding it is skipped and logged, and the rules beside it still apply.

use std::fmt;

use regex::bytes::Regex;

use super::regex_set::Slot;
use crate::polaris::proto;

/// A `MatchString` type.
pub type MatchKind = proto::match_string::MatchStringType;

/// Where the value to compare against comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueSource {
    /// The rule's own text.
    Text,
    /// polaris-go: a source PARAMETER matches anything; a destination PARAMETER takes the value
    /// from the caller's arguments under the key named by the rule value.
    Parameter,
    /// A value from the filter's configured variables (polaris-go: SDK config or environment).
    Variable,
}

#[derive(Clone, Debug)]
enum Test {
    Any,
    Exact(String),
    Regex(Regex),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Range(i64, i64),
}

/// A compiled `MatchString`.
#[derive(Clone, Debug)]
pub struct Matcher {
    test: Test,
    /// The rule's match type: a PARAMETER test is built from it once the value is known.
    kind: MatchKind,
    pub source: ValueSource,
    /// The rule's raw value (for PARAMETER/VARIABLE: the key to look up).
    pub raw: String,
    /// Where a plan's regex set answers this test (see `regex_set`).
    pub slot: Option<Slot>,
}

/// Why a `MatchString` cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchError(pub String);

impl fmt::Display for MatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Regex size limit: rules come from the network, and a huge compiled program costs every request.
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 16;

impl Matcher {
    pub fn any() -> Matcher {
        Matcher {
            test: Test::Any,
            kind: MatchKind::Exact,
            source: ValueSource::Text,
            raw: String::new(),
            slot: None,
        }
    }

    /// Compiles a `MatchString`.
    pub fn compile(m: &proto::MatchString) -> Result<Matcher, MatchError> {
        use proto::match_string::{MatchStringType as T, ValueType as V};
        let raw = m.value.clone().unwrap_or_default();
        let source = match V::try_from(m.value_type).unwrap_or(V::Text) {
            V::Text => ValueSource::Text,
            V::Parameter => ValueSource::Parameter,
            V::Variable => ValueSource::Variable,
        };
        let kind = T::try_from(m.r#type)
            .map_err(|_| MatchError(format!("unknown match type {}", m.r#type)))?;
        // A PARAMETER or VARIABLE value is a key, not the value to test: the test is built when
        // the value is known (`with_value`); until then the matcher accepts anything, which is
        // what polaris-go does for a PARAMETER source.
        let test = match source {
            ValueSource::Text => Self::test_for(kind, &raw)?,
            ValueSource::Parameter | ValueSource::Variable => Test::Any,
        };
        Ok(Matcher {
            test,
            kind,
            source,
            raw,
            slot: None,
        })
    }

    /// A matcher of `kind` over a value resolved later (PARAMETER/VARIABLE).
    pub fn with_value(&self, value: &str) -> Result<Matcher, MatchError> {
        Ok(Matcher {
            test: Self::test_for(self.kind, value)?,
            kind: self.kind,
            source: ValueSource::Text,
            raw: value.to_string(),
            slot: None,
        })
    }

    fn test_for(kind: proto::match_string::MatchStringType, raw: &str) -> Result<Test, MatchError> {
        use proto::match_string::MatchStringType as T;
        if raw.is_empty() || raw == "*" {
            return Ok(Test::Any);
        }
        Ok(match kind {
            T::Exact => Test::Exact(raw.to_string()),
            T::Regex => Test::Regex(
                regex::bytes::RegexBuilder::new(raw)
                    // ASCII classes, as Go's RE2 (`\d` is [0-9]); no Unicode tables in the binary.
                    .unicode(false)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| MatchError(format!("bad regex `{raw}`: {e}")))?,
            ),
            T::NotEquals => Test::NotEquals(raw.to_string()),
            T::In => Test::In(raw.split(',').map(str::to_string).collect()),
            T::NotIn => Test::NotIn(raw.split(',').map(str::to_string).collect()),
            T::Range => {
                let (lo, hi) = raw
                    .split_once('~')
                    .and_then(|(a, b)| {
                        Some((a.trim().parse::<i64>().ok()?, b.trim().parse::<i64>().ok()?))
                    })
                    .ok_or_else(|| {
                        MatchError(format!("bad RANGE `{raw}`: expected `low~high` integers"))
                    })?;
                if lo > hi {
                    return Err(MatchError(format!("bad RANGE `{raw}`: low above high")));
                }
                Test::Range(lo, hi)
            }
        })
    }

    /// The one value an EXACT text matcher accepts (rule indexes are keyed by it).
    pub fn exact_value(&self) -> Option<&str> {
        match (&self.test, &self.source) {
            (Test::Exact(v), ValueSource::Text) => Some(v),
            _ => None,
        }
    }

    /// The rule's match type.
    pub fn kind(&self) -> MatchKind {
        self.kind
    }

    /// The pattern of a text REGEX test, which a plan's regex set can answer.
    pub fn regex_pattern(&self) -> Option<&str> {
        match (&self.test, &self.source) {
            (Test::Regex(r), ValueSource::Text) => Some(r.as_str()),
            _ => None,
        }
    }

    /// Whether this matcher accepts everything.
    pub fn is_any(&self) -> bool {
        matches!(self.test, Test::Any)
    }

    /// Matches a value; `None` (the key is absent) matches only negative tests and `*`.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (&self.test, value) {
            (Test::Any, _) => true,
            (Test::NotEquals(_) | Test::NotIn(_), None) => true,
            (_, None) => false,
            (Test::Exact(v), Some(x)) => v == x,
            (Test::Regex(r), Some(x)) => r.is_match(x.as_bytes()),
            (Test::NotEquals(v), Some(x)) => v != x,
            (Test::In(vs), Some(x)) => vs.iter().any(|v| v == x),
            (Test::NotIn(vs), Some(x)) => !vs.iter().any(|v| v == x),
            (Test::Range(lo, hi), Some(x)) => x
                .trim()
                .parse::<i64>()
                .is_ok_and(|n| (*lo..=*hi).contains(&n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::match_string::{MatchStringType as T, ValueType as V};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn m(kind: T, value: &str) -> Matcher {
        Matcher::compile(&proto::MatchString {
            r#type: kind as i32,
            value: Some(value.into()),
            value_type: V::Text as i32,
        })
        .unwrap()
    }

    #[test]
    fn exact_matches_only_the_value() {
        assert!(m(T::Exact, "gray").matches(Some("gray")));
        assert!(!m(T::Exact, "gray").matches(Some("blue")));
        assert!(!m(T::Exact, "gray").matches(None));
    }

    #[test]
    fn empty_and_star_match_anything_even_absent() {
        assert!(m(T::Exact, "*").matches(None));
        assert!(m(T::Regex, "").matches(Some("x")));
    }

    #[test]
    fn regex_is_unanchored_like_go() {
        assert!(m(T::Regex, "^a.*").matches(Some("abc")));
        assert!(m(T::Regex, "b").matches(Some("abc")));
        assert!(!m(T::Regex, "^b").matches(Some("abc")));
    }

    #[test]
    fn not_equals_and_not_in_accept_absent_keys() {
        assert!(m(T::NotEquals, "DELETE").matches(Some("GET")));
        assert!(!m(T::NotEquals, "DELETE").matches(Some("DELETE")));
        assert!(m(T::NotEquals, "x").matches(None));
        assert!(m(T::NotIn, "a,b").matches(Some("c")));
        assert!(!m(T::NotIn, "a,b").matches(Some("b")));
    }

    #[test]
    fn in_splits_on_comma_without_trimming() {
        let i = m(T::In, "x, y");
        assert!(i.matches(Some("x")));
        assert!(i.matches(Some(" y")));
        assert!(!i.matches(Some("y")));
    }

    #[test]
    fn range_is_inclusive_integers() {
        let r = m(T::Range, "1~5");
        assert!(r.matches(Some("1")) && r.matches(Some("5")));
        assert!(!r.matches(Some("6")) && !r.matches(Some("x")) && !r.matches(None));
        assert!(m(T::Range, "-10~-1").matches(Some("-3")));
    }

    #[test]
    fn bad_regex_and_bad_range_are_errors_not_panics() {
        for (kind, value) in [
            (T::Regex, "(unclosed"),
            (T::Range, "5"),
            (T::Range, "a~b"),
            (T::Range, "9~1"),
        ] {
            let e = Matcher::compile(&proto::MatchString {
                r#type: kind as i32,
                value: Some(value.into()),
                value_type: 0,
            });
            assert!(e.is_err(), "{value}");
        }
    }

    #[test]
    fn unknown_match_type_is_an_error() {
        let e = Matcher::compile(&proto::MatchString {
            r#type: 99,
            value: Some("x".into()),
            value_type: 0,
        });
        assert!(e.is_err());
    }

    #[test]
    fn parameter_and_variable_keep_the_key() {
        let p = Matcher::compile(&proto::MatchString {
            r#type: T::Exact as i32,
            value: Some("$header.x-version".into()),
            value_type: V::Parameter as i32,
        })
        .unwrap();
        assert_eq!(p.source, ValueSource::Parameter);
        assert_eq!(p.raw, "$header.x-version");
        assert!(p.with_value("v2").unwrap().matches(Some("v2")));
    }
}
