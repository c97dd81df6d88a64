//! Polaris `MatchString`, compiled once per snapshot: one matcher serves rule sources, rule
//! destinations (instance labels) and, later, rate-limit and circuit-breaker rules.
//!
//! Semantics follow polaris-go `pkg/algorithm/match`: an empty value or `*` matches any present
//! value; IN and NOT_IN split on `,` without trimming; RANGE is `a~b`, inclusive, over i64, with
//! no spaces allowed around the numbers (Go's `strconv.ParseInt`). An
//! absent value matches nothing (polaris-go `matchSourceMetadata` fails a source whose key the
//! request lacks, whatever the match type). Regexes are compiled here, never per request; a
//! pattern that does not compile is an error, so the rule holding it is skipped and logged, and
//! the rules beside it still apply.
//!
//! REGEX: polaris-go compiles with regexp2 (a backtracking engine, `RE2` option). Every pattern
//! the linear-time engine (`regex`) accepts runs there; a pattern only a backtracking engine
//! accepts (look-around, backreferences, atomic groups) is compiled with `fancy-regex` and stopped
//! after [`BACKTRACK_LIMIT`] backtracking steps. A test that hits the limit counts as no match;
//! hits are counted ([`take_backtrack_limit_hits`]) and the caller logs the rule.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use fancy_regex::BytesMode;
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
    Regex(Pattern),
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

/// Backtracks one test of a backtracking-only REGEX may make. Measured natively (`tests::timing`):
/// `^(?!prod).*$` on a 60,000-byte value needs few and answers in ~0.2 ms, while a pattern that
/// backtracks catastrophically is stopped after ~0.7 ms.
pub const BACKTRACK_LIMIT: usize = 10_000;

/// A compiled REGEX.
#[derive(Clone, Debug)]
pub enum Pattern {
    /// The linear-time engine, for every pattern it accepts.
    Linear(Regex),
    /// A backtracking engine, for what only backtracking accepts, with [`BACKTRACK_LIMIT`].
    Backtracking(fancy_regex::Regex),
}

/// A REGEX test that ran out of backtracking steps: it counts as no match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitHit {
    /// The first hit since [`take_backtrack_limit_hits`] last ran: the one to log.
    pub first: bool,
}

/// Backtrack-limit hits in this VM since the metric last took them.
static BACKTRACK_LIMIT_HITS: AtomicU64 = AtomicU64::new(0);

/// The backtrack-limit hits since the last call (the host adds them to its counter each tick).
pub fn take_backtrack_limit_hits() -> u64 {
    BACKTRACK_LIMIT_HITS.swap(0, Ordering::Relaxed)
}

fn limit_hit() -> LimitHit {
    LimitHit {
        first: BACKTRACK_LIMIT_HITS.fetch_add(1, Ordering::Relaxed) == 0,
    }
}

impl Pattern {
    /// The linear-time engine if it accepts `raw`, else the backtracking one. ASCII classes in
    /// both, as regexp2's RE2 option (`\d` is `[0-9]`): no Unicode tables in the binary.
    pub fn compile(raw: &str) -> Result<Pattern, MatchError> {
        let linear = regex::bytes::RegexBuilder::new(raw)
            .unicode(false)
            .size_limit(REGEX_SIZE_LIMIT)
            .build();
        if let Ok(regex) = linear {
            return Ok(Pattern::Linear(regex));
        }
        fancy_regex::RegexBuilder::new(raw)
            .bytes_mode(BytesMode::Ascii)
            .backtrack_limit(BACKTRACK_LIMIT)
            .delegate_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(Pattern::Backtracking)
            .map_err(|e| MatchError(format!("bad regex `{raw}`: {e}")))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Pattern::Linear(r) => r.as_str(),
            Pattern::Backtracking(r) => r.as_str(),
        }
    }

    /// Whether the pattern matches anywhere in `value` (polaris-go's source test).
    pub fn is_match(&self, value: &str) -> Result<bool, LimitHit> {
        match self {
            Pattern::Linear(r) => Ok(r.is_match(value.as_bytes())),
            Pattern::Backtracking(r) => r.is_match(value.as_bytes()).map_err(|_| limit_hit()),
        }
    }

    /// Whether the leftmost match in `value` is non-empty: polaris-go's destination test
    /// (`matchDstMetadata` takes an empty first match as no match).
    pub fn finds_non_empty(&self, value: &str) -> Result<bool, LimitHit> {
        match self {
            Pattern::Linear(r) => Ok(r.find(value.as_bytes()).is_some_and(|m| !m.is_empty())),
            Pattern::Backtracking(r) => r
                .find(value.as_bytes())
                .map(|m| m.is_some_and(|m| m.end() > m.start()))
                .map_err(|_| limit_hit()),
        }
    }
}

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
            T::Regex => Test::Regex(Pattern::compile(raw)?),
            T::NotEquals => Test::NotEquals(raw.to_string()),
            T::In => Test::In(raw.split(',').map(str::to_string).collect()),
            T::NotIn => Test::NotIn(raw.split(',').map(str::to_string).collect()),
            T::Range => {
                let (lo, hi) = raw
                    .split_once('~')
                    .and_then(|(a, b)| {
                        // No trimming: polaris-go's `strconv.ParseInt` takes no spaces.
                        Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?))
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

    /// The pattern of a text REGEX test the linear engine runs, which a plan's regex set can
    /// answer (a backtracking pattern keeps its own engine and limit).
    pub fn regex_pattern(&self) -> Option<&str> {
        match (&self.test, &self.source) {
            (Test::Regex(Pattern::Linear(r)), ValueSource::Text) => Some(r.as_str()),
            _ => None,
        }
    }

    /// Whether this matcher accepts everything.
    pub fn is_any(&self) -> bool {
        matches!(self.test, Test::Any)
    }

    /// Matches a value; `None` (the key is absent) matches nothing, not even `*` (polaris-go
    /// `matchSourceMetadata`). A REGEX out of backtracking steps is `Err`: no match, to be logged.
    pub fn check(&self, value: Option<&str>) -> Result<bool, LimitHit> {
        let Some(x) = value else {
            return Ok(false);
        };
        Ok(match &self.test {
            Test::Any => true,
            Test::Exact(v) => v == x,
            Test::Regex(r) => return r.is_match(x),
            Test::NotEquals(v) => v != x,
            Test::In(vs) => vs.iter().any(|v| v == x),
            Test::NotIn(vs) => !vs.iter().any(|v| v == x),
            Test::Range(lo, hi) => x.parse::<i64>().is_ok_and(|n| (*lo..=*hi).contains(&n)),
        })
    }

    /// [`Matcher::check`], with a REGEX out of backtracking steps as no match.
    pub fn matches(&self, value: Option<&str>) -> bool {
        self.check(value).unwrap_or(false)
    }

    /// Whether an instance label `value` passes this destination matcher. As [`Matcher::check`],
    /// except that a REGEX needs a non-empty leftmost match, as in polaris-go.
    pub fn check_label(&self, value: &str) -> Result<bool, LimitHit> {
        match &self.test {
            Test::Regex(r) => r.finds_non_empty(value),
            _ => self.check(Some(value)),
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
    fn empty_and_star_match_any_present_value() {
        assert!(m(T::Exact, "*").matches(Some("x")));
        assert!(m(T::Regex, "").matches(Some("x")));
        assert!(m(T::NotIn, "*").matches(Some("")));
    }

    #[test]
    fn an_absent_value_matches_nothing_not_even_star() {
        for (kind, value) in [
            (T::Exact, "*"),
            (T::Exact, ""),
            (T::NotEquals, "x"),
            (T::NotIn, "a,b"),
            (T::Regex, ".*"),
        ] {
            assert!(!m(kind, value).matches(None), "{kind:?} {value}");
        }
    }

    #[test]
    fn regex_is_unanchored_like_go() {
        assert!(m(T::Regex, "^a.*").matches(Some("abc")));
        assert!(m(T::Regex, "b").matches(Some("abc")));
        assert!(!m(T::Regex, "^b").matches(Some("abc")));
    }

    #[test]
    fn not_equals_and_not_in_fail_an_absent_key_as_polaris_go_does() {
        assert!(m(T::NotEquals, "DELETE").matches(Some("GET")));
        assert!(!m(T::NotEquals, "DELETE").matches(Some("DELETE")));
        assert!(!m(T::NotEquals, "x").matches(None));
        assert!(m(T::NotIn, "a,b").matches(Some("c")));
        assert!(!m(T::NotIn, "a,b").matches(Some("b")));
        assert!(!m(T::NotIn, "a,b").matches(None));
    }

    #[test]
    fn patterns_the_linear_engine_accepts_stay_on_it() {
        for p in ["^v[0-9]+$", "(?i)^gray", "a|b", r"\d{3}", "(?P<x>a)"] {
            assert!(m(T::Regex, p).regex_pattern().is_some(), "{p}");
        }
    }

    #[test]
    fn look_around_and_backreferences_compile_as_in_polaris_go() {
        let not_prod = m(T::Regex, "^(?!prod).*$");
        assert!(not_prod.regex_pattern().is_none());
        assert!(not_prod.matches(Some("gray")));
        assert!(!not_prod.matches(Some("prod-1")));
        let behind = m(T::Regex, "(?<=v)2");
        assert!(behind.matches(Some("v2")) && !behind.matches(Some("x2")));
        let twice = m(T::Regex, r"^(\w+)-\1$");
        assert!(twice.matches(Some("ab-ab")) && !twice.matches(Some("ab-cd")));
    }

    #[test]
    fn a_backtracking_regex_out_of_steps_is_no_match_and_counted() {
        // Catastrophic backtracking: each `a` can be taken by either branch, 2^40 ways to fail.
        let evil = m(T::Regex, "^(?:(?=a)a|a)+$");
        let value = "a".repeat(40) + "!";
        assert!(matches!(evil.check(Some(&value)), Err(LimitHit { .. })));
        assert!(!evil.matches(Some(&value)));
        // Only this test reads the counter; others may add to it meanwhile.
        assert!(take_backtrack_limit_hits() >= 2);
        // A short value stays within the limit and gets its real answer.
        assert_eq!(evil.check(Some("aaa!")), Ok(false));
    }

    /// What a test that runs out of steps costs, natively:
    /// `cargo test --release --lib routing::matcher::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        use std::time::Instant;
        let evil = m(T::Regex, "^(?:(?=a)a|a)+$");
        let value = "a".repeat(40) + "!";
        let start = Instant::now();
        for _ in 0..100 {
            assert!(evil.check(Some(&value)).is_err());
        }
        println!("backtrack limit hit: {:?}", start.elapsed() / 100);
        let not_prod = m(T::Regex, "^(?!prod).*$");
        let long = "g".repeat(60_000);
        let start = Instant::now();
        for _ in 0..100 {
            assert_eq!(not_prod.check(Some(&long)), Ok(true));
        }
        println!("^(?!prod).*$ on 60,000 bytes: {:?}", start.elapsed() / 100);
    }

    #[test]
    fn a_destination_regex_needs_a_non_empty_leftmost_match() {
        // polaris-go `matchDstMetadata`: `m == nil || m.String() == ""` is no match.
        let star = m(T::Regex, "a*");
        assert_eq!(star.check_label("aab"), Ok(true));
        assert_eq!(star.check_label("baa"), Ok(false));
        assert!(star.matches(Some("baa")));
        assert_eq!(m(T::Regex, "^(?!prod)").check_label("gray"), Ok(false));
        assert_eq!(m(T::Regex, "^(?!prod)g").check_label("gray"), Ok(true));
        assert_eq!(m(T::Exact, "v1").check_label("v1"), Ok(true));
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
        assert!(m(T::Range, "+1~5").matches(Some("+3")));
    }

    #[test]
    fn range_bounds_and_values_are_not_trimmed_as_in_polaris_go() {
        assert!(!m(T::Range, "1~5").matches(Some(" 3")));
        assert!(!m(T::Range, "1~5").matches(Some("3 ")));
        for bad in ["1 ~ 5", "1~2~3"] {
            assert!(Matcher::compile(&proto::MatchString {
                r#type: T::Range as i32,
                value: Some(bad.into()),
                value_type: 0,
            })
            .is_err());
        }
    }

    #[test]
    fn bad_regex_and_bad_range_are_errors_not_panics() {
        for (kind, value) in [
            (T::Regex, "(unclosed"),
            (T::Regex, "(?!unclosed"),
            // No Unicode tables in the binary (see the README's intended differences).
            (T::Regex, r"^\p{L}+$"),
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
