//! The HTTP context: resolve the destination, pick an instance, write the upstream header.
//!
//! The hot path makes two host calls (read the destination header, write the upstream header)
//! and allocates nothing for a destination and service it has seen before.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::metrics::Counter;
use super::store;
use super::worker::{grpc_failure, lookup, SharedWorker};
use crate::decision::{self, Rejection};
use crate::shared::Added;
use crate::snapshot::{decode_instances, Discovered, Known, ServiceKey};

/// How long a failed first discovery is remembered, so a down Polaris is not asked per request.
const FAILURE_MEMORY_MS: u64 = 1000;

pub struct Http {
    context_id: u32,
    worker: SharedWorker,
    /// The service whose first discovery this request is waiting for.
    loading: Option<ServiceKey>,
}

/// What the request path decided.
enum Route {
    /// The upstream header is written; let the request go.
    Sent,
    Reject(Rejection),
    /// The service is not loaded yet: discover it first.
    Load(ServiceKey),
}

impl Http {
    pub fn new(context_id: u32, worker: SharedWorker) -> Http {
        Http {
            context_id,
            worker,
            loading: None,
        }
    }

    fn route(&self) -> Route {
        let mut guard = self.worker.borrow_mut();
        let w = &mut *guard;
        let raw =
            hostcalls::get_map_value(MapType::HttpRequestHeaders, w.config.destination.header())
                .ok()
                .flatten();
        let Some(key) = raw
            .as_deref()
            .and_then(|raw| w.destinations.resolve(raw, &w.config.namespace))
        else {
            return Route::Reject(Rejection::NoDestination {
                source: w.config.destination.describe(),
            });
        };
        let result = match lookup(&mut w.cache, key, w.now_ms) {
            None => return Route::Load(key.clone()),
            Some(Known::NotFound) => Err(Rejection::ServiceNotFound(key.clone())),
            Some(Known::Failed(cause)) => Err(Rejection::DiscoveryFailed {
                service: key.clone(),
                cause: cause.clone(),
            }),
            Some(Known::Ready(snapshot)) => {
                decision::pick(snapshot, &mut w.rng).and_then(|picked| {
                    // Replaces whatever the client sent: the header is always ours.
                    hostcalls::set_map_value(
                        MapType::HttpRequestHeaders,
                        &w.config.upstream_header,
                        Some(&picked.instance.upstream),
                    )
                    .map_err(|e| Rejection::DiscoveryFailed {
                        service: key.clone(),
                        cause: format!("cannot set {}: {e:?}", w.config.upstream_header),
                    })?;
                    w.metrics.inc(Counter::Picks);
                    if picked.recovered_all {
                        w.metrics.inc(Counter::RecoverAll);
                    }
                    Ok(())
                })
            }
        };
        match result {
            Ok(()) => Route::Sent,
            Err(r) => Route::Reject(r),
        }
    }

    fn reject(&self, rejection: &Rejection) {
        let worker = self.worker.borrow();
        worker.metrics.inc(Counter::LocalReplies);
        if matches!(rejection, Rejection::NoInstance { .. }) {
            worker.metrics.inc(Counter::NoInstance);
        }
        let body = format!("polaris-wasm: {rejection}\n");
        let headers = vec![
            ("content-type", "text/plain"),
            ("x-polaris-reason", rejection.reason()),
        ];
        if let Err(e) =
            hostcalls::send_http_response(rejection.status(), headers, Some(body.as_bytes()))
        {
            log::warn!(
                "cannot send local reply on context {}: {e:?}",
                self.context_id
            );
        }
    }

    /// Starts the first discovery of a service; the request waits for the answer.
    fn load(&mut self, key: ServiceKey) {
        let sent = {
            let worker = self.worker.borrow();
            worker.dispatch_discover(&key, "", worker.config.lazy_load_timeout)
        };
        match sent {
            Ok(_) => self.loading = Some(key),
            Err(cause) => self.reject(&Rejection::DiscoveryFailed {
                service: key,
                cause,
            }),
        }
    }

    /// Installs a first-discovery answer; the error is the 503 to send.
    fn install_loaded(
        &self,
        key: &ServiceKey,
        answer: Result<Vec<u8>, String>,
    ) -> Result<(), Rejection> {
        let mut guard = self.worker.borrow_mut();
        let w = &mut *guard;
        let now = w.now_ms;
        let interval = u64::try_from(w.config.refresh_interval.as_millis()).unwrap_or(0);
        let failed = |cause: String| Rejection::DiscoveryFailed {
            service: key.clone(),
            cause,
        };
        let bytes = match answer {
            Ok(b) => b,
            Err(cause) => {
                w.cache.install_transient(
                    key,
                    Known::Failed(cause.clone()),
                    now.saturating_add(FAILURE_MEMORY_MS),
                );
                return Err(failed(cause));
            }
        };
        match decode_instances(key, &bytes) {
            Ok(Discovered::Changed(snapshot)) => {
                let limit = w.config.max_services;
                if store::watch(key, limit) == Added::Full {
                    return Err(Rejection::TooManyServices {
                        service: key.clone(),
                        limit,
                    });
                }
                if store::store_instances(key, &bytes) {
                    w.metrics.inc(Counter::SnapshotUpdates);
                }
                w.cache.install_transient(
                    key,
                    Known::Ready(snapshot),
                    now.saturating_add(interval),
                );
                Ok(())
            }
            Ok(Discovered::NotFound) => {
                w.cache
                    .install_transient(key, Known::NotFound, now.saturating_add(interval));
                Err(Rejection::ServiceNotFound(key.clone()))
            }
            Ok(Discovered::Unchanged) => Err(failed(
                "Polaris answered no-change to a first discovery".into(),
            )),
            Err(e) => {
                log::warn!("first discovery of {key} unusable: {e}");
                Err(failed(e.to_string()))
            }
        }
    }
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        let Some(key) = self.loading.take() else {
            return;
        };
        let answer = if status_code == 0 {
            hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size)
                .ok()
                .flatten()
                .ok_or_else(|| "empty gRPC answer".to_string())
        } else {
            Err(grpc_failure(status_code))
        };
        let route = match self.install_loaded(&key, answer) {
            Ok(()) => self.route(),
            Err(r) => Route::Reject(r),
        };
        match route {
            Route::Sent => {
                if let Err(e) = hostcalls::resume_http_request() {
                    log::warn!(
                        "cannot resume request on context {}: {e:?}",
                        self.context_id
                    );
                }
            }
            Route::Reject(r) => self.reject(&r),
            Route::Load(_) => self.reject(&Rejection::DiscoveryFailed {
                service: key,
                cause: "the discovered service vanished from the cache".into(),
            }),
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.route() {
            Route::Sent => Action::Continue,
            Route::Reject(r) => {
                self.reject(&r);
                Action::Pause
            }
            Route::Load(key) => {
                self.load(key);
                Action::Pause
            }
        }
    }
}
