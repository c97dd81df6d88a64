//! polaris-wasm: PolarisMesh service governance inside Envoy, as a proxy-wasm filter.
//!
//! Everything but [`host`] is plain Rust with no proxy-wasm calls, tested natively and as wasm32.

pub mod allow;
pub mod breaker;
pub mod config;
pub mod core;
pub mod decision;
pub mod destination;
pub mod lb;
pub mod limit;
pub mod matching;
pub mod model;
pub mod polaris;
pub mod provider;
pub mod routing;
pub mod shared;
pub mod snapshot;

#[cfg(feature = "host")]
pub mod host;
