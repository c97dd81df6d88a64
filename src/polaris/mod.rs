//! The Polaris wire protocol: generated messages plus request building and response codes.

pub mod client;
pub mod code;

/// Messages generated from our own `proto/v1/*.proto` (package `v1`, wire-compatible with Polaris).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/v1.rs"));
}
