//! A stored `DiscoverResponse`, arbitrary bytes, read as every kind the filter decodes.
//!
//! Invariants:
//! - nothing panics;
//! - a Ready snapshot is about the service asked for, carries the answer's revision, and keeps
//!   exactly the answer's instances that have a host and a port in 1..=65535, each with
//!   `upstream == upstream_address(host, port)` (`host:port`, `[host]:port` for IPv6);
//! - an answer about another service is never Ready;
//! - `classify` agrees with the decoders: at most one kind is Changed (the answer's type), every
//!   kind sees the same no-change / not-found / error code, INSTANCE agrees with
//!   `Known::from_stored`, ROUTING with `decode_routing` and `Rules::compile`;
//! - a Ready snapshot with a selectable instance and no rules gives a decision.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polaris_wasm::decision::decide;
use polaris_wasm::lb::{Policy, Rng};
use polaris_wasm::matching::StaticFacts;
use polaris_wasm::model::{upstream_address, Kind, ServiceKey};
use polaris_wasm::polaris::proto;
use polaris_wasm::routing::{Caller, Failover, Plan, Rules};
use polaris_wasm::snapshot::{classify, decode_routing, Answer, DecodeError, Known};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let parsed = proto::DiscoverResponse::decode(data).ok();
    // The service the answer is about, so the fuzzer gets past the name check; otherwise the one
    // the seeds are about.
    let key = parsed
        .as_ref()
        .and_then(|r| r.service.as_ref())
        .map(|s| {
            ServiceKey::new(
                s.namespace.clone().unwrap_or_default(),
                s.name.clone().unwrap_or_default(),
            )
        })
        .unwrap_or_else(|| ServiceKey::new("default", "fuzz-echo"));

    let known = Known::from_stored(&key, data);
    if let Ok(Known::Ready(snapshot)) = &known {
        let Some(response) = &parsed else {
            panic!("a snapshot from bytes that are not a DiscoverResponse");
        };
        assert_eq!(snapshot.key, key);
        let revision = response.service.as_ref().and_then(|s| s.revision.clone());
        assert_eq!(snapshot.revision, revision.unwrap_or_default());
        let usable = response
            .instances
            .iter()
            .filter(|i| {
                i.host.as_deref().is_some_and(|h| !h.is_empty())
                    && i.port.is_some_and(|p| (1..=65535).contains(&p))
            })
            .count();
        assert_eq!(snapshot.instances.len(), usable);
        for i in &snapshot.instances {
            assert!(!i.host.is_empty());
            assert!((1..=65535).contains(&i.port), "port {}", i.port);
            assert_eq!(i.upstream, upstream_address(&i.host, i.port));
            assert!(i.upstream.ends_with(&format!(":{}", i.port)));
            assert!(i.upstream.contains(i.host.as_str()));
        }
        if snapshot.instances.iter().any(|i| i.is_selectable()) {
            let plan = Plan::build(
                snapshot,
                &[],
                &[],
                Policy::WeightedRandom,
                Failover::None,
                None,
                None,
            );
            let decided = decide(
                &plan,
                snapshot,
                &mut StaticFacts::default(),
                &mut Rng::new(1),
            );
            let d = decided.unwrap_or_else(|r| panic!("no decision without rules: {r}"));
            assert!(d.instance.is_selectable());
            assert!(snapshot
                .instances
                .iter()
                .any(|i| std::ptr::eq(i, d.instance)));
        }
    }

    // The same answer asked about another service is never taken for it.
    let other = ServiceKey::new(key.namespace.clone(), format!("{}-other", key.name));
    assert!(!matches!(
        Known::from_stored(&other, data),
        Ok(Known::Ready(_))
    ));

    let answers: Vec<(Kind, Result<Answer, DecodeError>)> = Kind::ALL
        .iter()
        .map(|&kind| (kind, classify(kind, &key, data)))
        .collect();
    let changed = answers
        .iter()
        .filter(|(_, a)| matches!(a, Ok(Answer::Changed { .. })))
        .count();
    assert!(changed <= 1, "{answers:?}");
    // A code other than success is answered before the type is looked at: every kind sees it.
    let before_type = |a: &Result<Answer, DecodeError>| {
        matches!(
            a,
            Ok(Answer::Unchanged | Answer::NotFound)
                | Err(DecodeError::Malformed(_) | DecodeError::Server { .. })
        )
    };
    if let Some((_, first)) = answers.first() {
        for (_, a) in &answers {
            assert_eq!(before_type(a), before_type(first), "{answers:?}");
            if before_type(first) {
                assert_eq!(a, first);
            }
        }
    }

    for (kind, answer) in &answers {
        match kind {
            Kind::Instances => match (answer, &known) {
                (Ok(Answer::Changed { revision }), Ok(Known::Ready(s))) => {
                    assert_eq!(&s.revision, revision)
                }
                (Ok(Answer::NotFound), Ok(Known::NotFound)) => {}
                (Ok(Answer::Unchanged), Err(DecodeError::Mismatch(_))) => {}
                (Err(a), Err(b)) => assert_eq!(a, b),
                (a, b) => panic!("classify {a:?} but from_stored {b:?}"),
            },
            Kind::Routing => {
                let routing = decode_routing(&key, data);
                let caller = Caller {
                    namespace: key.namespace.clone(),
                    service: "fuzz-caller".into(),
                    ..Caller::default()
                };
                let rules = Rules::compile(&key, data, &caller);
                assert_eq!(routing.is_ok(), rules.is_ok());
                assert_eq!(
                    routing.is_ok(),
                    matches!(answer, Ok(Answer::Changed { .. } | Answer::NotFound))
                );
                if let (Ok(routing), Ok(rules)) = (routing, rules) {
                    assert!(rules.inbound.len() <= routing.inbounds.len());
                    assert!(rules.outbound.len() <= routing.outbounds.len());
                }
            }
            // Rate-limit, circuit-breaker and fault-detector answers are stored and classified
            // by the leader; nothing decodes their rules yet.
            Kind::RateLimit | Kind::CircuitBreaker | Kind::FaultDetector => {}
        }
    }
});
