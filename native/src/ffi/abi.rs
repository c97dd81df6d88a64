//! Our own declarations of the Envoy callbacks we call (Envoy v1.40.0,
//! `source/extensions/dynamic_modules/abi.h`), and safe handles over them. C enums are passed
//! as `u32`; both buffer kinds (`envoy_buffer`, `module_buffer`) are `{ptr, length}`.

use std::ffi::{c_char, c_void};

/// The ABI version this module was written against (Envoy 1.40 only warns on a mismatch, but
/// every signature here must match 1.40's).
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// `envoy_dynamic_module_type_{envoy,module}_buffer`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buf {
    pub ptr: *const c_char,
    pub len: usize,
}

impl Buf {
    pub const NULL: Buf = Buf {
        ptr: std::ptr::null(),
        len: 0,
    };

    pub fn of(bytes: &[u8]) -> Buf {
        Buf {
            ptr: bytes.as_ptr().cast(),
            len: bytes.len(),
        }
    }

    /// The bytes of a buffer Envoy owns, valid for the current event hook.
    ///
    /// # Safety
    /// `ptr` must be null or point to `len` readable bytes for the lifetime `'a`.
    pub unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
    }
}

/// `envoy_dynamic_module_type_{envoy,module}_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Header {
    pub key_ptr: *const c_char,
    pub key_len: usize,
    pub value_ptr: *const c_char,
    pub value_len: usize,
}

impl Header {
    fn of(key: &[u8], value: &[u8]) -> Header {
        Header {
            key_ptr: key.as_ptr().cast(),
            key_len: key.len(),
            value_ptr: value.as_ptr().cast(),
            value_len: value.len(),
        }
    }
}

/// `envoy_dynamic_module_type_http_header_type`.
#[derive(Clone, Copy, Debug)]
pub enum HeaderMap {
    Request = 0,
    Response = 2,
}

/// `envoy_dynamic_module_type_log_level`.
#[derive(Clone, Copy, Debug)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// The `envoy_dynamic_module_type_attribute_id` values we read.
#[derive(Clone, Copy, Debug)]
pub enum Attribute {
    ResponseCodeDetails = 16,
    SourceAddress = 24,
    DestinationAddress = 26,
}

/// `envoy_dynamic_module_type_http_callout_init_result_Success`.
const CALLOUT_INIT_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: Buf);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: Buf,
        label_names: *mut Buf,
        label_names_length: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: *mut c_void,
        name: Buf,
        label_names: *mut Buf,
        label_names_length: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        label_values: *mut Buf,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: *mut c_void,
        id: usize,
        label_values: *mut Buf,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        callout_id_out: *mut u64,
        cluster_name: Buf,
        headers: *mut Header,
        headers_size: usize,
        body: Buf,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_start_http_stream(
        config: *mut c_void,
        stream_id_out: *mut u64,
        cluster_name: Buf,
        headers: *mut Header,
        headers_size: usize,
        body: Buf,
        end_stream: bool,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_stream_send_data(
        config: *mut c_void,
        stream_id: u64,
        data: Buf,
        end_stream: bool,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_config_reset_http_stream(
        config: *mut c_void,
        stream_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: *mut c_void,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);

    fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        header_type: u32,
        key: Buf,
        result: *mut Buf,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: u32,
        key: Buf,
        value: Buf,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status_code: u32,
        headers: *mut Header,
        headers_size: usize,
        body: Buf,
        details: Buf,
    );
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        attribute_id: u32,
        result: *mut Buf,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: *mut c_void,
        callout_id_out: *mut u64,
        cluster_name: Buf,
        headers: *mut Header,
        headers_size: usize,
        body: Buf,
        timeout_milliseconds: u64,
    ) -> u32;
}

/// Writes one line to Envoy's log (the `dynamic_modules` logger).
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the buffer is valid for the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level as u32, Buf::of(message.as_bytes())) }
}

pub fn log_enabled(level: LogLevel) -> bool {
    // SAFETY: a plain query.
    unsafe { envoy_dynamic_module_callback_log_enabled(level as u32) }
}

/// Why Envoy did not start a callout (`envoy_dynamic_module_type_http_callout_init_result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalloutRefused(pub u32);

impl std::fmt::Display for CalloutRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self.0 {
            1 => "missing required headers",
            2 => "cluster not found",
            3 => "duplicate callout id",
            4 => "cannot create request",
            _ => "refused",
        };
        write!(f, "callout {why} ({})", self.0)
    }
}

/// An outgoing HTTP request through an Envoy cluster.
pub struct Callout<'a> {
    pub cluster: &'a str,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub body: &'a [u8],
    pub timeout_ms: u64,
}

impl Callout<'_> {
    fn raw_headers(&self) -> Vec<Header> {
        self.headers
            .iter()
            .map(|(k, v)| Header::of(k.as_bytes(), v))
            .collect()
    }
}

/// Envoy's `DynamicModuleHttpFilterConfig`: lives until our config's destroy hook returns. Its
/// metric and callout callbacks are what the module's shared state calls from any thread.
#[derive(Clone, Copy, Debug)]
pub struct ConfigHandle(*mut c_void);

// SAFETY: Envoy's filter config outlives every use we make of it (the plugin holding it is
// dropped in the config's destroy hook, and the tick thread is joined there); counters and
// gauges are atomic in Envoy; callouts and the scheduler are used from the main thread only
// (the scheduler's commit is documented as callable from any thread).
unsafe impl Send for ConfigHandle {}
// SAFETY: as above.
unsafe impl Sync for ConfigHandle {}

impl ConfigHandle {
    /// # Safety
    /// `ptr` is the one Envoy handed to the hook that makes this handle.
    pub(crate) unsafe fn new(ptr: *mut c_void) -> ConfigHandle {
        ConfigHandle(ptr)
    }

    /// Defines a counter (no labels); its id, or `None` when Envoy refused.
    pub fn define_counter(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: valid config pointer; name valid for the call; no labels.
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.0,
                Buf::of(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (r == METRICS_SUCCESS).then_some(id)
    }

    /// Defines a counter vector: one counter per set of values of `labels` (Envoy tags), made
    /// when first incremented, so after stat creation is frozen too.
    pub fn define_counter_vec(&self, name: &str, labels: &[&str]) -> Option<usize> {
        let mut names: Vec<Buf> = labels.iter().map(|l| Buf::of(l.as_bytes())).collect();
        let mut id = 0usize;
        // SAFETY: valid config pointer; name and label buffers valid for the call.
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.0,
                Buf::of(name.as_bytes()),
                names.as_mut_ptr(),
                names.len(),
                &mut id,
            )
        };
        (r == METRICS_SUCCESS).then_some(id)
    }

    /// Increments the counter of vector `id` with these label values (as many as its labels).
    pub fn increment_counter_vec(&self, id: usize, values: &[&str], n: u64) {
        let mut values: Vec<Buf> = values.iter().map(|v| Buf::of(v.as_bytes())).collect();
        // SAFETY: valid config pointer; value buffers valid for the call.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.0,
                id,
                values.as_mut_ptr(),
                values.len(),
                n,
            );
        }
    }

    pub fn define_gauge(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: as for counters.
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_gauge(
                self.0,
                Buf::of(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (r == METRICS_SUCCESS).then_some(id)
    }

    pub fn increment_counter(&self, id: usize, n: u64) {
        // SAFETY: valid config pointer; no labels.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.0,
                id,
                std::ptr::null_mut(),
                0,
                n,
            );
        }
    }

    pub fn set_gauge(&self, id: usize, value: u64) {
        // SAFETY: valid config pointer; no labels.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.0,
                id,
                std::ptr::null_mut(),
                0,
                value,
            );
        }
    }

    /// Starts a callout on the main thread; the answer arrives in the config's callout hook.
    pub fn callout(&self, call: &Callout<'_>) -> Result<u64, CalloutRefused> {
        let mut headers = call.raw_headers();
        let mut id = 0u64;
        // SAFETY: valid config pointer; every buffer lives through the call (Envoy copies).
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &mut id,
                Buf::of(call.cluster.as_bytes()),
                headers.as_mut_ptr(),
                headers.len(),
                Buf::of(call.body),
                call.timeout_ms,
            )
        };
        if r == CALLOUT_INIT_SUCCESS {
            Ok(id)
        } else {
            Err(CalloutRefused(r))
        }
    }

    /// Opens a streamed HTTP request on the main thread (headers sent, the request left open:
    /// no timeout); its response arrives in the config's `http_stream_*` hooks.
    pub fn start_stream(&self, call: &Callout<'_>) -> Result<u64, CalloutRefused> {
        let mut headers = call.raw_headers();
        let mut id = 0u64;
        // SAFETY: valid config pointer; every buffer lives through the call (Envoy copies).
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_config_start_http_stream(
                self.0,
                &mut id,
                Buf::of(call.cluster.as_bytes()),
                headers.as_mut_ptr(),
                headers.len(),
                Buf::of(call.body),
                false,
                call.timeout_ms,
            )
        };
        if r == CALLOUT_INIT_SUCCESS {
            Ok(id)
        } else {
            Err(CalloutRefused(r))
        }
    }

    /// Sends request data on an open stream (main thread); false if Envoy no longer has it.
    pub fn stream_send(&self, id: u64, data: &[u8], end: bool) -> bool {
        // SAFETY: valid config pointer; the buffer lives through the call (Envoy copies).
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_stream_send_data(
                self.0,
                id,
                Buf::of(data),
                end,
            )
        }
    }

    /// Resets an open stream (main thread); Envoy may call the reset hook inline.
    pub fn stream_reset(&self, id: u64) {
        // SAFETY: valid config pointer; an unknown id is ignored by Envoy.
        unsafe { envoy_dynamic_module_callback_http_filter_config_reset_http_stream(self.0, id) }
    }

    /// A way to run code on the main thread from another thread.
    pub fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: valid config pointer.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(Scheduler(ptr))
    }
}

/// Envoy's config scheduler: `commit` from any thread runs the config's scheduled hook on the
/// main thread. Deleted on drop.
pub struct Scheduler(*mut c_void);

// SAFETY: Envoy documents the scheduler for use from threads the module manages.
unsafe impl Send for Scheduler {}
// SAFETY: as above.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: the scheduler lives until drop.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event_id)
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: created by scheduler_new, deleted once.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// Envoy's `DynamicModuleHttpFilter` of one stream: valid during this stream's hooks, on its
/// worker thread only (not `Send`).
#[derive(Clone, Copy, Debug)]
pub struct FilterHandle(*mut c_void);

impl FilterHandle {
    /// # Safety
    /// `ptr` is the one Envoy handed to the hook that makes this handle.
    pub(crate) unsafe fn new(ptr: *mut c_void) -> FilterHandle {
        FilterHandle(ptr)
    }

    /// The raw stream pointer, for the other declaration files of `ffi`.
    pub(super) fn ptr(self) -> *mut c_void {
        self.0
    }

    /// Identifies the stream while it lives (its address).
    pub fn key(&self) -> usize {
        self.0 as usize
    }

    /// The first value of a header, if present and UTF-8.
    pub fn header(&self, map: HeaderMap, name: &str) -> Option<String> {
        let mut value = Buf::NULL;
        // SAFETY: valid filter pointer during its hooks; `value` is written by Envoy.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.0,
                map as u32,
                Buf::of(name.as_bytes()),
                &mut value,
                0,
                std::ptr::null_mut(),
            )
        };
        if !found || value.ptr.is_null() {
            return None;
        }
        // SAFETY: Envoy's buffer is valid until the end of this hook; we copy it now.
        let bytes = unsafe { value.bytes() };
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }

    /// Sets (replacing) a header, or removes it with `None`.
    pub fn set_header(&self, map: HeaderMap, name: &str, value: Option<&str>) -> bool {
        let value = value.map_or(Buf::NULL, |v| Buf::of(v.as_bytes()));
        // SAFETY: valid filter pointer; buffers live through the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                map as u32,
                Buf::of(name.as_bytes()),
                value,
            )
        }
    }

    pub fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let mut raw: Vec<Header> = headers
            .iter()
            .map(|(k, v)| Header::of(k.as_bytes(), v.as_bytes()))
            .collect();
        // SAFETY: valid filter pointer; buffers live through the call (Envoy copies).
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                raw.as_mut_ptr(),
                raw.len(),
                Buf::of(body),
                Buf::of(details.as_bytes()),
            )
        }
    }

    /// Resumes a request held by `StopAllIterationAndBuffer`.
    pub fn continue_decoding(&self) {
        // SAFETY: valid filter pointer.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    /// A way to run this stream's scheduled hook on its worker thread from another thread.
    pub fn scheduler(&self) -> Option<StreamScheduler> {
        // SAFETY: valid filter pointer.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(StreamScheduler(ptr))
    }

    pub fn attribute(&self, id: Attribute) -> Option<String> {
        let mut value = Buf::NULL;
        // SAFETY: valid filter pointer; `value` is written by Envoy.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0, id as u32, &mut value,
            )
        };
        if !found {
            return None;
        }
        // SAFETY: valid until the end of this hook; copied now.
        let bytes = unsafe { value.bytes() };
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }

    /// Starts a callout from this stream; the answer arrives in its callout hook.
    pub fn callout(&self, call: &Callout<'_>) -> Result<u64, CalloutRefused> {
        let mut headers = call.raw_headers();
        let mut id = 0u64;
        // SAFETY: valid filter pointer; every buffer lives through the call (Envoy copies).
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_http_callout(
                self.0,
                &mut id,
                Buf::of(call.cluster.as_bytes()),
                headers.as_mut_ptr(),
                headers.len(),
                Buf::of(call.body),
                call.timeout_ms,
            )
        };
        if r == CALLOUT_INIT_SUCCESS {
            Ok(id)
        } else {
            Err(CalloutRefused(r))
        }
    }
}

/// Envoy's scheduler of one stream: `commit` from any thread runs the stream's scheduled hook on
/// its worker thread (nothing, once the stream is gone). Deleted on drop.
pub struct StreamScheduler(*mut c_void);

// SAFETY: Envoy documents the scheduler for use from threads the module manages; it outlives
// its stream safely (a commit after the stream ended is dropped by Envoy).
unsafe impl Send for StreamScheduler {}
// SAFETY: as above.
unsafe impl Sync for StreamScheduler {}

impl StreamScheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: the scheduler lives until drop.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event_id) }
    }
}

impl Drop for StreamScheduler {
    fn drop(&mut self) {
        // SAFETY: created by scheduler_new, deleted once.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}

/// A callout's answer, copied out of Envoy's buffers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The stream was reset (or the response exceeded the buffer limit): no response.
    pub failed: bool,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
