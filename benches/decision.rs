//! Native micro-benchmark of the whole request decision (rule routing over 20 rules, nearby
//! routing, health filter, load balancer) for a 1,000-instance service: `make bench` runs it.
//! Target: <= 1 us per decision. Plain `Instant` timing, no benchmark crate.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use polaris_wasm::decision::decide;
use polaris_wasm::lb::{Policy, Rng};
use polaris_wasm::matching::{Arg, StaticFacts};
use polaris_wasm::model::upstream_address;
use polaris_wasm::model::{Instance, Location, ServiceKey, ServiceSnapshot};
use polaris_wasm::polaris::proto;
use polaris_wasm::routing::rule::compile_routes;
use polaris_wasm::routing::{Caller, Failover, Nearby, Plan};

const INSTANCES: usize = 1000;
const RULES: usize = 20;
/// Batches of `BATCH` decisions; the VM's CPU steal only ever adds time, so the fastest batch is
/// the decision's cost and the median shows how noisy the run was.
const BATCHES: usize = 10;
const BATCH: u32 = 50_000;

fn snapshot() -> ServiceSnapshot {
    let instances = (0..INSTANCES)
        .map(|n| {
            let port = 10_000 + n as u32;
            Instance {
                id: format!("{:040x}", n * 7919),
                host: "10.0.0.1".into(),
                port,
                weight: 100,
                healthy: n % 10 != 0,
                isolated: false,
                metadata: [("version".to_string(), format!("v{}", n % 10))].into(),
                location: Location {
                    region: "r1".into(),
                    zone: format!("z{}", n % 5),
                    campus: String::new(),
                },
                upstream: upstream_address("10.0.0.1", port),
            }
        })
        .collect();
    let metadata = [("internal-enable-nearby".to_string(), "true".to_string())].into();
    ServiceSnapshot::new(
        ServiceKey::new("default", "echo"),
        "r".into(),
        metadata,
        instances,
    )
}

fn ms(kind: proto::match_string::MatchStringType, value: &str) -> proto::MatchString {
    proto::MatchString {
        r#type: kind as i32,
        value: Some(value.into()),
        value_type: 0,
    }
}

/// 20 rules over header/query/method arguments, each with two weighted version groups; only the
/// last one matches the benchmark request. With `indexable`, the header test is EXACT (the rule
/// index files the rules by value); otherwise it is a REGEX, so every rule and its regex runs.
fn rules(indexable: bool) -> Vec<proto::Route> {
    use proto::match_string::MatchStringType as T;
    (0..RULES)
        .map(|r| {
            let mut source: HashMap<String, proto::MatchString> = HashMap::new();
            let env = if indexable {
                ms(T::Exact, &format!("env-{r}"))
            } else {
                ms(T::Regex, &format!("^env-{r}$"))
            };
            source.insert("$header.x-env".into(), env);
            source.insert("$query.uid".into(), ms(T::Regex, "^[0-9]+$"));
            source.insert("$method".into(), ms(T::NotEquals, "DELETE"));
            proto::Route {
                sources: vec![proto::Source {
                    service: Some("*".into()),
                    namespace: Some("*".into()),
                    metadata: source,
                }],
                destinations: (0..2)
                    .map(|g| proto::Destination {
                        service: Some("echo".into()),
                        namespace: Some("default".into()),
                        metadata: [(
                            "version".to_string(),
                            ms(T::Exact, &format!("v{}", (r + g) % 10)),
                        )]
                        .into(),
                        priority: Some(0),
                        weight: Some(if g == 0 { 80 } else { 20 }),
                        name: Some(format!("rule{r}.s0.g{g}")),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect()
}

fn main() {
    for (title, indexable) in [
        ("EXACT header rules (indexed)", true),
        ("REGEX header rules (every rule evaluated)", false),
    ] {
        run(title, indexable);
    }
}

fn run(title: &str, indexable: bool) {
    let snapshot = snapshot();
    let (routes, errors) = compile_routes(&rules(indexable), &Caller::default());
    assert!(errors.is_empty(), "{errors:?}");
    let nearby = Nearby {
        location: Location {
            region: "r1".into(),
            zone: "z1".into(),
            campus: String::new(),
        },
        ..Nearby::default()
    };
    let facts = StaticFacts {
        headers: vec![
            ("x-env".into(), format!("env-{}", RULES - 1)),
            ("x-user".into(), "user-42".into()),
        ],
        method: "GET".into(),
        path: "/api?uid=12345".into(),
        caller_ip: "10.1.1.1".into(),
        custom: Vec::new(),
    };
    let hash = Arg::Header("x-user".into());
    println!(
        "decision, {title}: {INSTANCES} instances, {RULES} rules (last one matches), nearby on, {BATCHES} x {BATCH} decisions: fastest batch / median batch"
    );
    for policy in [
        Policy::WeightedRandom,
        Policy::RingHash,
        Policy::Maglev,
        Policy::Hash,
    ] {
        let built = Instant::now();
        let mut plan = Plan::build(
            &snapshot,
            &routes,
            &[],
            policy,
            Failover::All,
            Some(&nearby),
            None,
        );
        let build = built.elapsed();
        let mut rng = Rng::new(7);
        plan.hash_key = policy.uses_key().then(|| hash.clone());
        // Warm-up: builds the lazily-made balancers once, as the first request after a change does.
        for _ in 0..1000 {
            let mut f = facts.clone();
            black_box(decide(&plan, &snapshot, &mut f, &mut rng).ok());
        }
        let mut f = facts.clone();
        let mut per: Vec<u128> = (0..BATCHES)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..BATCH {
                    let d = decide(&plan, &snapshot, black_box(&mut f), &mut rng);
                    black_box(d.map(|d| d.instance.port).ok());
                }
                (start.elapsed() / BATCH).as_nanos()
            })
            .collect();
        per.sort_unstable();
        println!(
            "  {:<15} {:>6} ns/decision  (median {:>5} ns; plan build {:.2} ms)",
            policy.name(),
            per.first().copied().unwrap_or_default(),
            per.get(BATCHES / 2).copied().unwrap_or_default(),
            build.as_secs_f64() * 1000.0
        );
    }
}
