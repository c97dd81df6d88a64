//! The request path, top to bottom, as a pure function: a service snapshot in, a decision out.

use std::fmt;

use crate::lb::{self, Rng};
use crate::matching::{Arg, RequestFacts};
use crate::model::{Instance, ServiceKey, ServiceSnapshot};
use crate::routing::metadata::MetaOutcome;
use crate::routing::{Level, MetadataRouting, Plan};
use crate::snapshot::DiscoveryError;

/// Where the request goes, and why: what the debug trace reports.
#[derive(Debug, PartialEq)]
pub struct Decision<'a> {
    pub instance: &'a Instance,
    /// No healthy instance was left, so all selectable ones were used (polaris-go recover-all).
    pub recovered_all: bool,
    /// The rule and destination group (`rule.subrule.group`) that matched, if any.
    pub rule: Option<&'a str>,
    pub group: Option<&'a str>,
    /// The level nearby routing chose, when it applies to the service.
    pub nearby: Option<Level>,
    /// How metadata routing settled, when the request wanted labels.
    pub metadata: Option<MetaOutcome>,
}

/// Why the filter answers the request itself instead of routing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The request does not name a service we can look up.
    NoDestination { source: String },
    /// Polaris does not know the service.
    ServiceNotFound(ServiceKey),
    /// The service exists but no instance may take traffic.
    NoInstance { service: ServiceKey, total: usize },
    /// Rules exist, none matched, and `routing.failover` is `none`.
    NoRuleMatched { service: ServiceKey },
    /// No instance carries the labels the request asked for, and the failover found none either.
    NoMetadataMatch { service: ServiceKey, wanted: String },
    /// Nearby routing found no instance within `nearby.max_match_level`.
    NoNearbyInstance { service: ServiceKey, widest: Level },
    /// The first discovery of the service failed.
    DiscoveryFailed {
        service: ServiceKey,
        cause: DiscoveryError,
    },
    /// The watch list is full.
    TooManyServices { service: ServiceKey, limit: usize },
    /// The service is not in `admission.allowed_services`.
    NotAllowed(ServiceKey),
    /// This Envoy started its `admission.new_services_per_second` first discoveries this second.
    DiscoveryThrottled {
        service: ServiceKey,
        per_second: u32,
    },
    /// A rate-limit rule's window is used up.
    RateLimited {
        service: ServiceKey,
        rule: String,
        retry_after_s: u64,
    },
    /// Envoy refused a host call the request needs (e.g. writing the upstream header).
    HostRefused { what: String },
    /// A SERVICE or METHOD circuit breaker is open (or half-open with its probes taken) and its
    /// rule has no fallback response.
    CircuitOpen {
        service: ServiceKey,
        method: Option<String>,
        rule: String,
        state: &'static str,
    },
}

impl Rejection {
    pub fn status(&self) -> u32 {
        match self {
            Rejection::NoDestination { .. } => 400,
            Rejection::RateLimited { .. } => 429,
            Rejection::NotAllowed(_) => 403,
            _ => 503,
        }
    }

    /// Short machine-readable reason, sent as the `x-polaris-reason` header.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::NoDestination { .. } => "no-destination",
            Rejection::ServiceNotFound(_) => "service-not-found",
            Rejection::NoInstance { .. } => "no-instance",
            Rejection::NoRuleMatched { .. } => "rule-routing",
            Rejection::NoNearbyInstance { .. } => "nearby-routing",
            Rejection::NoMetadataMatch { .. } => "metadata-routing",
            Rejection::DiscoveryFailed { .. } => "discovery-failed",
            Rejection::TooManyServices { .. } => "too-many-services",
            Rejection::NotAllowed(_) => "service-not-allowed",
            Rejection::DiscoveryThrottled { .. } => "discovery-throttled",
            Rejection::HostRefused { .. } => "host-refused",
            Rejection::RateLimited { .. } => "rate-limited",
            Rejection::CircuitOpen { .. } => "circuit-open",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NoDestination { source } => {
                write!(f, "request names no Polaris service in {source}")
            }
            Rejection::ServiceNotFound(s) => write!(
                f,
                "service {} not found in Polaris namespace {}",
                s.name, s.namespace
            ),
            Rejection::NoInstance { service, total } => write!(
                f,
                "no available instance of service {} in namespace {} ({total} instances, none \
                 selectable: isolated or weight 0)",
                service.name, service.namespace
            ),
            Rejection::NoRuleMatched { service } => write!(
                f,
                "rule routing left no instance of service {} in namespace {}: no rule matched and \
                 routing.failover is none",
                service.name, service.namespace
            ),
            Rejection::NoMetadataMatch { service, wanted } => write!(
                f,
                "metadata routing left no instance of service {} in namespace {}: none carries \
                 {wanted}",
                service.name, service.namespace
            ),
            Rejection::NoNearbyInstance { service, widest } => write!(
                f,
                "nearby routing left no instance of service {} in namespace {}: none within \
                 level {widest} of this Envoy",
                service.name, service.namespace
            ),
            Rejection::DiscoveryFailed { service, cause } => write!(
                f,
                "cannot discover service {} in namespace {}: {cause}",
                service.name, service.namespace
            ),
            Rejection::TooManyServices { service, limit } => write!(
                f,
                "cannot watch service {} in namespace {}: already watching {limit} services \
                 (max_services)",
                service.name, service.namespace
            ),
            Rejection::NotAllowed(s) => write!(
                f,
                "service {} in namespace {} is not in admission.allowed_services",
                s.name, s.namespace
            ),
            Rejection::DiscoveryThrottled {
                service,
                per_second,
            } => write!(
                f,
                "service {} in namespace {} is not known yet and this Envoy already started \
                 {per_second} first discoveries this second (admission.new_services_per_second); \
                 retry later",
                service.name, service.namespace
            ),
            Rejection::HostRefused { what } => write!(f, "Envoy refused a host call: {what}"),
            Rejection::RateLimited { service, rule, .. } => write!(
                f,
                "rate limited by rule `{rule}` of service {} in namespace {}",
                service.name, service.namespace
            ),
            Rejection::CircuitOpen {
                service,
                method,
                rule,
                state,
            } => {
                write!(
                    f,
                    "circuit breaker rule {rule} is {state} for service {} in namespace {}",
                    service.name, service.namespace
                )?;
                match method {
                    Some(m) => write!(f, ", method {m}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The hash balancers' key, from where the configuration says.
pub fn hash_key(source: Option<&Arg>, facts: &mut dyn RequestFacts) -> Option<u64> {
    let value = facts.arg(source?)?;
    Some(lb::hash_key(value.as_bytes()))
}

/// The labels a request wants (metadata routing): the bit mask of configured keys present and
/// the lookup key of their values (`metadata::tuple_key`, built in place: one allocation);
/// `None` when it carries none of the configured headers.
fn wanted_labels(metadata: &MetadataRouting, facts: &mut dyn RequestFacts) -> Option<(u8, String)> {
    let mut mask = 0u8;
    let mut key = String::from("0");
    for (i, (header, _)) in metadata.labels.iter().enumerate() {
        if let Some(v) = facts.header(header) {
            mask |= 1 << i;
            key.push('\0');
            key.push_str(v);
        }
    }
    if mask == 0 {
        return None;
    }
    key.replace_range(..1, char::from(b'0' + mask).encode_utf8(&mut [0; 4]));
    Some((mask, key))
}

/// `key=value,…` of the labels a request wants, for the 503 body.
fn shown_labels(metadata: &MetadataRouting, facts: &mut dyn RequestFacts) -> String {
    let mut shown = Vec::new();
    for (header, key) in &metadata.labels {
        if let Some(v) = facts.header(header) {
            shown.push(format!("{key}={v}"));
        }
    }
    shown.join(",")
}

/// The chain, in polaris-go's order: rule routing, metadata routing, nearby routing, then the
/// health/isolate filter with recover-all, then the load balancer.
pub fn decide<'a>(
    plan: &'a Plan,
    snapshot: &'a ServiceSnapshot,
    facts: &mut dyn RequestFacts,
    rng: &mut Rng,
) -> Result<Decision<'a>, Rejection> {
    decide_avoiding(plan, snapshot, facts, rng, None)
}

/// [`decide`], with the last step avoiding the instances `avoid` rejects (by snapshot index: open
/// instance circuit breakers), as [`crate::routing::Pool::pick_avoiding`] does.
pub fn decide_avoiding<'a>(
    plan: &'a Plan,
    snapshot: &'a ServiceSnapshot,
    facts: &mut dyn RequestFacts,
    rng: &mut Rng,
    avoid: Option<&mut dyn FnMut(usize) -> bool>,
) -> Result<Decision<'a>, Rejection> {
    let routed = plan
        .route(facts, rng)
        .ok_or_else(|| Rejection::NoRuleMatched {
            service: snapshot.key.clone(),
        })?;
    let wanted = plan.metadata().and_then(|m| wanted_labels(m, facts));
    let Some((pool, metadata)) = plan.by_metadata(
        routed.pool,
        wanted.as_ref().map(|(mask, key)| (*mask, key.as_str())),
    ) else {
        return Err(Rejection::NoMetadataMatch {
            service: snapshot.key.clone(),
            wanted: plan
                .metadata()
                .map(|m| shown_labels(m, facts))
                .unwrap_or_default(),
        });
    };
    let (pool, nearby) = plan
        .narrow(pool)
        .ok_or_else(|| Rejection::NoNearbyInstance {
            service: snapshot.key.clone(),
            widest: plan.nearby_limit().unwrap_or(Level::All),
        })?;
    let key = if plan.balancer.policy.uses_key() {
        hash_key(plan.hash_key.as_ref(), facts)
    } else {
        None
    };
    let picked = match avoid {
        Some(avoid) => pool.pick_avoiding(snapshot, plan.balancer, key, rng, avoid),
        None => pool.pick(snapshot, plan.balancer, key, rng),
    }
    .ok_or_else(|| Rejection::NoInstance {
        service: snapshot.key.clone(),
        total: snapshot.instances.len(),
    })?;
    let instance = snapshot
        .instance(picked.index)
        .ok_or_else(|| Rejection::NoInstance {
            service: snapshot.key.clone(),
            total: snapshot.instances.len(),
        })?;
    Ok(Decision {
        instance,
        recovered_all: picked.recovered_all,
        rule: routed.rule,
        group: routed.group,
        nearby,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::Policy;
    use crate::matching::StaticFacts;
    use crate::model::upstream_address;
    use crate::routing::Failover;
    use std::collections::HashMap;

    fn pick<'a>(
        plan: &'a Plan,
        s: &'a ServiceSnapshot,
        rng: &mut Rng,
    ) -> Result<Decision<'a>, Rejection> {
        decide(plan, s, &mut StaticFacts::default(), rng)
    }

    fn plan(s: &ServiceSnapshot) -> Plan {
        Plan::build(
            s,
            &[],
            &[],
            Policy::WeightedRandom,
            Failover::All,
            None,
            None,
        )
    }
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn instance(port: u32, weight: u32, healthy: bool, isolated: bool) -> Instance {
        Instance {
            id: port.to_string(),
            host: "127.0.0.1".into(),
            port,
            weight,
            healthy,
            isolated,
            metadata: HashMap::new(),
            location: Default::default(),
            upstream: upstream_address("127.0.0.1", port),
        }
    }

    fn snapshot(instances: Vec<Instance>) -> ServiceSnapshot {
        ServiceSnapshot::new(
            ServiceKey::new("default", "echo"),
            "r".into(),
            HashMap::new(),
            instances,
        )
    }

    /// Rule content comes from the network: any mix of match types (valid or not), value types,
    /// keys and values must give a decision or a rejection, never a panic.
    #[test]
    fn arbitrary_rule_content_never_panics() {
        use crate::model::Location;
        use crate::polaris::proto;
        use crate::routing::rule::compile_routes;
        use crate::routing::{Caller, MetaFailover, Nearby};

        const WORDS: [&str; 18] = [
            "",
            "*",
            "v1",
            "v2",
            "1~5",
            "9~1",
            "a~b",
            "(",
            "^v[0-9]+$",
            ".*",
            "$header.x-v",
            "$query.q",
            "$cookie.c",
            "x,y",
            "-3",
            "\u{1f}",
            "$caller_ip",
            "ünï",
        ];
        const KEYS: [&str; 10] = [
            "$header.x-v",
            "$query.q",
            "$cookie.c",
            "$method",
            "$path",
            "$caller_ip",
            "team",
            "version",
            "",
            "$header.",
        ];
        fn one<'a>(rng: &mut Rng, list: &[&'a str]) -> &'a str {
            let n = rng.below(list.len() as u64) as usize;
            list.get(n).copied().unwrap_or_default()
        }
        fn ms(rng: &mut Rng) -> proto::MatchString {
            proto::MatchString {
                // 6 and 7 are not match types, 3 is not a value type.
                r#type: rng.below(8) as i32,
                value: Some(one(rng, &WORDS).to_string()),
                value_type: rng.below(4) as i32,
            }
        }
        fn labels(rng: &mut Rng) -> HashMap<String, proto::MatchString> {
            (0..rng.below(3))
                .map(|_| (one(rng, &KEYS).to_string(), ms(rng)))
                .collect()
        }

        let mut rng = Rng::new(42);
        let caller = Caller {
            service: "me".into(),
            namespace: "default".into(),
            metadata: [("team".to_string(), "blue".to_string())].into(),
        };
        let nearby = Nearby {
            location: Location {
                region: "r".into(),
                zone: "z1".into(),
                campus: String::new(),
            },
            ..Nearby::default()
        };
        let mut decided = 0;
        for round in 0..150 {
            let routes: Vec<proto::Route> = (0..1 + rng.below(4))
                .map(|_| proto::Route {
                    sources: (0..rng.below(3))
                        .map(|_| proto::Source {
                            service: Some(one(&mut rng, &["*", "me", "other", ""]).into()),
                            namespace: Some("*".into()),
                            metadata: labels(&mut rng),
                        })
                        .collect(),
                    destinations: (0..rng.below(3))
                        .map(|g| proto::Destination {
                            service: Some(one(&mut rng, &["echo", "*", "other"]).into()),
                            namespace: Some("default".into()),
                            metadata: labels(&mut rng),
                            priority: Some(rng.below(3) as u32),
                            weight: Some(rng.below(3) as u32 * 50),
                            name: Some(format!("r{round}.s0.g{g}")),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect();
            let instances = (0..rng.below(6) as u32)
                .map(|n| {
                    let mut i = instance(
                        9000 + n,
                        100 * (rng.below(3) as u32),
                        rng.below(4) > 0,
                        rng.below(5) == 0,
                    );
                    i.metadata
                        .insert("version".into(), one(&mut rng, &WORDS).into());
                    i.location.zone = one(&mut rng, &["z1", "z2", ""]).into();
                    i
                })
                .collect();
            let mut s = snapshot(instances);
            s.metadata
                .insert("internal-enable-nearby".into(), "true".into());
            let (compiled, _errors) = compile_routes(&routes, &caller);
            let metadata = MetadataRouting {
                labels: vec![("x-v".into(), "version".into())],
                failover: [
                    MetaFailover::None,
                    MetaFailover::All,
                    MetaFailover::Others,
                    MetaFailover::NotContainKey,
                ][round % 4],
            };
            for policy in Policy::ALL {
                let failover = if rng.below(2) == 0 {
                    Failover::All
                } else {
                    Failover::None
                };
                let mut plan = Plan::build(
                    &s,
                    &compiled,
                    &compiled,
                    policy,
                    failover,
                    Some(&nearby),
                    Some(&metadata),
                );
                plan.hash_key = Some(Arg::Header("x-v".into()));
                for _ in 0..5 {
                    let mut facts = StaticFacts {
                        headers: vec![("x-v".into(), one(&mut rng, &WORDS).into())],
                        method: "GET".into(),
                        path: format!("/p?q={}", one(&mut rng, &WORDS)),
                        caller_ip: "127.0.0.1".into(),
                        custom: vec![("team".into(), "blue".into())],
                    };
                    if decide(&plan, &s, &mut facts, &mut rng).is_ok() {
                        decided += 1;
                    }
                }
            }
        }
        // The mix must exercise real decisions, not only rejections.
        assert!(decided > 100, "{decided}");
    }

    #[test]
    fn wanted_labels_key_is_the_tuple_key_of_the_headers_present() {
        use crate::routing::metadata::tuple_key;
        let config = MetadataRouting {
            labels: vec![
                ("x-a".into(), "a".into()),
                ("x-b".into(), "b".into()),
                ("x-c".into(), "c".into()),
            ],
            ..MetadataRouting::default()
        };
        let mut facts = StaticFacts {
            headers: vec![("x-a".into(), "1".into()), ("x-c".into(), "3".into())],
            ..StaticFacts::default()
        };
        assert_eq!(
            wanted_labels(&config, &mut facts),
            Some((0b101, tuple_key(0b101, &["1", "3"])))
        );
        assert_eq!(shown_labels(&config, &mut facts), "a=1,c=3");
        assert_eq!(wanted_labels(&config, &mut StaticFacts::default()), None);
    }

    #[test]
    fn unhealthy_instances_are_avoided_while_a_healthy_one_exists() {
        let s = snapshot(vec![
            instance(1, 100, false, false),
            instance(2, 1, true, false),
        ]);
        let plan = plan(&s);
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            let p = pick(&plan, &s, &mut rng).unwrap();
            assert_eq!(p.instance.port, 2);
            assert!(!p.recovered_all);
        }
    }

    #[test]
    fn all_unhealthy_recovers_all_selectable() {
        let s = snapshot(vec![
            instance(1, 100, false, false),
            instance(2, 100, false, false),
            instance(3, 100, false, true),
        ]);
        let plan = plan(&s);
        let mut rng = Rng::new(3);
        let mut seen = [false; 4];
        for _ in 0..200 {
            let p = pick(&plan, &s, &mut rng).unwrap();
            assert!(p.recovered_all);
            seen[p.instance.port as usize] = true;
        }
        assert_eq!(seen, [false, true, true, false]);
    }

    #[test]
    fn nothing_selectable_is_a_503_naming_the_service() {
        let s = snapshot(vec![
            instance(1, 0, true, false),
            instance(2, 10, true, true),
        ]);
        let e = pick(&plan(&s), &s, &mut Rng::new(1)).unwrap_err();
        assert_eq!(e.status(), 503);
        assert_eq!(e.reason(), "no-instance");
        assert!(e.to_string().contains("service echo in namespace default"));
    }

    #[test]
    fn not_found_body_names_service_and_namespace() {
        let e = Rejection::ServiceNotFound(ServiceKey::new("prod", "ghost"));
        assert_eq!(e.status(), 503);
        assert_eq!(
            e.to_string(),
            "service ghost not found in Polaris namespace prod"
        );
    }
}
