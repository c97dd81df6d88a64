//! The discovery snapshot: decoding each kind of answer, the worker caches, and the
//! leader's refresh bookkeeping.

pub mod cache;
pub mod decode;
pub mod refresh;

pub use cache::{Cache, Known, ServiceCache};
pub use decode::{
    classify, classify_instances, decode_circuit_breaker, decode_fault_detector, decode_instances,
    decode_rate_limits, decode_routing, Answer, DecodeError, Discovered, DiscoveryError,
};
pub use refresh::{Outcome, Refresher, Resource};
