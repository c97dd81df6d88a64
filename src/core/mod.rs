//! The filter's core: the request lifecycle and the leader's work, behind small host traits.
//!
//! Nothing here calls proxy-wasm. `crate::host` implements [`host::Host`] and [`host::Stream`]
//! over proxy-wasm and turns [`Verdict`]s into Envoy actions; the unit tests use a fake host that
//! records every call ([`fake`]).
//!
//! - [`Worker`]: one Envoy thread's state; `on_tick` (lease, refresh, resync, metrics) and
//!   `on_call_result` for the root context's calls.
//! - [`Exchange`]: one HTTP stream; `on_request`, `on_call_result`, `on_response`.

pub mod admission;
pub mod admitting;
pub mod breakers;
pub mod breaking;
pub mod discover;
pub mod facts;
pub mod global_limit;
pub mod global_take;
pub mod host;
pub mod leader;
pub mod limiter;
pub mod limiter_link;
pub mod metrics;
pub mod node;
pub mod pacing;
pub mod probe_queue;
pub mod probing;
pub mod provider;
pub mod queue;
pub mod reply;
pub mod request;
pub mod rule_stats;
pub mod store;
pub mod tick;
pub mod worker;

#[cfg(test)]
mod admission_tests;
#[cfg(test)]
mod breaker_tests;
#[cfg(test)]
pub mod fake;
#[cfg(test)]
mod global_tests;
#[cfg(test)]
mod pacing_tests;
#[cfg(test)]
mod provider_tests;
#[cfg(test)]
mod tests;

pub use host::{CallResult, Host, HostError, Stream};
pub use metrics::{Counter, Counters, Gauge};
pub use request::{Exchange, LocalReply, Ticket, Verdict};
pub use worker::{Unusable, Worker};
