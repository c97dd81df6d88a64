//! Circuit breaking, polaris-go's circuit breaker v2 (`plugin/circuitbreaker/composite`): rules
//! compiled per snapshot change, the error classification of one outcome, the state machine of
//! one resource as it lives in shared data, and the ERROR_RATE sliding windows.
//!
//! Pure: no host calls. The core (`core::breaking`) reads and writes the shared state through
//! the store's CAS loop and feeds outcomes in from the response path.
//!
//! - [`rule`]: CIRCUIT_BREAKER answers -> the rules that apply to one service and this caller,
//!   at each level (INSTANCE, SERVICE, METHOD), with polaris-go's default INSTANCE rule.
//! - [`outcome`]: what one upstream result was (status or -1, latency) and whether a rule counts
//!   it as a failure (RET_CODE, DELAY).
//! - [`state`]: Closed / Open / HalfOpen per resource, the table of one service in shared data,
//!   and every transition (CONSECUTIVE_ERROR, sleep window, half-open probes).
//! - [`window`]: the ERROR_RATE buckets each worker adds to and the leader evaluates.

pub mod outcome;
pub mod probe;
pub mod rule;
pub mod state;
pub mod window;

pub use outcome::Outcome;
pub use rule::{Level, Rule, Rules, Settings};
pub use state::{Effective, Resource, Table, Transition};
