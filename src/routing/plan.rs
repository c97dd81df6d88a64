//! The routing plan of one destination service: its rules with each destination group's instance
//! pool precomputed, built once per change of instances or rules. A request walks the rules,
//! picks a group and then an instance from the group's pool, allocating nothing.

use std::cell::OnceCell;
use std::collections::HashMap;

use super::args::RequestFacts;
use super::index::RuleIndex;
use super::metadata::{tuple_key, MetaFailover, MetadataRouting};
use super::nearby::{Level, Nearby};
use super::rule::{Caller, Direction, Route};
use crate::lb::{Balancer, Member, Policy, Rng};
use crate::snapshot::{Instance, ServiceSnapshot};

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
        let pass = |n: &usize| snapshot.instances.get(*n).is_some_and(&keep);
        Pool {
            members: self.members.iter().copied().filter(pass).collect(),
            healthy: self.healthy.iter().copied().filter(pass).collect(),
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
        policy: Policy,
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
            Balancer::build(policy, &members)
        });
        balancer.pick(key, rng).map(|index| Picked {
            index,
            recovered_all,
        })
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
    pub pool: Pool,
}

#[derive(Debug)]
struct PlannedRoute {
    route: Route,
    groups: Vec<Group>,
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
    all: Pool,
    pub policy: Policy,
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
        policy: Policy,
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
                    .map(|d| Group {
                        name: d.name.clone(),
                        priority: d.priority,
                        weight: d.weight,
                        pool: Pool::new(snapshot, |i| {
                            d.labels
                                .iter()
                                .all(|(k, m)| m.matches(i.metadata.get(k).map(String::as_str)))
                        })
                        .with_levels(snapshot, nearby)
                        .with_metadata(snapshot, metadata, nearby),
                    })
                    .collect();
                // An outbound rule that never names this service is not about it.
                (direction == Direction::Inbound || !groups.is_empty()).then(|| PlannedRoute {
                    route: route.clone(),
                    groups,
                })
            })
            .collect::<Vec<PlannedRoute>>();
        let index = RuleIndex::build(routes.iter().map(|p| &p.route));
        Plan {
            direction,
            routes,
            index,
            all: Pool::new(snapshot, |_| true)
                .with_levels(snapshot, nearby)
                .with_metadata(snapshot, metadata, nearby),
            policy,
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
    pub fn by_metadata<'p>(&self, pool: &'p Pool, wanted: Option<(u8, &str)>) -> Option<&'p Pool> {
        let (Some(config), Some((mask, key)), Some(index)) = (&self.metadata, wanted, &pool.meta)
        else {
            return Some(pool);
        };
        let entry = index.by_tuple.get(key);
        let matched = entry.map(|(m, _)| m).filter(|m| !m.is_empty());
        if let Some(m) = matched.filter(|m| !m.healthy.is_empty()) {
            return Some(m);
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
        failover.filter(|p| !p.is_empty()).or(matched)
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
    pub fn route(
        &self,
        caller: &Caller,
        facts: &mut dyn RequestFacts,
        rng: &mut Rng,
    ) -> Option<Routed<'_>> {
        for position in self.index.candidates(facts, self.routes.len()) {
            let Some(planned) = self.routes.get(position) else {
                continue;
            };
            let Some(best) = planned
                .groups
                .iter()
                .filter(|g| !g.pool.is_empty())
                .map(|g| g.priority)
                .min()
            else {
                continue;
            };
            if !planned.route.matches(self.direction, caller, facts) {
                continue;
            }
            let candidates = || {
                planned
                    .groups
                    .iter()
                    .filter(move |g| g.priority == best && !g.pool.is_empty())
            };
            let total: u64 = candidates().map(|g| u64::from(g.weight)).sum();
            let mut point = rng.below(total.max(1));
            let group = candidates().find(|g| {
                let w = u64::from(g.weight);
                if point < w {
                    true
                } else {
                    point -= w;
                    false
                }
            })?;
            return Some(Routed {
                pool: &group.pool,
                rule: Some(planned.route.rule.as_str()),
                group: Some(group.name.as_str()),
            });
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
    use crate::routing::metadata::tuple_key;
    use crate::routing::StaticFacts;
    use crate::snapshot::model::upstream_address;
    use crate::snapshot::{Location, ServiceKey};
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
                let routed =
                    plan.route(&Caller::default(), &mut StaticFacts::default(), &mut rng)?;
                let (pool, _) = plan.narrow(routed.pool)?;
                let p = pool.pick(s, plan.policy, None, &mut rng)?;
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
        let (compiled, errors) = crate::routing::rule::compile_routes(&routes, &Caller::default());
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
            let routed = plan
                .route(&Caller::default(), &mut facts, &mut Rng::new(1))
                .unwrap();
            assert_eq!(routed.rule, Some(expected), "{env}");
        }
        let mut none = StaticFacts::default();
        let routed = plan
            .route(&Caller::default(), &mut none, &mut Rng::new(1))
            .unwrap();
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
        let pool = plan.by_metadata(routed.pool, Some((1, &key)))?;
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
        plan.route(
            &Caller::default(),
            &mut StaticFacts::default(),
            &mut Rng::new(1),
        )
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
