//! The core's host traits over proxy-wasm host calls.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};

use crate::core::host::{
    Calls, Clock, GrpcCall, HostError, HttpCall, Metrics, Pacing, Properties, Store, StoreError,
    Stream,
};
use crate::polaris::CallError;

/// The proxy-wasm host of the current context.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wasm;

fn refused(status: Status) -> HostError {
    HostError(format!("{status:?}"))
}

impl Store for Wasm {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or_else(|e| {
            log::warn!("shared data read of {key} failed: {e:?}");
            (None, None)
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|e| match e {
            Status::CasMismatch => StoreError::CasMismatch,
            other => StoreError::Host(refused(other)),
        })
    }
}

impl Clock for Wasm {
    fn reads_are_costly(&self) -> bool {
        true
    }

    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

impl Calls for Wasm {
    fn grpc_unary(&self, call: GrpcCall<'_>) -> Result<u32, HostError> {
        hostcalls::dispatch_grpc_call(
            call.upstream,
            call.service,
            call.method,
            call.metadata.to_vec(),
            Some(call.message),
            call.timeout,
        )
        .map_err(refused)
    }

    fn grpc_stream_open(
        &self,
        upstream: &str,
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
    ) -> Result<u32, HostError> {
        hostcalls::open_grpc_stream(upstream, service, method, metadata.to_vec()).map_err(refused)
    }

    fn grpc_stream_send(&self, token: u32, message: &[u8], end: bool) -> Result<(), HostError> {
        hostcalls::send_grpc_stream_message(token, Some(message), end).map_err(refused)
    }

    fn grpc_stream_close(&self, token: u32) -> Result<(), HostError> {
        hostcalls::close_grpc_stream(token).map_err(refused)
    }

    fn http_call(&self, call: HttpCall<'_>) -> Result<u32, HostError> {
        hostcalls::dispatch_http_call(
            call.cluster,
            call.headers.to_vec(),
            call.body,
            Vec::new(),
            call.timeout,
        )
        .map_err(refused)
    }
}

impl Metrics for Wasm {
    fn define_counter(&self, name: &str) -> Result<u32, HostError> {
        hostcalls::define_metric(MetricType::Counter, name).map_err(refused)
    }

    fn add(&self, id: u32, n: u64) {
        let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn define_gauge(&self, name: &str) -> Result<u32, HostError> {
        hostcalls::define_metric(MetricType::Gauge, name).map_err(refused)
    }

    fn set_gauge(&self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }
}

impl Properties for Wasm {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }
}

impl Pacing for Wasm {
    /// Envoy refuses to switch to a stream that is gone (`BadArgument`); a resume after that
    /// would act on the calling context, so it is not made. Later host calls of the same
    /// callback act on the stream: the root context switches back after its tick.
    fn resume_request(&self, id: u32) -> Result<(), HostError> {
        hostcalls::set_effective_context(id).map_err(refused)?;
        hostcalls::resume_http_request().map_err(refused)
    }

    fn set_tick_period(&self, period: std::time::Duration) -> Result<(), HostError> {
        hostcalls::set_tick_period(period.max(std::time::Duration::from_millis(1))).map_err(refused)
    }
}

/// The HTTP stream of the current context.
#[derive(Clone, Copy, Debug, Default)]
pub struct WasmStream;

impl Stream for WasmStream {
    fn request_header(&mut self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).map_err(refused)
    }

    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value)).map_err(refused)
    }

    fn remove_request_header(&mut self, name: &str) -> Result<(), HostError> {
        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None).map_err(refused)
    }

    fn response_header(&mut self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
            .ok()
            .flatten()
    }

    fn stream_property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn source_address(&mut self) -> Option<String> {
        address_property("source")
    }

    fn destination_address(&mut self) -> Option<String> {
        address_property("destination")
    }
}

fn address_property(side: &str) -> Option<String> {
    hostcalls::get_property(vec![side, "address"])
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
}

/// The answer of the gRPC call that just completed in this context.
pub fn grpc_result(status_code: u32, response_size: usize) -> Result<Vec<u8>, CallError> {
    if status_code == 0 {
        return hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size)
            .ok()
            .flatten()
            .ok_or(CallError {
                status: 0,
                message: Some("empty gRPC answer".into()),
            });
    }
    let message = hostcalls::get_grpc_status()
        .ok()
        .and_then(|(_, m)| m)
        .filter(|m| !m.is_empty());
    Err(CallError {
        status: status_code,
        message,
    })
}
