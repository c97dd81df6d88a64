//! The routing plan of one destination service: its rules with each destination group's instance
//! pool precomputed, built once per change of instances or rules. A request walks the rules,
//! picks a group and then an instance from the group's pool, allocating nothing.

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};

use super::args::RequestFacts;
use super::index::RuleIndex;
use super::metadata::{tuple_key, MetaFailover, MetaOutcome, MetadataRouting};
use super::nearby::{Level, Nearby};
use super::regex_set::{RegexEval, RegexSets};
use super::rule::{Direction, Parameter, Route};
use crate::lb::{Balancer, Member, Rng, Spec, WeightTable};
use crate::model::{Instance, ServiceSnapshot};

/// Selectable instances (not isolated, weight > 0) of one subset, with the balancers over its
/// healthy part and over all of it (recover-all), each built on first use.
#[derive(Debug)]
pub struct Pool {
    members: Vec<usize>,
    healthy: Vec<usize>,
    balancers: [OnceCell<Balancer>; 2],
    /// With nearby routing: the members at each level nearer than `all`, nearest first.
    near: Vec<(Level, Pool)>,
    /// With metadata routing: the sub-pools a request's wanted labels select.
    meta: Option<Box<MetaIndex>>,
}

/// Metadata-routing sub-pools of a pool, prebuilt per snapshot change.
#[derive(Debug, Default)]
struct MetaIndex {
    /// Wanted-label tuple (`metadata::tuple_key`) -> (members carrying it, the other members).
    by_tuple: HashMap<String, (Pool, Pool)>,
    /// Key subset (bit mask) -> members carrying none of those keys.
    lacking: Vec<(u8, Pool)>,
}

/// The instance a pool gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Picked {
    pub index: usize,
    /// No healthy member was left, so all were used (polaris-go recover-all).
    pub recovered_all: bool,
}

impl Pool {
    pub fn new(snapshot: &ServiceSnapshot, keep: impl Fn(&Instance) -> bool) -> Pool {
        let members: Vec<usize> = snapshot
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.is_selectable() && keep(i))
            .map(|(n, _)| n)
            .collect();
        let healthy = members
            .iter()
            .copied()
            .filter(|&n| snapshot.instances.get(n).is_some_and(|i| i.healthy))
            .collect();
        Pool {
            members,
            healthy,
            ..Pool::default()
        }
    }

    /// The members (and healthy members) whose instance passes `keep`.
    fn sub(&self, snapshot: &ServiceSnapshot, keep: impl Fn(&Instance) -> bool) -> Pool {
        self.sub_at(|n| snapshot.instances.get(n).is_some_and(&keep))
    }

    /// The members (and healthy members) whose instance index passes `keep`.
    fn sub_at(&self, keep: impl Fn(usize) -> bool) -> Pool {
        Pool {
            members: self.members.iter().copied().filter(|n| keep(*n)).collect(),
            healthy: self.healthy.iter().copied().filter(|n| keep(*n)).collect(),
            ..Pool::default()
        }
    }

    /// Adds the sub-pools metadata routing chooses between, each with its nearby levels.
    fn with_metadata(
        mut self,
        snapshot: &ServiceSnapshot,
        metadata: Option<&MetadataRouting>,
        nearby: Option<&Nearby>,
    ) -> Pool {
        let Some(metadata) = metadata.filter(|m| !m.labels.is_empty()) else {
            return self;
        };
        let keys: Vec<&str> = metadata.labels.iter().map(|(_, k)| k.as_str()).collect();
        let mut index = MetaIndex::default();
        for mask in 1..(1u8 << keys.len()) {
            let in_mask = |i: usize| mask & (1 << i) != 0;
            let tuple = |inst: &Instance| -> Option<String> {
                let values: Option<Vec<&str>> = keys
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| in_mask(*i))
                    .map(|(_, k)| inst.metadata.get(*k).map(String::as_str))
                    .collect();
                values.map(|v| tuple_key(mask, &v))
            };
            let mut tuples: Vec<String> = self
                .members
                .iter()
                .filter_map(|n| snapshot.instances.get(*n).and_then(&tuple))
                .collect();
            tuples.sort_unstable();
            tuples.dedup();
            for t in tuples {
                let matched = self
                    .sub(snapshot, |i| tuple(i).as_ref() == Some(&t))
                    .with_levels(snapshot, nearby);
                let others = self
                    .sub(snapshot, |i| tuple(i).as_ref() != Some(&t))
                    .with_levels(snapshot, nearby);
                index.by_tuple.insert(t, (matched, others));
            }
            let lacking = self
                .sub(snapshot, |i| {
                    keys.iter()
                        .enumerate()
                        .filter(|(n, _)| in_mask(*n))
                        .all(|(_, k)| !i.metadata.contains_key(*k))
                })
                .with_levels(snapshot, nearby);
            index.lacking.push((mask, lacking));
        }
        self.meta = Some(Box::new(index));
        self
    }

    /// Adds the per-level sub-pools nearby routing chooses between.
    fn with_levels(mut self, snapshot: &ServiceSnapshot, nearby: Option<&Nearby>) -> Pool {
        let Some(nearby) = nearby else {
            return self;
        };
        self.near = nearby
            .levels()
            .filter(|l| *l != Level::All)
            .map(|level| {
                let here = &nearby.location;
                (
                    level,
                    self.sub(snapshot, |i| level.holds(here, &i.location)),
                )
            })
            .collect();
        self
    }

    fn at(&self, level: Level) -> Option<&Pool> {
        if level == Level::All {
            return Some(self);
        }
        self.near.iter().find(|(l, _)| *l == level).map(|(_, p)| p)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Health filter, recover-all, then the balancer.
    pub fn pick(
        &self,
        snapshot: &ServiceSnapshot,
        balancer: Spec,
        key: Option<u64>,
        rng: &mut Rng,
    ) -> Option<Picked> {
        let recovered_all = self.healthy.is_empty();
        let (slot, list) = if recovered_all {
            (1, &self.members)
        } else {
            (0, &self.healthy)
        };
        let balancer = self.balancers.get(slot)?.get_or_init(|| {
            let members: Vec<Member<'_>> = list
                .iter()
                .filter_map(|&n| {
                    snapshot.instances.get(n).map(|i| Member {
                        index: n,
                        weight: i.weight,
                        id: &i.id,
                    })
                })
                .collect();
            Balancer::build_with(balancer.policy, &members, balancer.options)
        });
        balancer.pick(key, rng).map(|index| Picked {
            index,
            recovered_all,
        })
    }

    /// [`Pool::pick`] around the members `avoid` rejects (open circuit breakers), without
    /// rebuilding any balancer: the balancer's own pick first, then up to three re-picks (a hash
    /// key is re-mixed, so each key still lands on one instance), then a weighted pick among the
    /// members left. `avoid(index)` returning false means the member takes the request (it may
    /// take a half-open probe), so it is asked once per member at most. When every member is
    /// avoided, the balancer's pick stands and `recovered_all` is set (polaris-go's recover-all
    /// keeps circuit-broken instances when nothing else is left).
    pub fn pick_avoiding(
        &self,
        snapshot: &ServiceSnapshot,
        balancer: Spec,
        key: Option<u64>,
        rng: &mut Rng,
        avoid: &mut dyn FnMut(usize) -> bool,
    ) -> Option<Picked> {
        let first = self.pick(snapshot, balancer, key, rng)?;
        let mut avoided: Vec<usize> = Vec::new();
        let mut try_one = |index: usize, avoided: &mut Vec<usize>| -> bool {
            if avoided.contains(&index) {
                return false;
            }
            if avoid(index) {
                avoided.push(index);
                return false;
            }
            true
        };
        if try_one(first.index, &mut avoided) {
            return Some(first);
        }
        for attempt in 1..=3u64 {
            let remixed =
                key.map(|k| (k ^ attempt.wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(17));
            let again = self.pick(snapshot, balancer, remixed, rng)?;
            if try_one(again.index, &mut avoided) {
                return Some(again);
            }
        }
        let list = if first.recovered_all {
            &self.members
        } else {
            &self.healthy
        };
        loop {
            let left = WeightTable::new(
                list.iter()
                    .filter(|n| !avoided.contains(n))
                    .map(|&n| (n, snapshot.instances.get(n).map_or(0, |i| i.weight))),
            );
            let Some(index) = (match key {
                Some(k) if left.total_weight() > 0 => left.at(k % left.total_weight()),
                _ => left.pick(rng),
            }) else {
                return Some(Picked {
                    index: first.index,
                    recovered_all: true,
                });
            };
            if try_one(index, &mut avoided) {
                return Some(Picked {
                    index,
                    recovered_all: first.recovered_all,
                });
            }
            if !avoided.contains(&index) {
                // `avoid` said no without being recorded: cannot happen, but never loop forever.
                avoided.push(index);
            }
        }
    }
}

impl Default for Pool {
    fn default() -> Pool {
        Pool {
            members: Vec::new(),
            healthy: Vec::new(),
            balancers: [OnceCell::new(), OnceCell::new()],
            near: Vec::new(),
            meta: None,
        }
    }
}

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
    /// The group's pool for this request; `None` when a PARAMETER label finds no value.
    fn pool(&self, facts: &mut dyn RequestFacts) -> Option<&Pool> {
        match &self.pool {
            GroupPool::Fixed(pool) => Some(pool),
            GroupPool::ByParameter(p) => p.resolve(facts),
        }
    }

    fn is_fixed(&self) -> bool {
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
        let mut values: Vec<&str> = base.members.iter().filter_map(|n| tuple(*n)).collect();
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

#[derive(Debug)]
struct PlannedRoute {
    route: Route,
    groups: Vec<Group>,
    /// The lowest priority number among non-empty groups, when every group is fixed.
    best: Option<u32>,
    /// Some group depends on the request (PARAMETER labels).
    dynamic: bool,
}

/// What to do when rules exist but none matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Failover {
    /// polaris-go default: all instances.
    #[default]
    All,
    /// No instance: the request is refused.
    None,
}

#[derive(Debug)]
pub struct Plan {
    direction: Direction,
    routes: Vec<PlannedRoute>,
    index: RuleIndex,
    /// The rules' regex source tests, one set per argument.
    regexes: RegexSets,
    all: Pool,
    /// The balancer policy and its tuning.
    pub balancer: Spec,
    pub failover: Failover,
    /// Nearby routing, when the service enables it and this Envoy has a location.
    nearby: Option<Nearby>,
    metadata: Option<MetadataRouting>,
}

/// The pool a request was routed to, and how.
#[derive(Debug)]
pub struct Routed<'p> {
    pub pool: &'p Pool,
    /// The matched rule and group (`rule.subrule.group`), if a rule matched.
    pub rule: Option<&'p str>,
    pub group: Option<&'p str>,
}

impl Plan {
    /// Destination inbounds win; otherwise the caller's outbounds that name this service.
    pub fn build(
        snapshot: &ServiceSnapshot,
        inbounds: &[Route],
        outbounds: &[Route],
        balancer: impl Into<Spec>,
        failover: Failover,
        nearby: Option<&Nearby>,
        metadata: Option<&MetadataRouting>,
    ) -> Plan {
        let enabled = snapshot
            .metadata
            .get(super::nearby::ENABLE_KEY)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let nearby = nearby.filter(|n| enabled && n.has_location());
        let (direction, routes) = if inbounds.is_empty() {
            (Direction::Outbound, outbounds)
        } else {
            (Direction::Inbound, inbounds)
        };
        let key = &snapshot.key;
        let routes = routes
            .iter()
            .filter_map(|route| {
                let groups: Vec<Group> = route
                    .destinations
                    .iter()
                    .filter(|d| d.weight > 0 && d.targets(&key.namespace, &key.name))
                    .map(|d| {
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
                    })
                    .collect();
                let best = groups
                    .iter()
                    .filter(|g| matches!(&g.pool, GroupPool::Fixed(p) if !p.is_empty()))
                    .map(|g| g.priority)
                    .min();
                // An outbound rule that never names this service is not about it.
                (direction == Direction::Inbound || !groups.is_empty()).then(|| PlannedRoute {
                    route: route.clone(),
                    dynamic: !groups.iter().all(Group::is_fixed),
                    best,
                    groups,
                })
            })
            .collect::<Vec<PlannedRoute>>();
        let mut routes = routes;
        let mut regexes = RegexSets::default();
        for planned in &mut routes {
            planned.route.file_regexes(&mut regexes);
        }
        regexes.compile();
        let index = RuleIndex::build(routes.iter().map(|p| &p.route));
        Plan {
            direction,
            routes,
            index,
            regexes,
            all: Pool::new(snapshot, |_| true)
                .with_levels(snapshot, nearby)
                .with_metadata(snapshot, metadata, nearby),
            balancer: balancer.into(),
            failover,
            nearby: nearby.cloned(),
            metadata: metadata.filter(|m| !m.labels.is_empty()).cloned(),
        }
    }

    /// The configured metadata routing, if any.
    pub fn metadata(&self) -> Option<&MetadataRouting> {
        self.metadata.as_ref()
    }

    /// Metadata routing over a routed pool, for a wanted-label tuple (`None`: the request wants
    /// nothing, the pool stands). Healthy carriers of the labels win; otherwise the failover
    /// decides, falling back to unhealthy carriers (recover-all) before giving up.
    /// The outcome is `None` when the request wanted nothing.
    pub fn by_metadata<'p>(
        &self,
        pool: &'p Pool,
        wanted: Option<(u8, &str)>,
    ) -> Option<(&'p Pool, Option<MetaOutcome>)> {
        let (Some(config), Some((mask, key)), Some(index)) = (&self.metadata, wanted, &pool.meta)
        else {
            return Some((pool, None));
        };
        let entry = index.by_tuple.get(key);
        let matched = entry.map(|(m, _)| m).filter(|m| !m.is_empty());
        if let Some(m) = matched.filter(|m| !m.healthy.is_empty()) {
            return Some((m, Some(MetaOutcome::Matched)));
        }
        let failover = match config.failover {
            MetaFailover::None => None,
            MetaFailover::All => Some(pool),
            MetaFailover::Others => Some(entry.map_or(pool, |(_, others)| others)),
            MetaFailover::NotContainKey => index
                .lacking
                .iter()
                .find(|(m, _)| *m == mask)
                .map(|(_, p)| p),
        };
        match failover.filter(|p| !p.is_empty()) {
            Some(p) => Some((p, Some(MetaOutcome::Failover(config.failover)))),
            None => matched.map(|m| (m, Some(MetaOutcome::UnhealthyCarriers))),
        }
    }

    /// Nearby routing over a routed pool: the nearest level whose unhealthy share is under the
    /// threshold, else the nearest non-empty level in range. `None` when nothing is in range.
    pub fn narrow<'p>(&self, pool: &'p Pool) -> Option<(&'p Pool, Option<Level>)> {
        let Some(nearby) = &self.nearby else {
            return Some((pool, None));
        };
        let mut first_non_empty = None;
        for level in nearby.levels() {
            let Some(p) = pool.at(level) else { continue };
            if nearby.satisfied(p.members.len(), p.healthy.len()) {
                return Some((p, Some(level)));
            }
            if first_non_empty.is_none() && !p.is_empty() {
                first_non_empty = Some((p, Some(level)));
            }
        }
        first_non_empty
    }

    /// The widest level nearby routing may use, for the 503 body.
    pub fn nearby_limit(&self) -> Option<Level> {
        self.nearby.as_ref().map(|n| n.max_match_level)
    }

    /// Whether any rule applies to this service.
    pub fn has_rules(&self) -> bool {
        !self.routes.is_empty()
    }

    /// Rule routing: the first route whose sources match and that has a non-empty group wins;
    /// among its groups the lowest priority number is taken, then one group by weight.
    /// `None` when rules exist, none matched and failover is `None`.
    pub fn route(&self, facts: &mut dyn RequestFacts, rng: &mut Rng) -> Option<Routed<'_>> {
        let mut regexes = RegexEval::new(&self.regexes);
        for position in self.index.candidates(facts, self.routes.len()) {
            let Some(planned) = self.routes.get(position) else {
                continue;
            };
            if !planned.dynamic && planned.best.is_none() {
                continue;
            }
            if !planned.route.matches(self.direction, facts, &mut regexes) {
                continue;
            }
            let best = if planned.dynamic {
                let mut best: Option<u32> = None;
                for g in &planned.groups {
                    if g.pool(facts).is_some_and(|p| !p.is_empty()) {
                        best = Some(best.map_or(g.priority, |b| b.min(g.priority)));
                    }
                }
                best
            } else {
                planned.best
            };
            let Some(best) = best else {
                continue;
            };
            let mut total = 0u64;
            for g in planned.groups.iter().filter(|g| g.priority == best) {
                if g.pool(facts).is_some_and(|p| !p.is_empty()) {
                    total += u64::from(g.weight);
                }
            }
            let mut point = rng.below(total.max(1));
            for g in planned.groups.iter().filter(|g| g.priority == best) {
                let Some(pool) = g.pool(facts).filter(|p| !p.is_empty()) else {
                    continue;
                };
                let w = u64::from(g.weight);
                if point >= w {
                    point -= w;
                    continue;
                }
                return Some(Routed {
                    pool,
                    rule: Some(planned.route.rule.as_str()),
                    group: Some(g.name.as_str()),
                });
            }
            return None;
        }
        if self.routes.is_empty() || self.failover == Failover::All {
            Some(Routed {
                pool: &self.all,
                rule: None,
                group: None,
            })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::Policy;
    use crate::model::upstream_address;
    use crate::model::{Location, ServiceKey};
    use crate::polaris::proto;
    use crate::routing::metadata::tuple_key;
    use crate::routing::StaticFacts;
    use std::collections::HashMap;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn instance(port: u32, zone: &str, healthy: bool) -> Instance {
        Instance {
            id: port.to_string(),
            host: "127.0.0.1".into(),
            port,
            weight: 100,
            healthy,
            isolated: false,
            metadata: HashMap::new(),
            location: Location {
                region: "r1".into(),
                zone: zone.into(),
                campus: String::new(),
            },
            upstream: upstream_address("127.0.0.1", port),
        }
    }

    fn snapshot(instances: Vec<Instance>, nearby: bool) -> ServiceSnapshot {
        let metadata = if nearby {
            [("internal-enable-nearby".to_string(), "true".to_string())].into()
        } else {
            HashMap::new()
        };
        ServiceSnapshot::new(
            ServiceKey::new("default", "echo"),
            "r".into(),
            metadata,
            instances,
        )
    }

    fn here(zone: &str) -> Nearby {
        Nearby {
            location: Location {
                region: "r1".into(),
                zone: zone.into(),
                campus: String::new(),
            },
            ..Nearby::default()
        }
    }

    fn ports(plan: &Plan, s: &ServiceSnapshot, n: usize) -> Vec<u32> {
        let mut rng = Rng::new(1);
        let mut seen: Vec<u32> = (0..n)
            .filter_map(|_| {
                let routed = plan.route(&mut StaticFacts::default(), &mut rng)?;
                let (pool, _) = plan.narrow(routed.pool)?;
                let p = pool.pick(s, plan.balancer, None, &mut rng)?;
                s.instance(p.index).map(|i| i.port)
            })
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    }

    fn gray_rules(n: usize) -> Vec<Route> {
        use crate::polaris::proto;
        use proto::match_string::MatchStringType as T;
        let ms = |t: T, v: &str| proto::MatchString {
            r#type: t as i32,
            value: Some(v.into()),
            value_type: 0,
        };
        let routes: Vec<proto::Route> = (0..n)
            .map(|r| proto::Route {
                sources: vec![proto::Source {
                    service: Some("*".into()),
                    namespace: Some("*".into()),
                    metadata: if r == n - 1 {
                        // The last rule catches everything: never filed.
                        HashMap::new()
                    } else {
                        [(
                            "$header.x-env".to_string(),
                            ms(T::Exact, &format!("env-{}", r % 3)),
                        )]
                        .into()
                    },
                }],
                destinations: vec![proto::Destination {
                    service: Some("echo".into()),
                    namespace: Some("default".into()),
                    metadata: [("zone".to_string(), ms(T::Exact, "*"))].into(),
                    weight: Some(100),
                    name: Some(format!("rule{r}.s0.g0")),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let (compiled, errors) =
            crate::routing::rule::compile_routes(&routes, &crate::routing::Caller::default());
        assert!(errors.is_empty());
        compiled
    }

    #[test]
    fn the_rule_index_picks_the_same_rule_as_a_full_scan() {
        let s = snapshot(vec![instance(1, "z1", true)], false);
        let rules = gray_rules(10);
        let plan = Plan::build(
            &s,
            &rules,
            &[],
            Policy::WeightedRandom,
            Failover::All,
            None,
            None,
        );
        assert!(
            plan.index
                .candidates(&mut StaticFacts::default(), 10)
                .count()
                < 10
        );
        for (env, expected) in [
            ("env-0", "rule0"),
            ("env-1", "rule1"),
            ("env-2", "rule2"),
            ("nope", "rule9"),
        ] {
            let mut facts = StaticFacts {
                headers: vec![("x-env".into(), env.into())],
                ..StaticFacts::default()
            };
            let routed = plan.route(&mut facts, &mut Rng::new(1)).unwrap();
            assert_eq!(routed.rule, Some(expected), "{env}");
        }
        let mut none = StaticFacts::default();
        let routed = plan.route(&mut none, &mut Rng::new(1)).unwrap();
        assert_eq!(routed.rule, Some("rule9"));
    }

    fn labeled(port: u32, version: Option<&str>, healthy: bool) -> Instance {
        let mut i = instance(port, "z1", healthy);
        if let Some(v) = version {
            i.metadata.insert("version".into(), v.into());
        }
        i
    }

    fn meta_ports(
        failover: MetaFailover,
        instances: Vec<Instance>,
        wanted: &str,
    ) -> Option<Vec<u32>> {
        let s = snapshot(instances, false);
        let config = MetadataRouting {
            labels: vec![("x-version".into(), "version".into())],
            failover,
        };
        let plan = Plan::build(
            &s,
            &[],
            &[],
            Policy::WeightedRandom,
            Failover::All,
            None,
            Some(&config),
        );
        let routed = routed_pool(&plan);
        let key = tuple_key(1, &[wanted]);
        let (pool, _) = plan.by_metadata(routed.pool, Some((1, &key)))?;
        let mut ports: Vec<u32> = pool
            .members
            .iter()
            .filter_map(|n| s.instance(*n).map(|i| i.port))
            .collect();
        ports.sort_unstable();
        Some(ports)
    }

    fn versions() -> Vec<Instance> {
        vec![
            labeled(1, Some("v1"), true),
            labeled(2, Some("v2"), true),
            labeled(3, None, true),
        ]
    }

    /// One rule whose only group selects `version` by `label`, routing every request.
    fn version_rule(label: proto::MatchString) -> Vec<Route> {
        let route = proto::Route {
            destinations: vec![proto::Destination {
                service: Some("echo".into()),
                namespace: Some("default".into()),
                metadata: [("version".to_string(), label)].into(),
                weight: Some(100),
                name: Some("by-version.s0.g0".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (routes, errors) =
            crate::routing::rule::compile_routes(&[route], &crate::routing::Caller::default());
        assert!(errors.is_empty(), "{errors:?}");
        routes
    }

    fn parameter(kind: proto::match_string::MatchStringType, key: &str) -> proto::MatchString {
        proto::MatchString {
            r#type: kind as i32,
            value: Some(key.into()),
            value_type: proto::match_string::ValueType::Parameter as i32,
        }
    }

    /// The ports the rule sends a request with these headers to, and its rule (None: failover).
    fn rule_ports(rules: &[Route], headers: &[(&str, &str)]) -> (Option<String>, Vec<u32>) {
        rule_ports_over(versions(), rules, headers)
    }

    /// [`rule_ports`] over these instances.
    fn rule_ports_over(
        instances: Vec<Instance>,
        rules: &[Route],
        headers: &[(&str, &str)],
    ) -> (Option<String>, Vec<u32>) {
        let s = snapshot(instances, false);
        let plan = Plan::build(
            &s,
            rules,
            &[],
            Policy::WeightedRandom,
            Failover::All,
            None,
            None,
        );
        let mut facts = StaticFacts {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..StaticFacts::default()
        };
        let routed = plan.route(&mut facts, &mut Rng::new(1)).unwrap();
        let mut ports: Vec<u32> = routed
            .pool
            .members
            .iter()
            .filter_map(|n| s.instance(*n).map(|i| i.port))
            .collect();
        ports.sort_unstable();
        (routed.rule.map(str::to_string), ports)
    }

    #[test]
    fn parameter_label_sends_a_request_to_instances_carrying_its_header_value() {
        use proto::match_string::MatchStringType as T;
        let rules = version_rule(parameter(T::Exact, "$header.x-version"));
        let rule = Some("by-version".to_string());
        assert_eq!(
            rule_ports(&rules, &[("x-version", "v2")]),
            (rule.clone(), vec![2])
        );
        assert_eq!(rule_ports(&rules, &[("x-version", "v1")]), (rule, vec![1]));
        // No instance carries v9, or the request has no value: the rule has no group, failover.
        assert_eq!(
            rule_ports(&rules, &[("x-version", "v9")]),
            (None, vec![1, 2, 3])
        );
        assert_eq!(rule_ports(&rules, &[]), (None, vec![1, 2, 3]));
    }

    #[test]
    fn not_equals_parameter_keeps_carriers_of_other_values() {
        use proto::match_string::MatchStringType as T;
        let rules = version_rule(parameter(T::NotEquals, "$header.x-version"));
        let rule = Some("by-version".to_string());
        assert_eq!(
            rule_ports(&rules, &[("x-version", "v1")]),
            (rule.clone(), vec![2])
        );
        assert_eq!(
            rule_ports(&rules, &[("x-version", "v9")]),
            (rule, vec![1, 2])
        );
    }

    fn text(t: proto::match_string::MatchStringType, v: &str) -> proto::MatchString {
        proto::MatchString {
            r#type: t as i32,
            value: Some(v.into()),
            value_type: 0,
        }
    }

    /// One rule: a group per (name, priority, version label), each of weight 100.
    fn grouped_rule(groups: &[(&str, u32, proto::MatchString)]) -> Vec<Route> {
        let route = proto::Route {
            destinations: groups
                .iter()
                .map(|(name, priority, label)| proto::Destination {
                    service: Some("echo".into()),
                    namespace: Some("default".into()),
                    metadata: [("version".to_string(), label.clone())].into(),
                    priority: Some(*priority),
                    weight: Some(100),
                    name: Some(format!("grouped.s0.{name}")),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let (routes, errors) =
            crate::routing::rule::compile_routes(&[route], &crate::routing::Caller::default());
        assert!(errors.is_empty(), "{errors:?}");
        routes
    }

    /// The group a plain request is routed to, and its pool's ports.
    fn group_ports(instances: Vec<Instance>, rules: &[Route]) -> (Option<String>, Vec<u32>) {
        let s = snapshot(instances, false);
        let plan = Plan::build(
            &s,
            rules,
            &[],
            Policy::WeightedRandom,
            Failover::All,
            None,
            None,
        );
        let routed = routed_pool(&plan);
        let mut ports: Vec<u32> = routed
            .pool
            .members
            .iter()
            .filter_map(|n| s.instance(*n).map(|i| i.port))
            .collect();
        ports.sort_unstable();
        (routed.group.map(str::to_string), ports)
    }

    #[test]
    fn not_equals_leaves_out_unhealthy_instances_and_falls_to_the_next_group() {
        use proto::match_string::MatchStringType as T;
        let rules = grouped_rule(&[
            ("others", 0, text(T::NotEquals, "v1")),
            ("v1", 1, text(T::Exact, "v1")),
        ]);
        // Only an unhealthy instance differs from v1: polaris-go skips the NOT_EQUALS group
        // rather than recovering all inside it.
        let instances = vec![labeled(1, Some("v1"), true), labeled(2, Some("v2"), false)];
        assert_eq!(
            group_ports(instances, &rules),
            (Some("grouped.s0.v1".to_string()), vec![1])
        );
        // A healthy v2 brings the group back, with every v2 carrier in it.
        let instances = vec![
            labeled(1, Some("v1"), true),
            labeled(2, Some("v2"), false),
            labeled(3, Some("v2"), true),
            labeled(4, Some("v3"), false),
        ];
        assert_eq!(
            group_ports(instances, &rules),
            (Some("grouped.s0.others".to_string()), vec![2, 3])
        );
    }

    #[test]
    fn not_equals_parameter_leaves_out_values_only_unhealthy_instances_carry() {
        use proto::match_string::MatchStringType as T;
        let rules = version_rule(parameter(T::NotEquals, "$header.x-version"));
        let instances = || {
            vec![
                labeled(1, Some("v1"), true),
                labeled(2, Some("v2"), false),
                labeled(3, None, true),
            ]
        };
        // Only the unhealthy v2 differs from v1: the group is empty, so the failover decides.
        assert_eq!(
            rule_ports_over(instances(), &rules, &[("x-version", "v1")]),
            (None, vec![1, 2, 3])
        );
        assert_eq!(
            rule_ports_over(instances(), &rules, &[("x-version", "v9")]),
            (Some("by-version".to_string()), vec![1])
        );
    }

    #[test]
    fn a_look_ahead_destination_label_selects_its_instances() {
        use proto::match_string::MatchStringType as T;
        let rules = version_rule(text(T::Regex, "^(?!v1$)v"));
        assert_eq!(
            rule_ports(&rules, &[]),
            (Some("by-version".to_string()), vec![2])
        );
    }

    #[test]
    fn an_absent_argument_fails_negative_sources_through_the_index_and_regex_sets() {
        use proto::match_string::MatchStringType as T;
        let source = |name: &str, kind: T, value: &str| {
            let mut r = proto::Route {
                sources: vec![proto::Source {
                    service: Some("*".into()),
                    namespace: Some("*".into()),
                    metadata: [("$header.x-env".to_string(), text(kind, value))].into(),
                }],
                ..Default::default()
            };
            r.destinations = vec![proto::Destination {
                service: Some("echo".into()),
                namespace: Some("default".into()),
                weight: Some(100),
                name: Some(format!("{name}.s0.g0")),
                ..Default::default()
            }];
            r
        };
        let routes = [
            source("exact-a", T::Exact, "a"),
            source("exact-b", T::Exact, "b"),
            source("regex-any", T::Regex, ".*"),
            source("not-prod", T::NotEquals, "prod"),
            source("not-in", T::NotIn, "prod,stage"),
            proto::Route {
                destinations: vec![proto::Destination {
                    service: Some("echo".into()),
                    namespace: Some("default".into()),
                    weight: Some(100),
                    name: Some("catch-all.s0.g0".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ];
        let (rules, errors) =
            crate::routing::rule::compile_routes(&routes, &crate::routing::Caller::default());
        assert!(errors.is_empty(), "{errors:?}");
        let s = snapshot(vec![instance(1, "z1", true)], false);
        let plan = Plan::build(
            &s,
            &rules,
            &[],
            Policy::WeightedRandom,
            Failover::All,
            None,
            None,
        );
        assert!(!plan.regexes.is_empty());
        let rule = |headers: &[(&str, &str)]| {
            let mut facts = StaticFacts {
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..StaticFacts::default()
            };
            plan.route(&mut facts, &mut Rng::new(1))
                .and_then(|r| r.rule)
                .map(str::to_string)
        };
        assert_eq!(rule(&[]), Some("catch-all".to_string()));
        assert_eq!(rule(&[("x-env", "a")]), Some("exact-a".to_string()));
        assert_eq!(rule(&[("x-env", "gray")]), Some("regex-any".to_string()));
    }

    #[test]
    fn fixed_labels_other_than_star_exclude_instances_without_the_key() {
        use proto::match_string::MatchStringType as T;
        let text = |t: T, v: &str| proto::MatchString {
            r#type: t as i32,
            value: Some(v.into()),
            value_type: 0,
        };
        let rule = Some("by-version".to_string());
        assert_eq!(
            rule_ports(&version_rule(text(T::NotEquals, "v1")), &[]),
            (rule.clone(), vec![2])
        );
        assert_eq!(
            rule_ports(&version_rule(text(T::Exact, "*")), &[]),
            (rule, vec![1, 2, 3])
        );
    }

    #[test]
    fn several_parameter_labels_must_all_match() {
        use proto::match_string::MatchStringType as T;
        let mut instances = versions();
        for (i, zone) in instances.iter_mut().zip(["blue", "green", "blue"]) {
            i.metadata.insert("lane".into(), zone.into());
        }
        let s = snapshot(instances, false);
        let mut route = version_rule(parameter(T::Exact, "$header.x-version"));
        let lane = Parameter {
            key: "lane".into(),
            arg: crate::routing::Arg::Header("x-lane".into()),
            negate: false,
        };
        for r in &mut route {
            for d in &mut r.destinations {
                d.parameters.insert(0, lane.clone());
            }
        }
        let plan = Plan::build(
            &s,
            &route,
            &[],
            Policy::WeightedRandom,
            Failover::None,
            None,
            None,
        );
        let facts = |v: &str, l: &str| StaticFacts {
            headers: vec![("x-version".into(), v.into()), ("x-lane".into(), l.into())],
            ..StaticFacts::default()
        };
        let routed = plan
            .route(&mut facts("v2", "green"), &mut Rng::new(1))
            .unwrap();
        assert_eq!(routed.pool.members.len(), 1);
        assert!(plan
            .route(&mut facts("v2", "blue"), &mut Rng::new(1))
            .is_none());
    }

    #[test]
    fn metadata_routing_keeps_instances_carrying_the_wanted_label() {
        assert_eq!(
            meta_ports(MetaFailover::None, versions(), "v2"),
            Some(vec![2])
        );
    }

    #[test]
    fn metadata_routing_without_failover_refuses_an_unknown_label() {
        assert_eq!(meta_ports(MetaFailover::None, versions(), "v9"), None);
    }

    #[test]
    fn metadata_failovers_choose_all_others_or_keyless() {
        assert_eq!(
            meta_ports(MetaFailover::All, versions(), "v9"),
            Some(vec![1, 2, 3])
        );
        let mut unhealthy_v2 = versions();
        unhealthy_v2[1].healthy = false;
        assert_eq!(
            meta_ports(MetaFailover::Others, unhealthy_v2.clone(), "v2"),
            Some(vec![1, 3])
        );
        assert_eq!(
            meta_ports(MetaFailover::NotContainKey, unhealthy_v2, "v2"),
            Some(vec![3])
        );
    }

    #[test]
    fn the_metadata_outcome_names_the_failover_taken() {
        let s = snapshot(
            vec![labeled(1, Some("v1"), true), labeled(2, Some("v2"), false)],
            false,
        );
        let config = |failover| MetadataRouting {
            labels: vec![("x-version".into(), "version".into())],
            failover,
        };
        let outcome = |failover, wanted: Option<&str>| {
            let config = config(failover);
            let plan = Plan::build(
                &s,
                &[],
                &[],
                Policy::WeightedRandom,
                Failover::All,
                None,
                Some(&config),
            );
            let key = wanted.map(|w| tuple_key(1, &[w]));
            let routed = routed_pool(&plan);
            plan.by_metadata(routed.pool, key.as_deref().map(|k| (1, k)))
                .map(|(_, outcome)| outcome)
        };
        assert_eq!(outcome(MetaFailover::None, None), Some(None));
        assert_eq!(
            outcome(MetaFailover::None, Some("v1")),
            Some(Some(MetaOutcome::Matched))
        );
        assert_eq!(
            outcome(MetaFailover::Others, Some("v2")),
            Some(Some(MetaOutcome::Failover(MetaFailover::Others)))
        );
        assert_eq!(
            outcome(MetaFailover::NotContainKey, Some("v2")),
            Some(Some(MetaOutcome::UnhealthyCarriers))
        );
        assert_eq!(outcome(MetaFailover::None, Some("v9")), None);
    }

    #[test]
    fn unhealthy_carriers_are_used_when_the_failover_has_nothing() {
        let only_v2 = vec![labeled(2, Some("v2"), false)];
        assert_eq!(
            meta_ports(MetaFailover::NotContainKey, only_v2, "v2"),
            Some(vec![2])
        );
    }

    /// A rule-less plan with these nearby settings.
    fn near_plan(s: &ServiceSnapshot, nearby: &Nearby) -> Plan {
        Plan::build(
            s,
            &[],
            &[],
            Policy::WeightedRandom,
            Failover::All,
            Some(nearby),
            None,
        )
    }

    /// What rule routing gives a plain request.
    fn routed_pool(plan: &Plan) -> Routed<'_> {
        plan.route(&mut StaticFacts::default(), &mut Rng::new(1))
            .unwrap()
    }

    #[test]
    fn nearby_keeps_traffic_in_this_zone() {
        let s = snapshot(vec![instance(1, "z1", true), instance(2, "z2", true)], true);
        let plan = near_plan(&s, &here("z1"));
        assert_eq!(ports(&plan, &s, 100), [1]);
    }

    #[test]
    fn an_unhealthy_zone_degrades_to_the_region() {
        let s = snapshot(
            vec![instance(1, "z1", false), instance(2, "z2", true)],
            true,
        );
        let plan = near_plan(&s, &here("z1"));
        let routed = routed_pool(&plan);
        assert_eq!(plan.narrow(routed.pool).unwrap().1, Some(Level::Region));
        assert_eq!(ports(&plan, &s, 100), [2]);
    }

    #[test]
    fn an_instance_without_a_location_counts_at_the_zone_level() {
        let mut unlocated = instance(2, "", true);
        unlocated.location = Location::default();
        let s = snapshot(vec![instance(1, "z2", true), unlocated], true);
        let plan = near_plan(&s, &here("z1"));
        let routed = routed_pool(&plan);
        assert_eq!(plan.narrow(routed.pool).unwrap().1, Some(Level::Zone));
        assert_eq!(ports(&plan, &s, 100), [2]);
    }

    #[test]
    fn an_envoy_without_a_region_still_routes_by_zone() {
        let mut elsewhere = instance(2, "z1", true);
        elsewhere.location.region = "r2".into();
        let s = snapshot(vec![instance(1, "z2", true), elsewhere], true);
        let mut nearby = here("z1");
        nearby.location.region.clear();
        let plan = near_plan(&s, &nearby);
        assert_eq!(ports(&plan, &s, 100), [2]);
    }

    #[test]
    fn nearby_is_off_unless_the_service_enables_it() {
        let s = snapshot(
            vec![instance(1, "z1", true), instance(2, "z2", true)],
            false,
        );
        let plan = near_plan(&s, &here("z1"));
        assert_eq!(ports(&plan, &s, 100), [1, 2]);
    }

    #[test]
    fn nothing_within_the_widest_level_is_none() {
        let s = snapshot(vec![instance(2, "z2", true)], true);
        let strict = Nearby {
            max_match_level: Level::Zone,
            ..here("z1")
        };
        let plan = near_plan(&s, &strict);
        let routed = routed_pool(&plan);
        assert!(plan.narrow(routed.pool).is_none());
    }

    #[test]
    fn all_unhealthy_everywhere_uses_the_nearest_non_empty_level() {
        let s = snapshot(
            vec![instance(1, "z1", false), instance(2, "z2", false)],
            true,
        );
        let plan = near_plan(&s, &here("z1"));
        assert_eq!(ports(&plan, &s, 100), [1]);
    }
}
