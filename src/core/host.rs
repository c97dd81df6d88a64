//! The host, as the core sees it: a few small traits. `crate::host` implements them over
//! proxy-wasm; the unit tests implement them with a fake that records every call.

use std::fmt;
use std::time::Duration;

/// A host call the host refused, with the status it gave (the proxy-wasm status, rendered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostError(pub String);

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a shared-data write did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Another VM wrote the key since we read it.
    CasMismatch,
    Host(HostError),
}

/// Shared data: one map per `vm_id`, seen by every worker of the Envoy. Values carry a CAS that
/// a conditional write must name.
pub trait Store {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// Wall-clock milliseconds since the epoch (0 if the host cannot tell).
pub trait Clock {
    fn now_ms(&self) -> u64;

    /// Whether a read costs enough to keep it off the request path where a timer can stand in
    /// (a host call out of a wasm VM: ~0.3 µs; a native read: ~25 ns).
    fn reads_are_costly(&self) -> bool {
        false
    }
}

/// A gRPC call to make: `upstream` is what the host needs to reach the cluster (for proxy-wasm,
/// an encoded `GrpcService`).
#[derive(Clone, Copy, Debug)]
pub struct GrpcCall<'a> {
    pub upstream: &'a str,
    pub service: &'a str,
    pub method: &'a str,
    pub metadata: &'a [(&'a str, &'a [u8])],
    pub message: &'a [u8],
    pub timeout: Duration,
}

/// An HTTP callout through an Envoy cluster.
#[derive(Clone, Copy, Debug)]
pub struct HttpCall<'a> {
    pub cluster: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
    pub timeout: Duration,
}

/// Outgoing calls. Each returns a token; the answer comes back to the same context through the
/// core's `on_call_result`.
pub trait Calls {
    fn grpc_unary(&self, call: GrpcCall<'_>) -> Result<u32, HostError>;
    fn grpc_stream_open(
        &self,
        upstream: &str,
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
    ) -> Result<u32, HostError>;
    fn grpc_stream_send(&self, token: u32, message: &[u8], end: bool) -> Result<(), HostError>;
    fn grpc_stream_close(&self, token: u32) -> Result<(), HostError>;
    fn http_call(&self, call: HttpCall<'_>) -> Result<u32, HostError>;
}

/// Envoy stats. The core counts in the VM and hands the sums over on ticks.
pub trait Metrics {
    fn define_counter(&self, name: &str) -> Result<u32, HostError>;
    fn add(&self, id: u32, n: u64);
    fn define_gauge(&self, name: &str) -> Result<u32, HostError>;
    fn set_gauge(&self, id: u32, value: u64);
}

/// Host properties outside any request (Envoy's node, for its locality).
pub trait Properties {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
}

/// Paused streams and the timer that resumes them (unirate queueing).
pub trait Pacing {
    /// Resumes the paused request of stream `id`, a stream of this thread. An error means the
    /// stream is gone (the client left); nothing was resumed.
    fn resume_request(&self, id: u32) -> Result<(), HostError>;
    /// How often the host calls the core's `on_tick` from now on (at least 1 ms).
    fn set_tick_period(&self, period: Duration) -> Result<(), HostError>;
    /// Asks for the leader's tick now (a load balancer's service just went on the watch list).
    /// Hosts whose requests call Polaris themselves need not.
    fn wake_leader(&self) {}
}

/// Everything per-VM the core needs from its host.
pub trait Host: Store + Clock + Calls + Metrics + Properties + Pacing {}

impl<T: Store + Clock + Calls + Metrics + Properties + Pacing> Host for T {}

/// One HTTP stream as the core sees it.
pub trait Stream {
    fn request_header(&mut self, name: &str) -> Option<String>;
    /// Sets (replacing) a request header.
    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError>;
    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError>;
    /// Removes a request header (if present).
    fn remove_request_header(&mut self, name: &str) -> Result<(), HostError>;
    /// The downstream peer, `ip:port`. Envoy may take it from `x-forwarded-for` (when the
    /// connection manager does not `use_remote_address`), so never trust it alone.
    fn source_address(&mut self) -> Option<String>;
    /// A response header (`:status` included), once the response headers have arrived.
    fn response_header(&mut self, name: &str) -> Option<String>;
    /// A property of this stream, e.g. `response.code_details`.
    fn stream_property(&mut self, path: &[&str]) -> Option<Vec<u8>>;
    /// The local address the downstream connection arrived at, `ip:port` (the listener's, or the
    /// original destination): never taken from request headers.
    fn destination_address(&mut self) -> Option<String>;
    /// Hands the picked instance (`ip:port`) over as Envoy's upstream override host
    /// (`upstream_handover: override_host`); hosts without one refuse it.
    fn set_override_host(&mut self, upstream: &str) -> Result<(), HostError> {
        Err(HostError(format!(
            "no override host in this build for {upstream}"
        )))
    }
}

pub use crate::polaris::CallError;

/// The answer of an outgoing call: the response bytes, or how it failed.
pub type CallResult = Result<Vec<u8>, CallError>;
