//! The event hooks Envoy 1.40 resolves in an HTTP-filter module. Each turns raw pointers into
//! our objects and safe handles, and catches any panic: a panic never unwinds into Envoy; on a
//! request's path it answers 503 and is counted (`native_panics`).

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::ffi::abi::{Answer, Buf, ConfigHandle, FilterHandle, Header, ABI_VERSION};
use crate::filter::Filter;
use crate::grpc_stream::StreamEvent;
use crate::plugin::Plugin;

/// `FilterHeadersStatus::Continue`.
const HEADERS_CONTINUE: u32 = 0;
/// `FilterHeadersStatus::StopAllIterationAndBuffer`: held until `continue_decoding`.
const HEADERS_STOP_ALL: u32 = 3;
/// `FilterDataStatus::Continue` / `StopIterationAndBuffer`.
const DATA_CONTINUE: u32 = 0;
const DATA_STOP_AND_BUFFER: u32 = 1;
/// `FilterTrailersStatus::Continue`; `LocalErrorStatus::Continue`.
const TRAILERS_CONTINUE: u32 = 0;
const LOCAL_REPLY_CONTINUE: u32 = 0;

/// Runs `f`, turning a panic into `fallback` (logged by the panic hook's message on stderr).
fn guard<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// The plugin behind a config pointer we returned from `config_new`.
///
/// # Safety
/// `ptr` is null or a pointer from [`envoy_dynamic_module_on_http_filter_config_new`] not yet
/// destroyed.
unsafe fn plugin<'a>(ptr: *const c_void) -> Option<&'a Arc<Plugin>> {
    // SAFETY: the caller's contract; Envoy hands back exactly what we returned.
    unsafe { ptr.cast::<Arc<Plugin>>().as_ref() }
}

/// The filter behind a stream pointer we returned from `filter_new`.
///
/// # Safety
/// `ptr` is null or a pointer from [`envoy_dynamic_module_on_http_filter_new`] not yet
/// destroyed; Envoy calls a stream's hooks one at a time on its worker thread.
unsafe fn filter<'a>(ptr: *const c_void) -> Option<&'a mut Filter> {
    // SAFETY: the caller's contract.
    unsafe { ptr.cast::<Filter>().cast_mut().as_mut() }
}

/// Copies headers out of Envoy's buffers.
///
/// # Safety
/// `headers` is null or holds `n` valid elements whose buffers live through this hook.
unsafe fn headers_of(headers: *const Header, n: usize) -> Vec<(String, String)> {
    if headers.is_null() {
        return Vec::new();
    }
    // SAFETY: the caller's contract.
    let raw = unsafe { std::slice::from_raw_parts(headers, n) };
    raw.iter()
        .map(|h| {
            // SAFETY: header buffers live through this hook.
            let (k, v) = unsafe {
                (
                    Buf {
                        ptr: h.key_ptr,
                        len: h.key_len,
                    }
                    .bytes(),
                    Buf {
                        ptr: h.value_ptr,
                        len: h.value_len,
                    }
                    .bytes(),
                )
            };
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

/// Copies body chunks out of Envoy's buffers, joined.
///
/// # Safety
/// `chunks` is null or holds `n` valid buffers that live through this hook.
unsafe fn body_of(chunks: *const Buf, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if !chunks.is_null() {
        // SAFETY: the caller's contract.
        for c in unsafe { std::slice::from_raw_parts(chunks, n) } {
            // SAFETY: chunk buffers live through this hook.
            out.extend_from_slice(unsafe { c.bytes() });
        }
    }
    out
}

/// Hands a stream event to the plugin behind `config_module`, catching panics.
fn stream_event(config_module: *const c_void, stream_id: u64, event: impl FnOnce() -> StreamEvent) {
    // SAFETY: our own live config pointer.
    let Some(p) = (unsafe { plugin(config_module) }) else {
        return;
    };
    if catch_unwind(AssertUnwindSafe(|| p.on_stream_event(stream_id, event()))).is_err() {
        guard((), || p.count_panic());
    }
}

/// Copies a callout's answer out of Envoy's buffers.
///
/// # Safety
/// The arrays are null or hold `n` valid elements whose buffers live through this hook.
unsafe fn answer(
    result: u32,
    headers: *const Header,
    headers_size: usize,
    chunks: *const Buf,
    chunks_size: usize,
) -> Answer {
    Answer {
        failed: result != 0,
        // SAFETY: the caller's contract.
        headers: unsafe { headers_of(headers, headers_size) },
        // SAFETY: the caller's contract.
        body: unsafe { body_of(chunks, chunks_size) },
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guard((), crate::logger::install);
    ABI_VERSION.as_ptr().cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: *mut c_void,
    _name: Buf,
    config: Buf,
) -> *const c_void {
    guard(std::ptr::null(), || {
        // SAFETY: Envoy's buffer lives through this hook; the plugin copies what it keeps.
        let config = unsafe { config.bytes() };
        // SAFETY: Envoy's filter config, handed to this hook.
        match Plugin::new(unsafe { ConfigHandle::new(config_envoy) }, config) {
            Some(p) => Box::into_raw(Box::new(p)).cast_const().cast(),
            None => std::ptr::null(),
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config_module: *const c_void) {
    guard((), || {
        if config_module.is_null() {
            return;
        }
        // SAFETY: our own pointer from config_new, destroyed once.
        let p = unsafe { Box::from_raw(config_module.cast::<Arc<Plugin>>().cast_mut()) };
        p.shutdown();
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: *mut c_void,
    config_module: *const c_void,
    event_id: u64,
) {
    // SAFETY: our own live config pointer.
    let Some(p) = (unsafe { plugin(config_module) }) else {
        return;
    };
    if catch_unwind(AssertUnwindSafe(|| p.on_scheduled(event_id))).is_err() {
        guard((), || p.count_panic());
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: *mut c_void,
    config_module: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const Header,
    headers_size: usize,
    chunks: *const Buf,
    chunks_size: usize,
) {
    // SAFETY: our own live config pointer.
    let Some(p) = (unsafe { plugin(config_module) }) else {
        return;
    };
    let done = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy's arrays live through this hook.
        let a = unsafe { answer(result, headers, headers_size, chunks, chunks_size) };
        p.on_callout_done(callout_id, a);
    }));
    if done.is_err() {
        guard((), || p.count_panic());
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: Buf,
    _config: Buf,
) -> *const c_void {
    // No per-route configuration: a route that sets one is rejected.
    std::ptr::null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_p: *const c_void) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config_module: *const c_void,
    filter_envoy: *mut c_void,
) -> *const c_void {
    // SAFETY: our own live config pointer.
    let Some(p) = (unsafe { plugin(config_module) }) else {
        return std::ptr::null();
    };
    let made = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy's filter, handed to this hook.
        Filter::new(p, unsafe { FilterHandle::new(filter_envoy) })
    }));
    match made {
        Ok(f) => Box::into_raw(Box::new(f)).cast_const().cast(),
        Err(_) => {
            // Envoy closes the stream when no filter is made.
            guard((), || p.count_panic());
            std::ptr::null()
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: *mut c_void,
    filter_module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: our own live filter pointer, on its worker thread.
    let Some(f) = (unsafe { filter(filter_module) }) else {
        return HEADERS_CONTINUE;
    };
    // SAFETY: Envoy's filter, handed to this hook.
    let h = unsafe { FilterHandle::new(filter_envoy) };
    match catch_unwind(AssertUnwindSafe(|| f.on_request_headers(h))) {
        Ok(true) => HEADERS_CONTINUE,
        Ok(false) => HEADERS_STOP_ALL,
        Err(_) => {
            guard((), || f.on_panic(h));
            HEADERS_STOP_ALL
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: *mut c_void,
    filter_module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: our own live filter pointer.
    let Some(f) = (unsafe { filter(filter_module) }) else {
        return DATA_CONTINUE;
    };
    if guard(false, || f.holding()) {
        DATA_STOP_AND_BUFFER
    } else {
        DATA_CONTINUE
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) -> u32 {
    TRAILERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: *mut c_void,
    filter_module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: our own live filter pointer.
    let Some(f) = (unsafe { filter(filter_module) }) else {
        return HEADERS_CONTINUE;
    };
    // SAFETY: Envoy's filter, handed to this hook.
    let h = unsafe { FilterHandle::new(filter_envoy) };
    if catch_unwind(AssertUnwindSafe(|| f.on_response_headers(h))).is_err() {
        guard((), || f.count_panic());
    }
    HEADERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    DATA_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) -> u32 {
    TRAILERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: *mut c_void,
    filter_module: *const c_void,
) {
    // SAFETY: our own live filter pointer.
    let Some(f) = (unsafe { filter(filter_module) }) else {
        return;
    };
    if catch_unwind(AssertUnwindSafe(|| f.on_end())).is_err() {
        guard((), || f.count_panic());
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter_module: *const c_void) {
    if filter_module.is_null() {
        return;
    }
    guard((), || {
        // SAFETY: our own pointer from filter_new, destroyed once.
        drop(unsafe { Box::from_raw(filter_module.cast::<Filter>().cast_mut()) });
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter_envoy: *mut c_void,
    filter_module: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const Header,
    headers_size: usize,
    chunks: *const Buf,
    chunks_size: usize,
) {
    // SAFETY: our own live filter pointer.
    let Some(f) = (unsafe { filter(filter_module) }) else {
        return;
    };
    // SAFETY: Envoy's filter, handed to this hook.
    let h = unsafe { FilterHandle::new(filter_envoy) };
    let done = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy's arrays live through this hook.
        let a = unsafe { answer(result, headers, headers_size, chunks, chunks_size) };
        f.on_callout_done(h, callout_id, a);
    }));
    if done.is_err() {
        guard((), || f.on_panic(h));
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter_envoy: *mut c_void,
    filter_module: *const c_void,
    _event_id: u64,
) {
    // SAFETY: our own live filter pointer, on its worker thread.
    let Some(f) = (unsafe { filter(filter_module) }) else {
        return;
    };
    // SAFETY: Envoy's filter, handed to this hook.
    let h = unsafe { FilterHandle::new(filter_envoy) };
    if catch_unwind(AssertUnwindSafe(|| f.on_wake(h))).is_err() {
        guard((), || f.on_panic(h));
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _response_code: u32,
    _details: Buf,
    _reset_imminent: bool,
) -> u32 {
    LOCAL_REPLY_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) {
}

/// A stream's own streamed callouts (not used: the limiter streams are the filter config's).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _stream_id: u64,
    _headers: *const Header,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _stream_id: u64,
    _data: *const Buf,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _stream_id: u64,
    _trailers: *const Header,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

/// The filter config's streams (the leader's gRPC streams to polaris-limiter): their events come
/// on the main thread.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy: *mut c_void,
    config_module: *const c_void,
    stream_id: u64,
    headers: *const Header,
    headers_size: usize,
    _end_stream: bool,
) {
    // SAFETY: Envoy's array lives through this hook.
    stream_event(config_module, stream_id, || {
        StreamEvent::Headers(unsafe { headers_of(headers, headers_size) })
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy: *mut c_void,
    config_module: *const c_void,
    stream_id: u64,
    data: *const Buf,
    data_count: usize,
    _end_stream: bool,
) {
    // SAFETY: Envoy's buffers live through this hook.
    stream_event(config_module, stream_id, || {
        StreamEvent::Data(unsafe { body_of(data, data_count) })
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy: *mut c_void,
    config_module: *const c_void,
    stream_id: u64,
    trailers: *const Header,
    trailers_size: usize,
) {
    // SAFETY: Envoy's array lives through this hook.
    stream_event(config_module, stream_id, || {
        StreamEvent::Trailers(unsafe { headers_of(trailers, trailers_size) })
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy: *mut c_void,
    config_module: *const c_void,
    stream_id: u64,
) {
    stream_event(config_module, stream_id, || StreamEvent::Complete);
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy: *mut c_void,
    config_module: *const c_void,
    stream_id: u64,
    reason: u32,
) {
    stream_event(config_module, stream_id, || StreamEvent::Reset(reason));
}
