//! The layout of proxy-wasm shared data (one store per `vm_id`, seen by every worker): key names
//! and value encodings. Pure; `host::store` does the reads and CAS writes.
//!
//! | key | value |
//! |---|---|
//! | `polaris-wasm/lease` | [`lease::Lease`]: which root context talks to Polaris |
//! | `polaris-wasm/seq` | counter handing each root context a unique id |
//! | `polaris-wasm/watch` | [`watch::WatchList`]: services the leader refreshes |
//! | `polaris-wasm/gen` | bumped on every snapshot write, so workers resync cheaply |
//! | `polaris-wasm/budget` | [`admission::Budget`]: first discoveries started this second |
//! | `polaris-wasm/seen` | [`admission::Seen`]: when each watched service was last asked for |
//! | `polaris-wasm/<kind>/<ns>/<name>` | the last good `DiscoverResponse` of that kind (`instances`, `routing`, `circuitbreaker`, `faultdetector`); empty once the service was dropped for idleness |
//! | `polaris-wasm/cb/<ns>/<name>` | [`crate::breaker::Table`]: the circuit-breaker state of the service's resources |
//! | `polaris-wasm/cbw/<ns>/<name>` | [`crate::breaker::window::Windows`]: ERROR_RATE counts, merged by every worker |
//! | `polaris-wasm/grl/w/<ns>/<name>/<rule>/<window ms>/<label hash>` | [`crate::limit::GlobalWindow`]: this Envoy's record of a GLOBAL rule's window (`core::global_take`) |
//! | `polaris-wasm/grl/list` | JSON list of the GLOBAL window keys the leader syncs with polaris-limiter |
//! | `polaris-wasm/grl/client-id`, `grl/offset`, `grl/answered` | this Envoy's limiter clientId, the limiter's clock offset (ms, i64 LE), when the limiter last answered (ms, u64 LE) |

pub mod admission;
pub mod lease;
pub mod watch;

pub use watch::{Added, WatchList};

use crate::model::{Kind, ServiceKey};

pub const LEASE_KEY: &str = "polaris-wasm/lease";
pub const SEQ_KEY: &str = "polaris-wasm/seq";
pub const WATCH_KEY: &str = "polaris-wasm/watch";
pub const GEN_KEY: &str = "polaris-wasm/gen";
pub const BUDGET_KEY: &str = "polaris-wasm/budget";
pub const SEEN_KEY: &str = "polaris-wasm/seen";

/// Shared-data key of one kind of data about a service.
pub fn resource_key(kind: Kind, service: &ServiceKey) -> String {
    format!(
        "polaris-wasm/{}/{}/{}",
        kind.name(),
        service.namespace,
        service.name
    )
}

/// Shared-data key of a service's circuit-breaker state.
pub fn breaker_key(service: &ServiceKey) -> String {
    format!("polaris-wasm/cb/{}/{}", service.namespace, service.name)
}

/// Shared-data key of a service's ERROR_RATE windows.
pub fn window_key(service: &ServiceKey) -> String {
    format!("polaris-wasm/cbw/{}/{}", service.namespace, service.name)
}

/// Counters (`seq`, `gen`) are stored as 8 little-endian bytes.
pub fn decode_counter(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

pub fn encode_counter(n: u64) -> [u8; 8] {
    n.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn counters_round_trip_and_junk_reads_as_zero() {
        assert_eq!(decode_counter(Some(&encode_counter(42))), 42);
        assert_eq!(decode_counter(None), 0);
        assert_eq!(decode_counter(Some(b"abc")), 0);
    }

    #[test]
    fn resource_key_names_kind_namespace_and_service() {
        assert_eq!(
            resource_key(Kind::Routing, &ServiceKey::new("default", "echo")),
            "polaris-wasm/routing/default/echo"
        );
    }
}
