//! A prefilter over a service's rules: most rule sets test one argument for exact values (gray
//! rules on `x-env`, tenants on `x-tenant`). Rules are filed under the value each of their
//! sources requires, so a request reads that argument once and evaluates only the rules filed
//! under its value plus those that cannot be filed, in the original order.

use std::collections::HashMap;

use super::rule::Route;
use crate::matching::{Arg, RequestFacts};

#[derive(Debug, Default)]
pub struct RuleIndex {
    arg: Option<Arg>,
    by_value: HashMap<String, Vec<usize>>,
    /// Rules with a source that does not pin `arg` to one value: always candidates.
    unfiled: Vec<usize>,
}

impl RuleIndex {
    /// Files `routes` under the argument most of them pin; no index when fewer than two would be
    /// filed (then every rule is a candidate, as without an index).
    pub fn build<'a>(routes: impl Iterator<Item = &'a Route> + Clone) -> RuleIndex {
        let mut counts: HashMap<&Arg, usize> = HashMap::new();
        for route in routes.clone() {
            let Some(first) = route.sources.first() else {
                continue;
            };
            for arg in first.args() {
                if route.sources.iter().all(|s| s.exact(arg).is_some()) {
                    *counts.entry(arg).or_default() += 1;
                }
            }
        }
        let Some((arg, filed)) = counts.into_iter().max_by(|a, b| {
            a.1.cmp(&b.1)
                .then_with(|| b.0.cmp_key().cmp(&a.0.cmp_key()))
        }) else {
            return RuleIndex::default();
        };
        if filed < 2 {
            return RuleIndex::default();
        }
        let arg = arg.clone();
        let mut index = RuleIndex {
            arg: Some(arg.clone()),
            ..RuleIndex::default()
        };
        for (n, route) in routes.enumerate() {
            let values: Option<Vec<&str>> = if route.sources.is_empty() {
                None
            } else {
                route.sources.iter().map(|s| s.exact(&arg)).collect()
            };
            match values {
                Some(values) => {
                    for v in values {
                        let list = index.by_value.entry(v.to_string()).or_default();
                        if list.last() != Some(&n) {
                            list.push(n);
                        }
                    }
                }
                None => index.unfiled.push(n),
            }
        }
        index
    }

    /// Candidate rule positions for this request, ascending, without allocating.
    pub fn candidates<'s>(&'s self, facts: &mut dyn RequestFacts, total: usize) -> Candidates<'s> {
        let Some(arg) = &self.arg else {
            return Candidates::All(0..total);
        };
        let filed: &[usize] = facts
            .arg(arg)
            .and_then(|v| self.by_value.get(v))
            .map_or(&[], Vec::as_slice);
        Candidates::Merge(filed, &self.unfiled)
    }
}

/// Rule positions to evaluate, in rule order.
pub enum Candidates<'s> {
    All(std::ops::Range<usize>),
    Merge(&'s [usize], &'s [usize]),
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::All(range) => range.next(),
            Candidates::Merge(a, b) => {
                let next = match (a.first(), b.first()) {
                    (Some(&x), Some(&y)) if x <= y => x,
                    (Some(_), Some(&y)) => y,
                    (Some(&x), None) => x,
                    (None, Some(&y)) => y,
                    (None, None) => return None,
                };
                if a.first() == Some(&next) {
                    *a = a.get(1..).unwrap_or(&[]);
                }
                if b.first() == Some(&next) {
                    *b = b.get(1..).unwrap_or(&[]);
                }
                Some(next)
            }
        }
    }
}

impl Arg {
    /// A stable tie-break between arguments pinned by as many rules.
    fn cmp_key(&self) -> String {
        format!("{self:?}")
    }
}
