//! The routing plan of one destination service: its rules with each destination group's instance
//! pool precomputed, built once per change of instances or rules. A request walks the rules,
//! picks a group and then an instance from the group's pool, allocating nothing.

use super::group::Group;
use super::index::RuleIndex;
use super::metadata::{MetaOutcome, MetadataRouting};
use super::nearby::{Level, Nearby};
use super::pool::Pool;
use super::rule::{Direction, Route};
use crate::lb::{Rng, Spec};
use crate::matching::{Arg, RegexEval, RegexSets, RequestFacts};
use crate::model::ServiceSnapshot;

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
    /// Where a hash balancer's key comes from (set by the builder's caller from configuration).
    pub hash_key: Option<Arg>,
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
                    .map(|d| Group::build(d, snapshot, nearby, metadata))
                    .collect();
                let best = groups
                    .iter()
                    .filter(|g| g.fixed_pool().is_some_and(|p| !p.is_empty()))
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
            hash_key: None,
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
        match (&self.metadata, wanted) {
            (Some(config), Some(wanted)) => pool.by_metadata(config, wanted),
            _ => Some((pool, None)),
        }
    }

    /// Nearby routing over a routed pool: the nearest level whose unhealthy share is under the
    /// threshold, else the nearest non-empty level in range. `None` when nothing is in range.
    pub fn narrow<'p>(&self, pool: &'p Pool) -> Option<(&'p Pool, Option<Level>)> {
        match &self.nearby {
            Some(nearby) => pool.narrow(nearby),
            None => Some((pool, None)),
        }
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
    use crate::matching::StaticFacts;
    use crate::model::upstream_address;
    use crate::model::{Instance, Location, ServiceKey};
    use crate::polaris::proto;
    use crate::routing::metadata::{tuple_key, MetaFailover};
    use crate::routing::rule::Parameter;
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
            .members()
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
        let plan = plain_plan(&s, rules);
        let mut facts = StaticFacts {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..StaticFacts::default()
        };
        let routed = plan.route(&mut facts, &mut Rng::new(1)).unwrap();
        let ports = sorted_ports(routed.pool, &s);
        (routed.rule.map(str::to_string), ports)
    }

    /// A weighted-random plan of `rules` without nearby or metadata routing.
    fn plain_plan(s: &ServiceSnapshot, rules: &[Route]) -> Plan {
        Plan::build(
            s,
            rules,
            &[],
            Policy::WeightedRandom,
            Failover::All,
            None,
            None,
        )
    }

    /// The ports of a pool's members, sorted.
    fn sorted_ports(pool: &Pool, s: &ServiceSnapshot) -> Vec<u32> {
        let mut ports: Vec<u32> = pool
            .members()
            .iter()
            .filter_map(|n| s.instance(*n).map(|i| i.port))
            .collect();
        ports.sort_unstable();
        ports
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
        let plan = plain_plan(&s, rules);
        let routed = routed_pool(&plan);
        let ports = sorted_ports(routed.pool, &s);
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
            arg: crate::matching::Arg::Header("x-lane".into()),
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
        assert_eq!(routed.pool.members().len(), 1);
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
