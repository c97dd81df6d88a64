//! Rule routing end to end: arbitrary but well-typed Polaris routes (inbound and outbound, every
//! match type and value type, valid and not, odd keys), arbitrary instances (weights, health,
//! isolation, metadata, locations), request facts and routing options (every balancer, both rule
//! failovers, nearby and metadata routing on and off), through `compile_routes`, `Rules::compile`,
//! `Plan::build` and `decide`.
//!
//! Invariants:
//! - nothing panics; every route is either compiled or reported skipped, by its position;
//!   compiling the routes from a stored ROUTING answer gives the same rules;
//! - a decision's instance belongs to the snapshot and is selectable (not isolated, weight > 0),
//!   and healthy unless the decision says recover-all; a rule group implies a rule, a rule implies
//!   the plan has rules; the nearby level is within the configured range and the instance is that
//!   near; metadata `matched` means the instance carries every label the request asked for;
//! - a rejection is a 4xx/5xx with a reason, and only for a stage that is on (no rule rejection
//!   without rules, no nearby one without nearby routing, no metadata one without metadata
//!   routing); with failover `all` and neither nearby nor metadata routing, a service with a
//!   selectable instance always gets a decision;
//! - the same request with the same random seed gets the same answer.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use polaris_wasm::decision::{decide, Rejection};
use polaris_wasm::lb::Rng;
use polaris_wasm::matching::RequestFacts;
use polaris_wasm::model::ServiceKey;
use polaris_wasm::polaris::proto;
use polaris_wasm::routing::metadata::MetaOutcome;
use polaris_wasm::routing::rule::compile_routes;
use polaris_wasm::routing::{Failover, Plan, Rules};
use polaris_wasm::snapshot::{classify_instances, Discovered};
use polaris_wasm_fuzz::gen::{
    instance_answer, routes, CallerSpec, FactsSpec, InstanceSpec, RouteSpec, RoutingOptions,
};
use prost::Message;

#[derive(Arbitrary, Debug)]
struct Input {
    inbound: Vec<RouteSpec>,
    outbound: Vec<RouteSpec>,
    instance: InstanceSpec,
    more_instances: Vec<InstanceSpec>,
    nearby_enabled: Option<bool>,
    caller: CallerSpec,
    options: RoutingOptions,
    request: FactsSpec,
    more_requests: Vec<FactsSpec>,
    seed: u64,
}

fuzz_target!(|input: Input| {
    let key = ServiceKey::new("default", "echo");
    let caller = input.caller.to_caller();
    let inbound = routes(&input.inbound);
    let outbound = routes(&input.outbound);

    let (inb, in_skipped) = compile_routes(&inbound, &caller);
    let (outb, out_skipped) = compile_routes(&outbound, &caller);
    assert_eq!(inb.len() + in_skipped.len(), inbound.len());
    assert_eq!(outb.len() + out_skipped.len(), outbound.len());
    for e in in_skipped.iter().chain(&out_skipped) {
        assert!(e.contains("(route #"), "{e}");
    }

    // The same routes as the server stores them: one ROUTING answer.
    let stored = proto::DiscoverResponse {
        code: Some(200_000),
        r#type: proto::discover_response::DiscoverResponseType::Routing as i32,
        service: Some(proto::Service {
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            ..Default::default()
        }),
        routing: Some(proto::Routing {
            inbounds: inbound.clone(),
            outbounds: outbound.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let rules = Rules::compile(&key, &stored, &caller).expect("a well-formed ROUTING answer");
    assert_eq!(rules.inbound.len(), inb.len());
    assert_eq!(rules.outbound.len(), outb.len());

    let instances: Vec<InstanceSpec> = std::iter::once(&input.instance)
        .chain(&input.more_instances)
        .cloned()
        .collect();
    let answer = instance_answer(&instances, input.nearby_enabled);
    let snapshot = match classify_instances(&key, &answer) {
        Ok(Discovered::Changed(s)) => s,
        other => panic!("a well-formed INSTANCE answer gave {other:?}"),
    };

    let nearby = input.options.nearby();
    let metadata = input.options.metadata();
    let mut plan = Plan::build(
        &snapshot,
        &rules.inbound,
        &rules.outbound,
        input.options.spec(),
        input.options.failover(),
        nearby.as_ref(),
        metadata.as_ref(),
    );
    plan.hash_key = input.options.hash_key();
    let selectable = snapshot.instances.iter().any(|i| i.is_selectable());

    let requests = std::iter::once(&input.request).chain(input.more_requests.iter().take(3));
    for (n, request) in requests.enumerate() {
        let seed = input.seed.wrapping_add(n as u64);
        let mut facts = request.to_facts(&caller);
        let decided = decide(&plan, &snapshot, &mut facts, &mut Rng::new(seed));
        let again = decide(
            &plan,
            &snapshot,
            &mut request.to_facts(&caller),
            &mut Rng::new(seed),
        );
        assert_eq!(decided, again, "the same request decided twice differently");

        match decided {
            Ok(d) => {
                assert!(snapshot
                    .instances
                    .iter()
                    .any(|i| std::ptr::eq(i, d.instance)));
                assert!(d.instance.is_selectable(), "{:?}", d.instance);
                assert!(d.recovered_all || d.instance.healthy, "{d:?}");
                assert!(d.group.is_none() || d.rule.is_some());
                assert!(d.rule.is_none() || plan.has_rules());
                match (d.nearby, plan.nearby_limit(), &nearby) {
                    (None, None, _) => {}
                    (Some(level), Some(widest), Some(n)) => {
                        assert!(level >= widest && level <= n.match_level, "{level:?}");
                        assert!(level.holds(&n.location, &d.instance.location));
                    }
                    (level, limit, _) => panic!("nearby level {level:?} with limit {limit:?}"),
                }
                if let (Some(MetaOutcome::Matched | MetaOutcome::UnhealthyCarriers), Some(m)) =
                    (d.metadata, plan.metadata())
                {
                    for (header, label) in &m.labels {
                        if let Some(v) = facts.header(header) {
                            assert_eq!(
                                d.instance.metadata.get(label).map(String::as_str),
                                Some(v),
                                "metadata routing matched an instance without {label}={v}"
                            );
                        }
                    }
                }
            }
            Err(r) => {
                assert!((400..=599).contains(&r.status()), "{r:?}");
                assert!(!r.reason().is_empty() && !r.to_string().is_empty());
                match &r {
                    Rejection::NoRuleMatched { .. } => assert!(plan.has_rules()),
                    Rejection::NoNearbyInstance { .. } => assert!(plan.nearby_limit().is_some()),
                    Rejection::NoMetadataMatch { .. } => assert!(plan.metadata().is_some()),
                    Rejection::NoInstance { .. } => {}
                    other => panic!("decide cannot answer {other:?}"),
                }
                assert!(
                    !(selectable
                        && plan.failover == Failover::All
                        && plan.nearby_limit().is_none()
                        && plan.metadata().is_none()),
                    "no decision for a service with a selectable instance: {r}"
                );
            }
        }
    }
});
