//! The plugin configuration: every input is tried twice, as raw bytes and as a JSON object built
//! from it with `arbitrary` over the known field names (`config::KNOWN_FIELDS` and the nested
//! ones), so both the JSON parser and every validation branch are reached.
//!
//! Invariants:
//! - nothing panics; parsing is deterministic;
//! - an error names a field: `<root>` (not a JSON object), a field of the input (the top-level
//!   key it is under) or a known field it lacks, and its message says which;
//! - a configuration that validates is within its documented bounds (its default namespace one a
//!   request's bare service name can be looked up in), is accepted by
//!   `core::Worker::new` over a host (and survives a tick), and parses the same after its JSON is
//!   written out again (compact and pretty).
#![no_main]

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use polaris_wasm::config::{Config, KNOWN_FIELDS};
use polaris_wasm::core::Worker;
use polaris_wasm::destination::parse_destination;
use polaris_wasm::model::ServiceKey;
use polaris_wasm_fuzz::gen::Text;
use polaris_wasm_fuzz::host::FuzzHost;
use serde_json::{Map, Number, Value};

/// Field names of the nested objects.
const NESTED: &[&str] = &[
    "service",
    "namespace",
    "metadata",
    "failover",
    "policy",
    "hash_key",
    "ring_hash",
    "services",
    "from",
    "name",
    "vnodes",
    "region",
    "zone",
    "campus",
    "match_level",
    "max_match_level",
    "unhealthy_percent",
    "headers",
    "header",
    "x-meta",
    "allowed_services",
    "new_services_per_second",
    "not_found_ttl",
    "idle_timeout",
];

/// String values the fields take, valid and not.
const STRINGS: &[&str] = &[
    "polaris_grpc",
    "default",
    "echo",
    "",
    "shop-*",
    "*/x",
    "500ms",
    "2s",
    "1m",
    "0s",
    "99ms",
    "100ms",
    "600s",
    "601s",
    "61s",
    "9ms",
    "18446744073709551615m",
    "weightedRandom",
    "ringHash",
    "maglev",
    "hash",
    "RINGHASH",
    "random",
    "campus",
    "zone",
    "region",
    "all",
    "none",
    "others",
    "not_contain_key",
    "header",
    "cookie",
    "query",
    "caller_ip",
    "authority",
    "x-polaris-upstream",
    "x-v",
    "X-V",
    "ünï",
];

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Small(u8),
    Int(u64),
    Neg(i64),
    Float(f64),
    Str(Text),
    Arr(Vec<Json>),
    Obj(Vec<(Text, Json)>),
}

impl Json {
    fn value(&self, depth: usize) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Small(n) => Value::from(*n),
            Json::Int(n) => Value::from(*n),
            Json::Neg(n) => Value::from(*n),
            Json::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(t) => Value::String(t.pick(STRINGS)),
            Json::Arr(items) if depth < 6 => {
                Value::Array(items.iter().map(|j| j.value(depth + 1)).collect())
            }
            Json::Obj(fields) if depth < 6 => Value::Object(
                fields
                    .iter()
                    .map(|(k, j)| (k.pick(NESTED), j.value(depth + 1)))
                    .collect(),
            ),
            Json::Arr(_) | Json::Obj(_) => Value::Null,
        }
    }
}

/// A top-level object over the known field names (and sometimes others).
fn shaped(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
    let fields: Vec<(Text, Json)> = u.arbitrary()?;
    Ok(Value::Object(
        fields
            .iter()
            .map(|(k, j)| (k.pick(KNOWN_FIELDS), j.value(0)))
            .collect(),
    ))
}

fn check(bytes: &[u8]) {
    let parsed = Config::parse(bytes);
    assert_eq!(parsed, Config::parse(bytes), "parsing is not deterministic");
    let json: Option<Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
        Some(Value::Object(Map::new()))
    } else {
        serde_json::from_slice(bytes).ok()
    };
    match parsed {
        Err(e) => {
            assert!(e.to_string().contains(&format!("`{}`", e.field)));
            if e.field != "<root>" {
                let Some(Value::Object(map)) = &json else {
                    panic!(
                        "error names field {} of input that is not an object",
                        e.field
                    );
                };
                // Only an unknown field named "" is named by the empty string.
                assert!(!e.field.is_empty() || map.contains_key(""));
                let head = e.field.split(['.', '[']).next().unwrap_or_default();
                // A field of the input, or a known one it lacks (`polaris_cluster` is required).
                assert!(
                    map.contains_key(&e.field)
                        || map.contains_key(head)
                        || KNOWN_FIELDS.contains(&e.field.as_str()),
                    "error names field {} the input does not have",
                    e.field
                );
            }
        }
        Ok(config) => {
            assert!((1..=120).contains(&config.polaris_cluster.len()));
            assert!(config.polaris_cluster.is_ascii());
            // A request naming a bare service is looked up in the default namespace.
            assert!(
                parse_destination("echo", &config.namespace).is_some(),
                "namespace {:?} can hold no service a request names",
                config.namespace
            );
            let refresh = Duration::from_millis(100)..=Duration::from_secs(600);
            assert!(refresh.contains(&config.refresh_interval));
            let discover = Duration::from_millis(10)..=Duration::from_secs(60);
            assert!(discover.contains(&config.discover_timeout));
            assert!(config.lazy_load_timeout <= Duration::from_secs(60));
            assert!((1..=100_000).contains(&config.max_services));
            let admission = &config.admission;
            assert!((1..=10_000).contains(&admission.new_services_per_second));
            assert!(admission.not_found_ttl <= Duration::from_secs(600));
            let idle = Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);
            assert!(idle.contains(&admission.idle_timeout));
            assert!(!config.upstream_header.is_empty());
            assert!(config.metadata.labels.len() <= 3);
            assert!(config.nearby.max_match_level <= config.nearby.match_level);
            assert!((1..=100).contains(&config.nearby.unhealthy_percent));
            let _ = config.balancing(&ServiceKey::new(config.namespace.clone(), "echo"));

            let Some(json) = json else {
                panic!("a configuration from bytes that are not JSON");
            };
            for again in [serde_json::to_vec(&json), serde_json::to_vec_pretty(&json)] {
                let again = again.unwrap_or_default();
                assert_eq!(Config::parse(&again).as_ref(), Ok(&config));
            }

            match Worker::new(FuzzHost::at(1_000), config, 7) {
                Ok(mut worker) => worker.on_tick(),
                Err(e) => panic!("a validated configuration is unusable: {}", e.0),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Ok(value) = shaped(&mut Unstructured::new(data)) {
        if let Ok(bytes) = serde_json::to_vec(&value) {
            check(&bytes);
        }
    }
});
