//! Our own export dispatch: the `proxy_on_*` callbacks Envoy enters the VM through.
//!
//! The SDK's dispatcher creates, boxes and deletes a context object for every HTTP stream, which
//! costs a VM entry and an allocation each way. Here a stream is only an id: a request the core
//! decides at once keeps nothing, and only a stream the core still needs (waiting for a first
//! discovery, or for the response to feed the breakers or add the trace) is held until its
//! response or its end. `make wasm` exports these under the ABI's names in place of the SDK's
//! (`scripts/wasm_exports.py`); the SDK stays for host calls, types and the allocator.
//!
//! Two builds come out of one compile: `polaris_wasm.wasm` exports the response and stream-end
//! callbacks; `polaris_wasm_lean.wasm` exports neither (one VM entry per request fewer each, ~1.5 %
//! of Envoy's CPU apiece) and refuses the features that need them. The script marks which is
//! which in [`FLAVOR`].

use std::cell::RefCell;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};
use rustc_hash::FxHashMap;

use super::abi::{grpc_result, Wasm, WasmStream};
use crate::config::{Config, Handover};
use crate::core::host::Clock;
use crate::core::{Exchange, LocalReply, Verdict, Worker};

thread_local! {
    static VM: RefCell<Vm> = RefCell::new(Vm::default());
}

/// One thread's VM: its plugin's root contexts and the streams the core still needs.
///
/// Without `proxy_on_context_create` (a VM entry per stream) a stream does not say which root it
/// belongs to: new streams go to the newest configuration. A listener update that keeps the VM
/// adds a root while the old one drains (its provider still leaves through `on_done`); two
/// filters with different configurations need a `vm_config.vm_id` each.
#[derive(Default)]
struct Vm {
    /// Root contexts in the order they were configured.
    roots: Vec<(u32, Worker<Wasm>)>,
    /// Keyed by Envoy's context ids (not chosen by clients), looked up on every response.
    held: FxHashMap<u32, Held>,
    /// gRPC calls a held stream is waiting on, by token.
    callouts: FxHashMap<u32, u32>,
}

/// A stream the core still needs, and the root that decided it.
struct Held {
    root: u32,
    exchange: Exchange,
}

impl Vm {
    /// The worker of the root context `id`.
    fn worker(&mut self, id: u32) -> Option<&mut Worker<Wasm>> {
        self.roots
            .iter_mut()
            .find(|(root, _)| *root == id)
            .map(|(_, w)| w)
    }

    /// The root new streams go to.
    fn newest(&mut self) -> Option<(u32, &mut Worker<Wasm>)> {
        self.roots.last_mut().map(|(id, w)| (*id, w))
    }

    /// Keeps the stream while the core needs it, and notes the calls it waits on. The lean
    /// build gets no response or stream end, so it keeps a stream only for its calls' answers
    /// (anything more would never be let go).
    fn hold(&mut self, stream: u32, root: u32, exchange: Exchange) {
        let calls = exchange.pending_calls();
        let later = exchange.wants_response() || exchange.wants_end();
        if !calls.is_empty() || (later && !lean()) {
            for token in calls {
                self.callouts.insert(token, stream);
            }
            self.held.insert(stream, Held { root, exchange });
        }
    }

    /// Envoy is done with root `id`: it gets no more callbacks.
    fn forget_root(&mut self, id: u32) {
        self.roots.retain(|(root, _)| *root != id);
    }
}

/// Which callbacks the module exports: `scripts/wasm_exports.py --lean` rewrites this marker in
/// the built module's data to `polaris-flavor:lean`.
#[used]
static FLAVOR: [u8; 19] = *b"polaris-flavor:full";

/// Whether this build leaves out the response and stream-end callbacks.
fn lean() -> bool {
    // SAFETY: a plain read of an initialised static; volatile, so the compiler cannot fold the
    // value it was compiled with (the built module's data is rewritten after compilation).
    let flavor = unsafe { std::ptr::read_volatile(&FLAVOR) };
    flavor.ends_with(b":lean")
}

/// The first configured feature the lean build cannot serve: each needs the response or the
/// stream's end.
fn needs_full_build(config: &Config) -> Option<&'static str> {
    if config.breaker.is_some() {
        Some("circuit_breaker")
    } else if config.debug_trace {
        Some("debug_trace")
    } else if config.provider.is_some() {
        Some("provider")
    } else {
        None
    }
}

fn with_vm<R>(f: impl FnOnce(&mut Vm) -> R) -> Option<R> {
    VM.with(|vm| match vm.try_borrow_mut() {
        Ok(mut vm) => Some(f(&mut vm)),
        Err(_) => {
            log::error!("re-entered the VM dispatch: callback dropped");
            None
        }
    })
}

fn send(context_id: u32, reply: &LocalReply) {
    let mut headers = vec![("x-polaris-reason", reply.reason)];
    if !reply.headers.iter().any(|(k, _)| k == "content-type") {
        headers.push(("content-type", "text/plain"));
    }
    headers.extend(reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Err(e) =
        hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
    {
        log::warn!("cannot send local reply on context {context_id}: {e:?}");
    }
}

#[no_mangle]
pub extern "C" fn polaris_on_vm_start(_root: u32, _vm_configuration_size: usize) -> bool {
    proxy_wasm::set_log_level(LogLevel::Info);
    true
}

#[no_mangle]
pub extern "C" fn polaris_on_configure(root: u32, _plugin_configuration_size: usize) -> bool {
    let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default();
    with_vm(|vm| configure(vm, root, &bytes)).unwrap_or(false)
}

fn configure(vm: &mut Vm, root: u32, bytes: &[u8]) -> bool {
    let config = match Config::parse(bytes) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return false;
        }
    };
    let mut config = config;
    config.rate_limit_rules.no_stream_ends = lean();
    if let Some(field) = needs_full_build(&config).filter(|_| lean()) {
        log::error!(
            "invalid plugin configuration: field `{field}`: needs the response path, which \
             polaris_wasm_lean.wasm leaves out: use polaris_wasm.wasm"
        );
        return false;
    }
    if config.upstream_handover != Handover::Header {
        log::error!(
            "invalid plugin configuration: field `upstream_handover`: `override_host` and \
             `load_balancer` need the native module's own cluster; the wasm filter hands picks \
             over as a header"
        );
        return false;
    }
    let here = &config.nearby.location;
    log::info!(
        "configured: Polaris cluster {}, namespace {}, refresh every {:?}, location {}/{}/{}",
        config.polaris_cluster,
        config.namespace,
        config.refresh_interval,
        here.region,
        here.zone,
        here.campus
    );
    let seed = Wasm.now_ms() ^ (u64::from(root) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    let worker = match Worker::new(Wasm, config, seed) {
        Ok(w) => w,
        Err(e) => {
            log::error!("{}", e.0);
            return false;
        }
    };
    if let Err(e) = hostcalls::set_tick_period(worker.tick_period()) {
        log::error!("cannot start the refresh timer: {e:?}");
        return false;
    }
    vm.forget_root(root);
    if !vm.roots.is_empty() {
        log::warn!(
            "vm_config: a second plugin configuration in this VM: new requests go to this one \
             (a listener update does this; two filters with different configurations need a \
             vm_config.vm_id each)"
        );
    }
    vm.roots.push((root, worker));
    true
}

#[no_mangle]
pub extern "C" fn polaris_on_tick(root: u32) {
    with_vm(|vm| {
        if let Some(worker) = vm.worker(root) {
            worker.on_tick();
            // Resuming a queued stream switched the host calls to it; switch back.
            if let Err(e) = hostcalls::set_effective_context(root) {
                log::warn!("root context {root}: cannot switch back: {e:?}");
            }
        }
    });
}

#[no_mangle]
pub extern "C" fn polaris_on_request_headers(
    context_id: u32,
    _num_headers: usize,
    _end_of_stream: bool,
) -> Action {
    #[cfg(feature = "crash-hook")]
    crash_if_asked();
    with_vm(|vm| {
        let Some((root, worker)) = vm.newest() else {
            return Action::Continue;
        };
        let mut exchange = Exchange::new(context_id);
        let verdict = exchange.on_request(worker, &mut WasmStream);
        let action = match &verdict {
            Verdict::Forward => Action::Continue,
            Verdict::Reply(reply) => {
                send(context_id, reply);
                Action::Pause
            }
            Verdict::Wait => Action::Pause,
        };
        vm.hold(context_id, root, exchange);
        action
    })
    .unwrap_or(Action::Continue)
}

#[no_mangle]
pub extern "C" fn polaris_on_response_headers(
    context_id: u32,
    _num_headers: usize,
    _end_of_stream: bool,
) -> Action {
    with_vm(|vm| {
        let Some(mut held) = vm.held.remove(&context_id) else {
            return;
        };
        if let Some(worker) = vm.worker(held.root) {
            held.exchange.on_response(worker, &mut WasmStream);
        }
        if held.exchange.wants_end() {
            vm.held.insert(context_id, held);
        }
    });
    Action::Continue
}

/// A stream's end (also a root's, on a listener update: its answer says whether it may go).
#[no_mangle]
pub extern "C" fn polaris_on_done(context_id: u32) -> bool {
    with_vm(|vm| {
        if let Some(mut held) = vm.held.remove(&context_id) {
            vm.callouts.retain(|_, s| *s != context_id);
            if let Some(worker) = vm.worker(held.root) {
                held.exchange.on_end(worker);
            }
            return true;
        }
        let done = vm.worker(context_id).is_none_or(Worker::on_done);
        if done {
            vm.forget_root(context_id);
        }
        done
    })
    .unwrap_or(true)
}

/// A unary gRPC answer (or a failure: `status` non-zero, no body).
fn grpc_answer(root: u32, token: u32, status: u32, size: usize) {
    with_vm(|vm| match vm.callouts.remove(&token) {
        Some(stream) => stream_answer(vm, stream, token, status, size),
        None => {
            let result = grpc_result(status, size);
            if let Some(worker) = vm.worker(root) {
                worker.on_call_result(token, result);
                if worker.done_leaving(token) {
                    if let Err(e) = hostcalls::done() {
                        log::warn!("root context {root}: done() refused: {e:?}");
                    }
                    vm.forget_root(root);
                }
            }
        }
    });
}

/// An answer to a call a held stream made: the stream's decision when it is complete.
fn stream_answer(vm: &mut Vm, stream: u32, token: u32, status: u32, size: usize) {
    let Some(Held { root, mut exchange }) = vm.held.remove(&stream) else {
        return;
    };
    if let Err(e) = hostcalls::set_effective_context(stream) {
        // The client left: nothing to resume.
        log::debug!("stream {stream} is gone: {e:?}");
        return;
    }
    let result = grpc_result(status, size);
    let Some(worker) = vm.worker(root) else {
        return;
    };
    let verdict = exchange.on_call_result(worker, &mut WasmStream, token, result);
    match &verdict {
        Some(Verdict::Forward) => {
            if let Err(e) = hostcalls::resume_http_request() {
                log::warn!("cannot resume request on context {stream}: {e:?}");
            }
        }
        Some(Verdict::Reply(reply)) => send(stream, reply),
        Some(Verdict::Wait) | None => {}
    }
    vm.hold(stream, root, exchange);
}

/// A message on one of the leader's polaris-limiter streams; false if `token` is not one.
fn stream_message(root: u32, token: u32, size: usize) -> bool {
    with_vm(|vm| {
        let Some(worker) = vm.worker(root).filter(|w| w.owns_stream(token)) else {
            return false;
        };
        let message = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        worker.on_stream_message(token, &message);
        true
    })
    .unwrap_or(false)
}

/// The end of one of the leader's polaris-limiter streams; false if `token` is not one.
fn stream_close(root: u32, token: u32, status: u32) -> bool {
    with_vm(|vm| {
        let Some(worker) = vm.worker(root).filter(|w| w.owns_stream(token)) else {
            return false;
        };
        let message = hostcalls::get_grpc_status()
            .ok()
            .and_then(|(_, m)| m)
            .filter(|m| !m.is_empty());
        worker.on_stream_close(token, status, message);
        true
    })
    .unwrap_or(false)
}

#[no_mangle]
pub extern "C" fn polaris_on_grpc_receive(root: u32, token: u32, response_size: usize) {
    if !stream_message(root, token, response_size) {
        grpc_answer(root, token, 0, response_size);
    }
}

#[no_mangle]
pub extern "C" fn polaris_on_grpc_close(root: u32, token: u32, status_code: u32) {
    if stream_close(root, token, status_code) {
        return;
    }
    // A unary call that already answered closes with nothing more to say.
    if status_code != 0 {
        grpc_answer(root, token, status_code, 0);
    }
}

#[no_mangle]
pub extern "C" fn polaris_on_grpc_receive_initial_metadata(_root: u32, _token: u32, _n: u32) {}

#[no_mangle]
pub extern "C" fn polaris_on_grpc_receive_trailing_metadata(_root: u32, _token: u32, _n: u32) {}

#[no_mangle]
pub extern "C" fn polaris_on_http_call_response(
    root: u32,
    token: u32,
    _num_headers: usize,
    body_size: usize,
    _num_trailers: usize,
) {
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| s.trim().parse::<u32>().ok());
    // Only Envoy's own 503 needs its body read (it names why the connection failed).
    let body = if status == Some(503) {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(4096))
            .ok()
            .flatten()
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    with_vm(|vm| {
        if let Some(worker) = vm.worker(root) {
            worker.on_http_call_result(token, status, &body);
        }
    });
}

/// Test builds only (feature `crash-hook`): aborts the VM when the request asks for it.
#[cfg(feature = "crash-hook")]
fn crash_if_asked() {
    let asked = hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-polaris-test-crash");
    if let Ok(Some(v)) = asked {
        if v == "1" {
            log::error!("x-polaris-test-crash: aborting this VM (crash-hook build)");
            std::process::abort();
        }
    }
}
