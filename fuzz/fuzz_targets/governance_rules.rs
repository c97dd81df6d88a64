//! Rate-limit, circuit-breaker and fault-detection rule compilation from arbitrary but
//! well-typed messages: the input is read as a `DiscoverResponse` (libFuzzer mutates the real
//! server answers committed as seeds, so most inputs decode into rules with odd contents), and
//! its RATE_LIMIT, CIRCUIT_BREAKER and FAULT_DETECTOR rules are compiled for the service it names,
//! as an enforcing caller would.
//!
//! Invariants:
//! - nothing panics; compiling is deterministic;
//! - rate limits: every rule is compiled, skipped by name, or does not apply (disabled, no
//!   amounts); a compiled rule has at least one amount, each with a window of at least 1 s,
//!   longest first, and the rules are in (priority, id) order; the rules named in `dry_run` are
//!   marked and only those;
//! - circuit breakers: each level's rule is of that level, asks for at least one half-open probe,
//!   and skipped rules are reported by name;
//! - fault detection: at most one detector per protocol (HTTP, TCP);
//! - the same rules stored as a well-formed answer compile to the same result through the
//!   stored-answer path the workers use (`from_stored`, `Rules::compile`, `probe::compile`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use polaris_wasm::breaker::rule::select as select_breakers;
use polaris_wasm::breaker::{probe, Level, Rules, Settings};
use polaris_wasm::limit::{Behavior, Limits, RuleSettings};
use polaris_wasm::model::{Kind, ServiceKey};
use polaris_wasm::polaris::{client, proto};
use polaris_wasm::routing::Caller;
use prost::Message;

fn stored(kind: Kind, key: &ServiceKey, mut response: proto::DiscoverResponse) -> Vec<u8> {
    response.code = Some(200_000);
    response.r#type = client::request_type(kind) as i32;
    response.service = Some(proto::Service {
        name: Some(key.name.clone()),
        namespace: Some(key.namespace.clone()),
        revision: Some("fuzz".into()),
        ..Default::default()
    });
    response.encode_to_vec()
}

fuzz_target!(|data: &[u8]| {
    let Ok(response) = proto::DiscoverResponse::decode(data) else {
        return;
    };
    let named = response.service.clone().unwrap_or_default();
    let key = ServiceKey::new(
        named.namespace.filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into()),
        named.name.filter(|n| !n.is_empty()).unwrap_or_else(|| "fuzz-echo".into()),
    );
    let caller = Caller {
        service: "me".into(),
        namespace: "default".into(),
        ..Default::default()
    };

    // Rate limits.
    let rules = response.rate_limit.clone().map(|r| r.rules).unwrap_or_default();
    let (limits, skipped) = Limits::compile(&rules);
    assert!(limits.rules.len() + skipped.len() <= rules.len());
    for e in &skipped {
        assert!(e.starts_with("rate-limit rule `"), "{e}");
    }
    for r in &limits.rules {
        assert!(!r.amounts.is_empty(), "{r:?}");
        assert!(r.amounts.iter().all(|a| a.window_ms >= 1000), "{r:?}");
        assert!(r.amounts.windows(2).all(|w| w[0].window_ms >= w[1].window_ms), "{r:?}");
    }
    assert!(limits
        .rules
        .windows(2)
        .all(|w| (w[0].priority, &w[0].id) <= (w[1].priority, &w[1].id)));
    let (again, skipped_again) = Limits::compile(&rules);
    assert_eq!(format!("{limits:?}"), format!("{again:?}"));
    assert_eq!(skipped, skipped_again);
    let dry_run: Vec<String> = limits.rules.first().map(|r| r.name.clone()).into_iter().collect();
    let bytes = stored(Kind::RateLimit, &key, response.clone());
    let settings = RuleSettings {
        dry_run: dry_run.clone(),
        ..RuleSettings::default()
    };
    let from_stored = Limits::from_stored(&key, &bytes, &settings).expect("a well-formed answer");
    // A CONCURRENCY rule without any threshold is skipped once stored.
    let kept = limits.rules.iter().filter(|r| r.behavior != Behavior::Concurrency { max: 0 }).count();
    assert_eq!(from_stored.rules.len(), kept);
    for r in &from_stored.rules {
        assert_eq!(r.dry_run, dry_run.contains(&r.name), "{r:?}");
    }

    // Circuit breakers.
    let rules = response.circuit_breaker.clone().map(|c| c.rules).unwrap_or_default();
    for default_rule in [false, true] {
        let settings = Settings {
            default_rule,
            dry_run: Vec::new(),
        };
        let (compiled, skipped) = select_breakers(&key, &rules, &caller, &settings);
        check_breakers(&compiled);
        for e in &skipped {
            assert!(e.contains("rule"), "{e}");
        }
        let (again, _) = select_breakers(&key, &rules, &caller, &settings);
        assert_eq!(format!("{compiled:?}"), format!("{again:?}"));
        let bytes = stored(Kind::CircuitBreaker, &key, response.clone());
        let from_stored =
            Rules::compile(&key, &bytes, &caller, &settings).expect("a well-formed answer");
        assert_eq!(format!("{compiled:?}"), format!("{from_stored:?}"));
    }

    // Fault detection.
    let rules = response.fault_detector.clone().map(|f| f.rules).unwrap_or_default();
    let (detectors, _) = probe::select(&key, &rules);
    assert!(detectors.len() <= 2, "{detectors:?}");
    let (again, _) = probe::select(&key, &rules);
    assert_eq!(format!("{detectors:?}"), format!("{again:?}"));
    let bytes = stored(Kind::FaultDetector, &key, response);
    let from_stored = probe::compile(&key, &bytes).expect("a well-formed answer");
    assert_eq!(format!("{detectors:?}"), format!("{from_stored:?}"));
});

fn check_breakers(rules: &Rules) {
    if let Some(r) = &rules.instance {
        assert_eq!(r.level, Level::Instance, "{r:?}");
    }
    if let Some(r) = &rules.service {
        assert_eq!(r.level, Level::Service, "{r:?}");
    }
    for r in &rules.methods {
        assert_eq!(r.level, Level::Method, "{r:?}");
    }
    for r in rules.all() {
        assert!(r.probes >= 1, "{r:?}");
    }
}
