//! All REGEX source tests of a plan, grouped by the argument they read: one regex set per
//! argument, run at most once per request. Twenty gray rules with regexes on `x-env` then cost one
//! pass over the header instead of twenty, and the same pattern repeated across rules (a `uid`
//! check in every rule) runs once.
//!
//! Each regex matcher of a planned rule is given a slot (set, pattern); a request keeps the
//! answers of the sets it ran in a fixed-size memo, so nothing is allocated per request.

use std::cell::RefCell;

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};

use super::args::{Arg, RequestFacts};
use super::matcher::{LimitHit, Matcher, REGEX_SIZE_LIMIT};

/// Sets per plan and patterns per set the memo has room for; tests beyond them keep their own
/// compiled regex, which is correct, only slower.
const MAX_SETS: usize = 8;
const MAX_PATTERNS: usize = 64;

/// Where a regex test's answer is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    set: u8,
    pattern: u8,
}

#[derive(Debug)]
struct ArgSet {
    arg: Arg,
    patterns: Vec<String>,
    regex: Option<Regex>,
    /// Reused for every evaluation: the plan lives on one thread.
    found: RefCell<PatternSet>,
}

/// The regex sets of one plan.
#[derive(Debug, Default)]
pub struct RegexSets {
    sets: Vec<ArgSet>,
}

impl RegexSets {
    /// Files `matcher` (a text REGEX test on `arg`) under its argument's set and returns its slot,
    /// or `None` when there is no room (the matcher then runs its own regex).
    pub fn file(&mut self, arg: &Arg, matcher: &Matcher) -> Option<Slot> {
        let pattern = matcher.regex_pattern()?;
        let set = match self.sets.iter().position(|s| &s.arg == arg) {
            Some(n) => n,
            None if self.sets.len() < MAX_SETS => {
                self.sets.push(ArgSet {
                    arg: arg.clone(),
                    patterns: Vec::new(),
                    regex: None,
                    found: RefCell::new(PatternSet::new(0)),
                });
                self.sets.len() - 1
            }
            None => return None,
        };
        let entry = self.sets.get_mut(set)?;
        let position = match entry.patterns.iter().position(|p| p == pattern) {
            Some(n) => n,
            None if entry.patterns.len() < MAX_PATTERNS => {
                entry.patterns.push(pattern.to_string());
                entry.patterns.len() - 1
            }
            None => return None,
        };
        Some(Slot {
            set: u8::try_from(set).ok()?,
            pattern: u8::try_from(position).ok()?,
        })
    }

    /// Compiles every set. A set that does not compile (it cannot, when each of its patterns
    /// did, short of size limits) leaves its slots unanswerable: `RegexEval` then falls back to
    /// each matcher's own regex.
    pub fn compile(&mut self) {
        for set in &mut self.sets {
            let regex = meta::Builder::new()
                .syntax(syntax::Config::new().unicode(false).utf8(false))
                .configure(
                    meta::Config::new()
                        .match_kind(MatchKind::All)
                        .nfa_size_limit(Some(REGEX_SIZE_LIMIT * set.patterns.len().max(1))),
                )
                .build_many(&set.patterns)
                .ok();
            if let Some(r) = &regex {
                set.found = RefCell::new(PatternSet::new(r.pattern_len()));
            }
            set.regex = regex;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

/// One request's view of the plan's regex sets: each set runs on first need.
pub struct RegexEval<'p> {
    sets: &'p RegexSets,
    ran: u8,
    answers: [u64; MAX_SETS],
}

impl<'p> RegexEval<'p> {
    pub fn new(sets: &'p RegexSets) -> RegexEval<'p> {
        RegexEval {
            sets,
            ran: 0,
            answers: [0; MAX_SETS],
        }
    }

    /// Whether `matcher` accepts the request's value of `arg`, answered from its set when it has
    /// a slot; `Err` when a backtracking REGEX ran out of steps (no match).
    pub fn check(
        &mut self,
        arg: &Arg,
        matcher: &Matcher,
        facts: &mut dyn RequestFacts,
    ) -> Result<bool, LimitHit> {
        match matcher.slot.and_then(|slot| self.answer(slot, facts)) {
            Some(hit) => Ok(hit),
            None => matcher.check(facts.arg(arg)),
        }
    }

    /// [`RegexEval::check`] with a REGEX out of steps as no match.
    pub fn matches(&mut self, arg: &Arg, matcher: &Matcher, facts: &mut dyn RequestFacts) -> bool {
        self.check(arg, matcher, facts).unwrap_or(false)
    }

    fn answer(&mut self, slot: Slot, facts: &mut dyn RequestFacts) -> Option<bool> {
        let n = usize::from(slot.set);
        let set = self.sets.sets.get(n)?;
        let regex = set.regex.as_ref()?;
        let bit = 1u8 << slot.set;
        if self.ran & bit == 0 {
            let mut mask = 0u64;
            // An absent argument fails every regex, as `Matcher::matches(None)` does.
            if let Some(value) = facts.arg(&set.arg) {
                let mut found = set.found.try_borrow_mut().ok()?;
                found.clear();
                regex.which_overlapping_matches(&Input::new(value.as_bytes()), &mut found);
                for p in found.iter() {
                    mask |= 1u64.checked_shl(p.as_u32()).unwrap_or(0);
                }
            }
            if let Some(a) = self.answers.get_mut(n) {
                *a = mask;
            }
            self.ran |= bit;
        }
        let mask = self.answers.get(n).copied().unwrap_or(0);
        Some(mask & (1u64 << slot.pattern) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::polaris::proto;
    use crate::routing::StaticFacts;
    use proto::match_string::MatchStringType as T;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn regex(p: &str) -> Matcher {
        Matcher::compile(&proto::MatchString {
            r#type: T::Regex as i32,
            value: Some(p.into()),
            value_type: 0,
        })
        .unwrap()
    }

    fn env(v: &str) -> StaticFacts {
        StaticFacts {
            headers: vec![("x-env".into(), v.into())],
            ..StaticFacts::default()
        }
    }

    #[test]
    fn a_set_answers_like_each_regex_alone() {
        let arg = Arg::Header("x-env".into());
        let patterns = ["^env-1$", "^env-1", "env-\\d+", "^gray", "[", "(?i)^ENV"];
        let mut sets = RegexSets::default();
        let mut matchers: Vec<Matcher> = patterns
            .iter()
            .filter_map(|p| Matcher::compile(&regex_ms(p)).ok())
            .collect();
        for m in &mut matchers {
            m.slot = sets.file(&arg, m);
            assert!(m.slot.is_some());
        }
        sets.compile();
        for value in ["env-1", "env-12", "gray-env-1", "", "ENV-3"] {
            let mut eval = RegexEval::new(&sets);
            for m in &matchers {
                let alone = m.matches(Some(value));
                assert_eq!(eval.matches(&arg, m, &mut env(value)), alone, "{value}");
            }
        }
    }

    fn regex_ms(p: &str) -> proto::MatchString {
        proto::MatchString {
            r#type: T::Regex as i32,
            value: Some(p.into()),
            value_type: 0,
        }
    }

    #[test]
    fn the_same_pattern_on_the_same_argument_shares_a_slot() {
        let mut sets = RegexSets::default();
        let uid = Arg::Query("uid".into());
        let a = sets.file(&uid, &regex("^[0-9]+$"));
        let b = sets.file(&uid, &regex("^[0-9]+$"));
        let c = sets.file(&Arg::Query("other".into()), &regex("^[0-9]+$"));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn an_absent_argument_fails_every_regex() {
        let arg = Arg::Header("x-env".into());
        let mut sets = RegexSets::default();
        let mut m = regex(".*");
        m.slot = sets.file(&arg, &m);
        sets.compile();
        let mut eval = RegexEval::new(&sets);
        assert!(!eval.matches(&arg, &m, &mut StaticFacts::default()));
    }

    #[test]
    fn matchers_beyond_the_room_keep_their_own_regex() {
        let arg = Arg::Header("x-env".into());
        let mut sets = RegexSets::default();
        for n in 0..MAX_PATTERNS {
            assert!(sets.file(&arg, &regex(&format!("^p{n}$"))).is_some());
        }
        let mut extra = regex("^extra$");
        extra.slot = sets.file(&arg, &extra);
        assert!(extra.slot.is_none());
        sets.compile();
        let mut eval = RegexEval::new(&sets);
        assert!(eval.matches(&arg, &extra, &mut env("extra")));
    }
}
