//! polaris-native: the filter's core (`polaris-wasm` without its proxy-wasm shell) as a native
//! Envoy dynamic module for Envoy 1.40 (`envoy.filters.http.dynamic_modules`).
//!
//! - [`ffi`] and [`exports`]: the only `unsafe`: our ABI declarations, and the event hooks we
//!   export.
//! - [`plugin`]: one filter config; its leading worker on the main thread, ticked by a timer
//!   thread through Envoy's config scheduler.
//! - [`filter`]: one stream, on a worker thread's follower worker.
//! - [`host`]: the core's host traits; [`store`]: shared data in process memory; [`grpc`]:
//!   Polaris's gRPC calls as Envoy callouts; [`grpc_stream`]: the limiter's gRPC streams as
//!   Envoy streams; [`rule_stats`]: per-rule counters as labelled vectors; [`logger`]: `log` to
//!   Envoy's log.
//! - [`cluster`]: the module as an upstream cluster too (`envoy/envoy-native-cluster.yaml`):
//!   Polaris's instances as hosts, each pick handed over as Envoy's override host; with
//!   `upstream_handover: load_balancer`, [`balancer`] decides in the cluster's load balancer
//!   and no filter runs per stream.

#![deny(unsafe_code)]

mod balancer;
mod cluster;
#[allow(unsafe_code)]
mod exports;
#[allow(unsafe_code)]
mod ffi;
mod filter;
mod grpc;
mod grpc_stream;
mod host;
mod logger;
mod plugin;
mod rule_stats;
mod store;
