//! The HTTP context: resolve the destination, pick an instance, write the upstream header.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::metrics::Counter;
use super::worker::{grpc_failure, SharedWorker};
use super::{now_ms, store};
use crate::config::DestinationSource;
use crate::decision::{self, Rejection};
use crate::destination::parse_destination;
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

impl Http {
    pub fn new(context_id: u32, worker: SharedWorker) -> Http {
        Http {
            context_id,
            worker,
            loading: None,
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn destination(&self) -> Result<ServiceKey, Rejection> {
        let worker = self.worker.borrow();
        let (source, value) = match &worker.config.destination {
            DestinationSource::Authority => (":authority".to_string(), self.header(":authority")),
            DestinationSource::Header(h) => (format!("header {h}"), self.header(h)),
        };
        value
            .and_then(|v| parse_destination(&v, &worker.config.namespace))
            .ok_or(Rejection::NoDestination { source })
    }

    /// Routes with what the worker knows; `None` when the service is not loaded yet.
    fn route_known(&self, key: &ServiceKey) -> Option<Result<(), Rejection>> {
        let mut guard = self.worker.borrow_mut();
        let worker = &mut *guard;
        let now = now_ms();
        worker.lookup(key, now)?;
        let result = match worker.cache.get(key, now)? {
            Known::NotFound => Err(Rejection::ServiceNotFound(key.clone())),
            Known::Failed(cause) => Err(Rejection::DiscoveryFailed {
                service: key.clone(),
                cause: cause.clone(),
            }),
            Known::Ready(snapshot) => decision::pick(snapshot, &mut worker.rng).map(|picked| {
                set_upstream(&worker.config.upstream_header, &picked.instance.upstream);
                worker.metrics.inc(Counter::Picks);
                if picked.recovered_all {
                    worker.metrics.inc(Counter::RecoverAll);
                }
            }),
        };
        Some(result)
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
    fn load(&mut self, key: ServiceKey) -> Action {
        let sent = {
            let worker = self.worker.borrow();
            worker.dispatch_discover(&key, "", worker.config.lazy_load_timeout)
        };
        match sent {
            Ok(_) => {
                self.loading = Some(key);
                Action::Pause
            }
            Err(cause) => {
                self.reject(&Rejection::DiscoveryFailed {
                    service: key,
                    cause,
                });
                Action::Pause
            }
        }
    }

    /// Installs a first-discovery answer; the error is the 503 to send.
    fn install_loaded(
        &self,
        key: &ServiceKey,
        answer: Result<Vec<u8>, String>,
    ) -> Result<(), Rejection> {
        let now = now_ms();
        let mut worker = self.worker.borrow_mut();
        let failed = |cause: String| Rejection::DiscoveryFailed {
            service: key.clone(),
            cause,
        };
        let remember = now.saturating_add(FAILURE_MEMORY_MS);
        let bytes = match answer {
            Ok(b) => b,
            Err(cause) => {
                worker
                    .cache
                    .install_transient(key, Known::Failed(cause.clone()), remember);
                return Err(failed(cause));
            }
        };
        match decode_instances(key, &bytes) {
            Ok(Discovered::Changed(snapshot)) => {
                let limit = worker.config.max_services;
                if store::watch(key, limit) == Added::Full {
                    return Err(Rejection::TooManyServices {
                        service: key.clone(),
                        limit,
                    });
                }
                if store::store_instances(key, &bytes) {
                    worker.metrics.inc(Counter::SnapshotUpdates);
                }
                let interval =
                    u64::try_from(worker.config.refresh_interval.as_millis()).unwrap_or(0);
                worker.cache.install_transient(
                    key,
                    Known::Ready(snapshot),
                    now.saturating_add(interval),
                );
                Ok(())
            }
            Ok(Discovered::NotFound) => {
                let interval =
                    u64::try_from(worker.config.refresh_interval.as_millis()).unwrap_or(0);
                worker
                    .cache
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

fn set_upstream(header: &str, upstream: &str) {
    if let Err(e) = hostcalls::set_map_value(MapType::HttpRequestHeaders, header, Some(upstream)) {
        log::warn!("cannot set {header}: {e:?}");
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
        let routed = self.install_loaded(&key, answer).and_then(|()| {
            self.route_known(&key)
                .unwrap_or(Err(Rejection::DiscoveryFailed {
                    service: key.clone(),
                    cause: "snapshot vanished".into(),
                }))
        });
        match routed {
            Ok(()) => {
                if let Err(e) = hostcalls::resume_http_request() {
                    log::warn!(
                        "cannot resume request on context {}: {e:?}",
                        self.context_id
                    );
                }
            }
            Err(rejection) => self.reject(&rejection),
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Never trust the client: whatever it sent in the upstream header goes, always.
        let header = self.worker.borrow().config.upstream_header.clone();
        if let Err(e) = hostcalls::remove_map_value(MapType::HttpRequestHeaders, &header) {
            log::warn!("cannot remove client-sent {header}: {e:?}");
            self.reject(&Rejection::NoDestination {
                source: "a request whose upstream header cannot be cleared".into(),
            });
            return Action::Pause;
        }
        let key = match self.destination() {
            Ok(k) => k,
            Err(r) => {
                self.reject(&r);
                return Action::Pause;
            }
        };
        match self.route_known(&key) {
            Some(Ok(())) => Action::Continue,
            Some(Err(r)) => {
                self.reject(&r);
                Action::Pause
            }
            None => self.load(key),
        }
    }
}
