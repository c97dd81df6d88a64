//! The core's host traits over the dynamic-module ABI: shared data in process memory
//! ([`crate::store`]), Polaris calls as Envoy HTTP callouts (gRPC framed by [`crate::grpc`]),
//! counters as Envoy stats defined on the filter config.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use polaris_wasm::core::host::{
    Calls, Clock, GrpcCall, HostError, HttpCall, Metrics, Pacing, Properties, Store, StoreError,
    Stream,
};

use crate::ffi::abi::{Attribute, Callout, ConfigHandle, FilterHandle, HeaderMap, StreamScheduler};
use crate::grpc;
use crate::grpc_stream::GrpcStreams;
use crate::rule_stats::{self, RuleVecs};
use crate::store;

/// What a plugin's hosts share across threads: Envoy's filter config, the Polaris cluster, and
/// the stats defined on the main thread (by name, for the request threads' workers).
pub struct Shared {
    pub config: ConfigHandle,
    pub cluster: String,
    counters: Mutex<HashMap<String, usize>>,
    /// The per-rule rate-limit counters, defined with the config (labelled by rule).
    rule_vecs: RuleVecs,
    gauges: Mutex<HashMap<String, usize>>,
    /// Envoy is done with the filter config: no more callouts from it.
    closed: AtomicBool,
    /// Held streams' schedulers, by stream: the timer thread wakes them (their thread's worker
    /// then ticks if due, resuming queued requests), as a worker thread has no timer of its own.
    pub wakers: Mutex<HashMap<usize, StreamScheduler>>,
    /// The tick period each follower wants now (ms), by follower: shorter while it has
    /// requests queued.
    pub periods: Mutex<HashMap<u64, u64>>,
    /// The timer thread, woken when a follower wants a shorter period than it sleeps for.
    pub timer: Mutex<Option<std::thread::Thread>>,
    /// A load balancer put a service on the watch list: the leader ticks now, not at its period.
    pub tick_now: AtomicBool,
}

impl Shared {
    pub fn new(config: ConfigHandle, cluster: String) -> Shared {
        Shared {
            config,
            cluster,
            counters: Mutex::new(HashMap::new()),
            rule_vecs: RuleVecs::define(&config),
            gauges: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            wakers: Mutex::new(HashMap::new()),
            periods: Mutex::new(HashMap::new()),
            timer: Mutex::new(None),
            tick_now: AtomicBool::new(false),
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// A counter of the native build only (not in the core's list), defined now.
    pub fn define_own_counter(&self, name: &str) -> Option<usize> {
        self.config.define_counter(name)
    }
}

/// What a call's answer is read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Grpc,
    Http,
}

/// A thread's live streams by their exchange id: what `resume_request` resumes (and the flag that
/// tells the stream it no longer holds its data).
pub type Streams = Rc<RefCell<FxHashMap<u32, (FilterHandle, Rc<Cell<bool>>)>>>;

/// One worker's host. The main thread's (`main`) defines the stats and calls from the filter
/// config; a request thread's calls from the stream whose hook is running.
pub struct Native {
    shared: Arc<Shared>,
    main: bool,
    /// This follower's id among the plugin's (0: the leader).
    id: u64,
    /// The tick period the core asked for (ms).
    tick_ms: Arc<AtomicU64>,
    streams: Streams,
    stream: Cell<Option<FilterHandle>>,
    /// Calls out, by the stream that made them (callout ids are per stream) and token: how to
    /// read the answer.
    pending: RefCell<HashMap<(usize, u32), CallKind>>,
    /// The leader's gRPC streams (the main thread's host only).
    grpc_streams: GrpcStreams,
    /// Per-rule counters this worker defined: the vector and its label values, by our id.
    labelled: RefCell<Vec<(usize, [String; 3])>>,
    /// Another live filter config of this process that calls and counts for this leader once
    /// its own config is destroyed (its provider's deregistration goes out through it).
    via: OnceCell<Arc<Shared>>,
}

impl Native {
    /// The leader's host; `tick_ms` is shared with the timer thread.
    pub fn main(shared: Arc<Shared>, tick_ms: Arc<AtomicU64>) -> Native {
        Native::new(shared, true, 0, tick_ms)
    }

    /// Follower `id`'s host.
    pub fn requests(shared: Arc<Shared>, id: u64) -> Native {
        Native::new(shared, false, id, Arc::new(AtomicU64::new(0)))
    }

    fn new(shared: Arc<Shared>, main: bool, id: u64, tick_ms: Arc<AtomicU64>) -> Native {
        Native {
            shared,
            main,
            id,
            tick_ms,
            streams: Rc::new(RefCell::new(FxHashMap::default())),
            stream: Cell::new(None),
            pending: RefCell::new(HashMap::new()),
            grpc_streams: GrpcStreams::default(),
            labelled: RefCell::new(Vec::new()),
            via: OnceCell::new(),
        }
    }

    /// The tick period the core asked for last.
    pub fn tick_period(&self) -> Duration {
        Duration::from_millis(self.tick_ms.load(Ordering::Relaxed).max(1))
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// This leader's config is being destroyed: from now on its calls go out from `via`'s
    /// config (answers come back in `via`'s callout hook) and its counters count there.
    pub fn adopt(&self, via: Arc<Shared>) {
        // Calls out from our own config are cancelled with it: their ids are the adopter's now.
        self.pending.borrow_mut().clear();
        let _ = self.via.set(via);
    }

    /// The counter of `via` with the name our counter `id` has.
    fn adopted_counter(&self, via: &Shared, id: usize) -> Option<usize> {
        let known = lock(&self.shared.counters);
        let name = known.iter().find(|(_, v)| **v == id).map(|(k, _)| k)?;
        lock(&via.counters).get(name).copied()
    }

    pub fn grpc_streams(&self) -> &GrpcStreams {
        &self.grpc_streams
    }

    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// The stream whose hook runs the core now (its calls go out from it), or none.
    pub fn enter(&self, stream: Option<FilterHandle>) {
        self.stream.set(stream);
    }

    /// The token of callout `id` of `stream` (`None`: the filter config's) and how to read
    /// it, if we made it.
    pub fn take_call(&self, stream: Option<FilterHandle>, id: u64) -> Option<(u32, CallKind)> {
        let token = u32::try_from(id).ok()?;
        let kind = self.pending.borrow_mut().remove(&(key(stream), token))?;
        Some((token, kind))
    }

    /// A stream ended: its calls will not be answered.
    pub fn forget(&self, stream: FilterHandle) {
        let k = stream.key();
        self.pending.borrow_mut().retain(|(s, _), _| *s != k);
    }

    /// Calls from the filter config are the main thread's, while Envoy still has the config.
    fn config_calls(&self) -> Result<(), HostError> {
        if !self.main {
            return Err(HostError("gRPC streams are the leader's only".into()));
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(HostError("the filter config is gone".into()));
        }
        Ok(())
    }

    fn dispatch(&self, call: &Callout<'_>, kind: CallKind) -> Result<u32, HostError> {
        let stream = self.stream.get();
        // An adopted leader calls from the adopting config (its own is gone).
        let config = self.via.get().unwrap_or(&self.shared);
        let sent = match (self.main, stream) {
            (true, _) if config.closed.load(Ordering::Acquire) => {
                return Err(HostError("the filter config is gone".into()))
            }
            (true, _) => config.config.callout(call),
            (false, Some(s)) => s.callout(call),
            (false, None) => return Err(HostError("no stream to call from".into())),
        };
        let stream = if self.main { None } else { stream };
        let id = sent.map_err(|e| HostError(e.to_string()))?;
        let token =
            u32::try_from(id).map_err(|_| HostError(format!("callout id {id} out of range")))?;
        self.pending.borrow_mut().insert((key(stream), token), kind);
        Ok(token)
    }
}

/// A gRPC request's headers to `cluster`.
fn grpc_headers<'a>(cluster: &'a str, path: &'a str) -> Vec<(&'a str, &'a [u8])> {
    vec![
        (":method", b"POST"),
        (":path", path.as_bytes()),
        (":authority", cluster.as_bytes()),
        ("content-type", b"application/grpc"),
        ("te", b"trailers"),
    ]
}

fn key(stream: Option<FilterHandle>) -> usize {
    stream.map_or(0, |s| s.key())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Store for Native {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        store::get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        store::set(key, value, cas)
    }
}

impl Clock for Native {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

impl Calls for Native {
    fn grpc_unary(&self, call: GrpcCall<'_>) -> Result<u32, HostError> {
        let cluster = grpc::cluster_of(call.upstream).unwrap_or(&self.shared.cluster);
        let path = format!("/{}/{}", call.service, call.method);
        let mut headers = grpc_headers(cluster, &path);
        headers.extend_from_slice(call.metadata);
        let body = grpc::frame(call.message);
        let callout = Callout {
            cluster,
            headers: &headers,
            body: &body,
            timeout_ms: millis(call.timeout),
        };
        self.dispatch(&callout, CallKind::Grpc)
    }

    /// The leader's only (the limiter streams): an Envoy stream from the filter config.
    fn grpc_stream_open(
        &self,
        upstream: &str,
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
    ) -> Result<u32, HostError> {
        self.config_calls()?;
        let cluster = grpc::cluster_of(upstream).unwrap_or(&self.shared.cluster);
        let path = format!("/{service}/{method}");
        let mut headers = grpc_headers(cluster, &path);
        headers.extend_from_slice(metadata);
        let callout = Callout {
            cluster,
            headers: &headers,
            body: &[],
            timeout_ms: 0,
        };
        self.grpc_streams.open(&self.shared.config, &callout)
    }

    fn grpc_stream_send(&self, token: u32, message: &[u8], end: bool) -> Result<(), HostError> {
        self.config_calls()?;
        self.grpc_streams
            .send(&self.shared.config, token, message, end)
    }

    fn grpc_stream_close(&self, token: u32) -> Result<(), HostError> {
        self.config_calls()?;
        self.grpc_streams.close(&self.shared.config, token)
    }

    fn http_call(&self, call: HttpCall<'_>) -> Result<u32, HostError> {
        let headers: Vec<(&str, &[u8])> = call
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_bytes()))
            .collect();
        let callout = Callout {
            cluster: call.cluster,
            headers: &headers,
            body: call.body.unwrap_or_default(),
            timeout_ms: millis(call.timeout),
        };
        self.dispatch(&callout, CallKind::Http)
    }
}

fn stat_id(id: usize) -> Result<u32, HostError> {
    u32::try_from(id).map_err(|_| HostError(format!("stat id {id} out of range")))
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics for Native {
    /// The main thread defines (Envoy freezes stat creation after configuration); request
    /// threads look the name up.
    fn define_counter(&self, name: &str) -> Result<u32, HostError> {
        if self.via.get().is_some() {
            return Err(HostError(format!(
                "counter {name}: the filter config is gone"
            )));
        }
        if let Some((vec, labels)) = rule_stats::parse(name) {
            let vec = self
                .shared
                .rule_vecs
                .id(vec)
                .ok_or_else(|| HostError(format!("Envoy refused counter {name}")))?;
            let mut labelled = self.labelled.borrow_mut();
            let id = rule_stats::FIRST_ID
                .checked_add(u32::try_from(labelled.len()).unwrap_or(u32::MAX))
                .ok_or_else(|| HostError(format!("too many rule counters for {name}")))?;
            labelled.push((vec, labels));
            return Ok(id);
        }
        let mut known = lock(&self.shared.counters);
        if let Some(id) = known.get(name) {
            return stat_id(*id);
        }
        if !self.main {
            return Err(HostError(format!("counter {name} not defined")));
        }
        let id = self
            .shared
            .config
            .define_counter(name)
            .ok_or_else(|| HostError(format!("Envoy refused counter {name}")))?;
        known.insert(name.to_owned(), id);
        stat_id(id)
    }

    fn add(&self, id: u32, n: u64) {
        if let Some(via) = self.via.get() {
            let theirs = usize::try_from(id)
                .ok()
                .and_then(|id| self.adopted_counter(via, id));
            if let Some(theirs) = theirs {
                via.config.increment_counter(theirs, n);
            }
            return;
        }
        if let Some(i) = id.checked_sub(rule_stats::FIRST_ID) {
            let labelled = self.labelled.borrow();
            if let Some((vec, [ns, svc, rule])) =
                usize::try_from(i).ok().and_then(|i| labelled.get(i))
            {
                self.shared
                    .config
                    .increment_counter_vec(*vec, &[ns, svc, rule], n);
            }
            return;
        }
        if let Ok(id) = usize::try_from(id) {
            self.shared.config.increment_counter(id, n);
        }
    }

    fn define_gauge(&self, name: &str) -> Result<u32, HostError> {
        if self.via.get().is_some() {
            return Err(HostError(format!(
                "gauge {name}: the filter config is gone"
            )));
        }
        let mut known = lock(&self.shared.gauges);
        if let Some(id) = known.get(name) {
            return stat_id(*id);
        }
        if !self.main {
            return Err(HostError(format!("gauge {name} not defined")));
        }
        let id = self
            .shared
            .config
            .define_gauge(name)
            .ok_or_else(|| HostError(format!("Envoy refused gauge {name}")))?;
        known.insert(name.to_owned(), id);
        stat_id(id)
    }

    fn set_gauge(&self, id: u32, value: u64) {
        if self.via.get().is_some() {
            return;
        }
        if let Ok(id) = usize::try_from(id) {
            self.shared.config.set_gauge(id, value);
        }
    }
}

impl Pacing for Native {
    /// Resumes a held stream of this thread (the core's queue is per thread, as its streams).
    fn resume_request(&self, id: u32) -> Result<(), HostError> {
        let found = self.streams.borrow().get(&id).cloned();
        let Some((stream, held)) = found else {
            return Err(HostError(format!("stream {id} is gone")));
        };
        held.set(false);
        stream.continue_decoding();
        Ok(())
    }

    /// The leader's timer reads it; a follower's is its lazy tick's period, and the timer
    /// wakes held streams at the shortest any follower wants.
    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        let ms = millis(period).max(1);
        self.tick_ms.store(ms, Ordering::Relaxed);
        if !self.main {
            let before = lock(&self.shared.periods).insert(self.id, ms);
            if before.is_none_or(|b| ms < b) {
                if let Some(t) = lock(&self.shared.timer).as_ref() {
                    t.unpark();
                }
            }
        }
        Ok(())
    }

    fn wake_leader(&self) {
        self.shared.tick_now.store(true, Ordering::Release);
        if let Some(t) = lock(&self.shared.timer).as_ref() {
            t.unpark();
        }
    }
}

impl Properties for Native {
    /// Envoy's node is not readable through this ABI outside a stream: a location comes from
    /// the plugin's `nearby.location`.
    fn property(&self, _path: &[&str]) -> Option<Vec<u8>> {
        None
    }
}

/// One HTTP stream, during one of its hooks.
pub struct NativeStream(pub FilterHandle);

fn refused(what: &str, name: &str) -> HostError {
    HostError(format!("Envoy refused to {what} {name}"))
}

impl Stream for NativeStream {
    fn request_header(&mut self, name: &str) -> Option<String> {
        self.0.header(HeaderMap::Request, name)
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.0
            .set_header(HeaderMap::Request, name, Some(value))
            .then_some(())
            .ok_or_else(|| refused("set", name))
    }

    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.0
            .set_header(HeaderMap::Response, name, Some(value))
            .then_some(())
            .ok_or_else(|| refused("set", name))
    }

    fn remove_request_header(&mut self, name: &str) -> Result<(), HostError> {
        // Removing an absent header is not a failure.
        self.0.set_header(HeaderMap::Request, name, None);
        Ok(())
    }

    fn source_address(&mut self) -> Option<String> {
        self.0.attribute(Attribute::SourceAddress)
    }

    fn response_header(&mut self, name: &str) -> Option<String> {
        self.0.header(HeaderMap::Response, name)
    }

    fn stream_property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        match path {
            ["response", "code_details"] => self
                .0
                .attribute(Attribute::ResponseCodeDetails)
                .map(String::into_bytes),
            _ => None,
        }
    }

    fn destination_address(&mut self) -> Option<String> {
        self.0.attribute(Attribute::DestinationAddress)
    }

    /// `upstream_handover: override_host`: the pick is Envoy's override host, which the module's
    /// own cluster (`envoy/envoy-native-cluster.yaml`) finds among its hosts, waiting for one it
    /// does not hold yet; nothing is written, so a client-sent header reaches no cluster that
    /// reads it.
    fn set_override_host(&mut self, upstream: &str) -> Result<(), HostError> {
        self.0
            .set_override_host(upstream, false)
            .then_some(())
            .ok_or_else(|| refused("hand over", upstream))
    }
}
