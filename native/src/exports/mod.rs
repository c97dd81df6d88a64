//! The event hooks we export to Envoy 1.40 (each catching panics): the filter's ([`hooks`])
//! and the upstream cluster's ([`cluster`]). They hand Envoy's calls to the rest of the crate,
//! over the declarations in [`crate::ffi`]; kept apart from those so `ffi` depends on nothing
//! of ours.

mod cluster;
mod hooks;
