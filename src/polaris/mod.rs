//! The Polaris wire protocol: generated messages plus request building and response codes.

pub mod client;
pub mod code;

use std::fmt;

/// A call to Polaris that got no answer: the transport failed, not the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    /// The gRPC status.
    pub status: u32,
    pub message: Option<String>,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "Polaris unreachable (gRPC status {}: {m})", self.status),
            None => write!(f, "Polaris unreachable (gRPC status {})", self.status),
        }
    }
}

/// Messages generated from our own `proto/v1/*.proto` (package `v1`, wire-compatible with Polaris).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/v1.rs"));
}

/// polaris-limiter's v2 messages, generated from our own `proto/limiter/ratelimiter.proto`
/// (package `polaris.metric.v2`).
#[allow(clippy::all, missing_docs)]
pub mod limiter_proto {
    include!(concat!(env!("OUT_DIR"), "/polaris.metric.v2.rs"));
}
