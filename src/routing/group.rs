//! A destination group of a route: its instances fixed by its labels, or chosen per request by
//! its PARAMETER labels among pools prebuilt for every value the instances carry.

use std::collections::{HashMap, HashSet};

use super::metadata::MetadataRouting;
use super::nearby::Nearby;
use super::pool::Pool;
use super::rule::{Destination, Parameter};
use crate::matching::RequestFacts;
use crate::model::ServiceSnapshot;

/// A destination group of a route.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub priority: u32,
    pub weight: u32,
    pool: GroupPool,
}

/// A group's instances: fixed by its labels, or chosen per request by its PARAMETER labels among
/// pools prebuilt for every value the instances carry.
#[derive(Debug)]
enum GroupPool {
    Fixed(Pool),
    ByParameter(Box<ParamPools>),
}

/// Separates the values of several PARAMETER keys in a `ParamPools` key.
const TUPLE_SEP: char = '\u{1f}';

#[derive(Debug)]
struct ParamPools {
    parameters: Vec<Parameter>,
    /// The parameter keys' values, joined by `TUPLE_SEP` -> the members carrying exactly them or,
    /// with a NOT_EQUALS parameter, the members carrying another value that a healthy instance
    /// carries (see `rule::Admission`).
    by_value: HashMap<String, Pool>,
    /// With a NOT_EQUALS parameter, for a value no member carries: the members carrying a value
    /// that a healthy instance carries.
    carriers: Pool,
}

impl Group {
    /// The group of destination `d`, its pools built over `snapshot`.
    pub fn build(
        d: &Destination,
        snapshot: &ServiceSnapshot,
        nearby: Option<&Nearby>,
        metadata: Option<&MetadataRouting>,
    ) -> Group {
        let admission = d.admission(&snapshot.instances);
        let base = Pool::new(snapshot, |i| admission.admits(&i.metadata));
        let pool = if d.parameters.is_empty() {
            GroupPool::Fixed(
                base.with_levels(snapshot, nearby)
                    .with_metadata(snapshot, metadata, nearby),
            )
        } else {
            GroupPool::ByParameter(Box::new(ParamPools::build(
                &base,
                snapshot,
                &d.parameters,
                nearby,
                metadata,
            )))
        };
        Group {
            name: d.name.clone(),
            priority: d.priority,
            weight: d.weight,
            pool,
        }
    }

    /// The group's pool when it does not depend on the request.
    pub fn fixed_pool(&self) -> Option<&Pool> {
        match &self.pool {
            GroupPool::Fixed(pool) => Some(pool),
            GroupPool::ByParameter(_) => None,
        }
    }

    /// The group's pool for this request; `None` when a PARAMETER label finds no value.
    pub fn pool(&self, facts: &mut dyn RequestFacts) -> Option<&Pool> {
        match &self.pool {
            GroupPool::Fixed(pool) => Some(pool),
            GroupPool::ByParameter(p) => p.resolve(facts),
        }
    }

    pub fn is_fixed(&self) -> bool {
        matches!(self.pool, GroupPool::Fixed(_))
    }
}

impl ParamPools {
    fn build(
        base: &Pool,
        snapshot: &ServiceSnapshot,
        parameters: &[Parameter],
        nearby: Option<&Nearby>,
        metadata: Option<&MetadataRouting>,
    ) -> ParamPools {
        // Each instance's tuple of values, computed once: `None` when it lacks a key.
        let tuples: Vec<Option<String>> = snapshot
            .instances
            .iter()
            .map(|i| {
                let mut key = String::new();
                for (n, p) in parameters.iter().enumerate() {
                    if n > 0 {
                        key.push(TUPLE_SEP);
                    }
                    key.push_str(i.metadata.get(&p.key)?);
                }
                Some(key)
            })
            .collect();
        let tuple = |n: usize| tuples.get(n).and_then(Option::as_deref);
        let negate = parameters.iter().any(|p| p.negate);
        let finish = |pool: Pool| {
            pool.with_levels(snapshot, nearby)
                .with_metadata(snapshot, metadata, nearby)
        };
        // NOT_EQUALS (polaris-go `GetInstancesWithMetaValuesNotEqual`): only values some healthy
        // instance of the service carries are candidates. polaris-go caches that value set by key
        // alone, so a long-lived process keeps answering for the first request's value; we answer
        // as a fresh polaris-go process does, for each request's own value.
        let healthy_values: HashSet<&str> = snapshot
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.is_selectable() && i.healthy)
            .filter_map(|(n, _)| tuple(n))
            .collect();
        let mut values: Vec<&str> = base.members().iter().filter_map(|n| tuple(*n)).collect();
        values.sort_unstable();
        values.dedup();
        let by_value = values
            .into_iter()
            .map(|t| {
                let pool = base.sub_at(|n| {
                    tuple(n).is_some_and(|mine| {
                        if negate {
                            mine != t && healthy_values.contains(mine)
                        } else {
                            mine == t
                        }
                    })
                });
                (t.to_string(), finish(pool))
            })
            .collect();
        let carriers = if negate {
            finish(base.sub_at(|n| tuple(n).is_some_and(|v| healthy_values.contains(v))))
        } else {
            Pool::default()
        };
        ParamPools {
            parameters: parameters.to_vec(),
            by_value,
            carriers,
        }
    }

    fn resolve(&self, facts: &mut dyn RequestFacts) -> Option<&Pool> {
        match self.parameters.as_slice() {
            [one] => {
                let value = facts.arg(&one.arg)?;
                match self.by_value.get(value) {
                    Some(pool) => Some(pool),
                    None if one.negate => Some(&self.carriers),
                    None => None,
                }
            }
            many => {
                let mut key = String::new();
                for (n, p) in many.iter().enumerate() {
                    if n > 0 {
                        key.push(TUPLE_SEP);
                    }
                    key.push_str(facts.arg(&p.arg)?);
                }
                self.by_value.get(&key)
            }
        }
    }
}
