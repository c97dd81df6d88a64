//! The HTTP context: resolve the destination, run the routing chain, write the upstream header.
//!
//! With no rules and no hash key, the hot path makes two host calls (read the destination header,
//! write the upstream header) and allocates nothing for a destination it has seen before. Rules
//! read only the request facts they name.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::facts::HostFacts;
use super::metrics::Counter;
use super::store;
use super::worker::{caller_key, grpc_failure, lookup, lookup_rules, SharedWorker};
use crate::decision::{self, Rejection};
use crate::routing::{Plan, RequestFacts, Rules};
use crate::shared::Added;
use crate::snapshot::{decode_instances, Discovered, Kind, Known, ServiceKey};

/// How long a failed first discovery is remembered, so a down Polaris is not asked per request.
const FAILURE_MEMORY_MS: u64 = 1000;
/// Request header asking for the decision trace (honoured when `debug_trace` is on).
const DEBUG_HEADER: &str = "x-polaris-debug";

/// A first discovery in progress: both kinds are asked at once.
struct Loading {
    key: ServiceKey,
    tokens: Vec<(u32, Kind)>,
    answers: Vec<(Kind, Result<Vec<u8>, String>)>,
}

pub struct Http {
    context_id: u32,
    worker: SharedWorker,
    loading: Option<Loading>,
    /// Response headers for the decision trace, when asked for.
    trace: Vec<(&'static str, String)>,
}

/// What the request path decided.
enum Route {
    /// The upstream header is written; let the request go.
    Sent,
    Reject(Rejection),
    /// The service or its rules are not loaded yet: discover them first.
    Load(ServiceKey),
}

impl Http {
    pub fn new(context_id: u32, worker: SharedWorker) -> Http {
        Http {
            context_id,
            worker,
            loading: None,
            trace: Vec::new(),
        }
    }

    fn route(&mut self) -> Route {
        let mut guard = self.worker.borrow_mut();
        let w = &mut *guard;
        w.settle_location(true);
        let raw =
            hostcalls::get_map_value(MapType::HttpRequestHeaders, w.config.destination.header())
                .ok()
                .flatten();
        let resolved = match raw.as_deref() {
            Some(raw) => w.destinations.resolve(raw, &w.config.namespace),
            None => None,
        };
        let Some(key) = resolved else {
            return Route::Reject(Rejection::NoDestination {
                source: w.config.destination.describe(),
            });
        };
        let snapshot = match lookup(&mut w.cache, key, w.now_ms) {
            None => return Route::Load(key.clone()),
            Some(Known::NotFound) => return Route::Reject(Rejection::ServiceNotFound(key.clone())),
            Some(Known::Failed(cause)) => {
                return Route::Reject(Rejection::DiscoveryFailed {
                    service: key.clone(),
                    cause: cause.clone(),
                })
            }
            Some(Known::Ready(snapshot)) => snapshot,
        };
        if !w.plans.contains_key(key) {
            if lookup_rules(&mut w.rules, key, &w.config.caller).is_none() {
                return Route::Load(key.clone());
            }
            let caller_key = caller_key(&w.config);
            if let Some(c) = &caller_key {
                lookup_rules(&mut w.rules, c, &w.config.caller);
            }
            let empty = Rules::default();
            let inbound = &w.rules.get(key).unwrap_or(&empty).inbound;
            let outbound = &caller_key
                .as_ref()
                .and_then(|c| w.rules.get(c))
                .unwrap_or(&empty)
                .outbound;
            let plan = Plan::build(
                snapshot,
                inbound,
                outbound,
                w.config.balancing(key).0,
                w.config.failover,
                Some(&w.config.nearby),
                Some(&w.config.metadata),
            );
            w.plans.insert(key.clone(), plan);
        }
        let Some(plan) = w.plans.get(key) else {
            return Route::Load(key.clone());
        };
        let mut facts = HostFacts::new(&w.config.caller);
        let decided = decision::decide(
            plan,
            snapshot,
            &mut facts,
            w.config.balancing(key).1,
            &mut w.rng,
        )
        .and_then(|d| {
            // Replaces whatever the client sent: the header is always ours.
            hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                &w.config.upstream_header,
                Some(&d.instance.upstream),
            )
            .map_err(|e| Rejection::DiscoveryFailed {
                service: key.clone(),
                cause: format!("cannot set {}: {e:?}", w.config.upstream_header),
            })?;
            Ok(d)
        });
        let decision = match decided {
            Ok(d) => d,
            Err(r) => return Route::Reject(r),
        };
        w.metrics.inc(Counter::Picks);
        if decision.recovered_all {
            w.metrics.inc(Counter::RecoverAll);
        }
        if w.config.debug_trace && facts.header(DEBUG_HEADER) == Some("1") {
            self.trace = vec![
                ("x-polaris-service", key.to_string()),
                ("x-polaris-rule", decision.rule.unwrap_or("-").to_string()),
                ("x-polaris-group", decision.group.unwrap_or("-").to_string()),
                ("x-polaris-instance", decision.instance.upstream.clone()),
                ("x-polaris-recover-all", decision.recovered_all.to_string()),
                (
                    "x-polaris-nearby",
                    decision.nearby.map_or("-", |l| l.name()).to_string(),
                ),
                (
                    "x-polaris-metadata",
                    decision
                        .metadata
                        .map_or_else(|| "-".to_string(), |m| m.to_string()),
                ),
            ];
        }
        Route::Sent
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

    /// Starts the first discovery of a service (instances and rules at once); the request waits.
    fn load(&mut self, key: ServiceKey) {
        let mut tokens = Vec::with_capacity(Kind::ALL.len());
        {
            let worker = self.worker.borrow();
            for kind in Kind::ALL {
                match worker.dispatch_discover(kind, &key, "", worker.config.lazy_load_timeout) {
                    Ok(token) => tokens.push((token, kind)),
                    Err(cause) => {
                        drop(worker);
                        self.reject(&Rejection::DiscoveryFailed {
                            service: key,
                            cause,
                        });
                        return;
                    }
                }
            }
        }
        self.loading = Some(Loading {
            key,
            tokens,
            answers: Vec::new(),
        });
    }

    /// Installs first-discovery answers; the error is the reply to send.
    fn install_loaded(
        &self,
        key: &ServiceKey,
        answers: Vec<(Kind, Result<Vec<u8>, String>)>,
    ) -> Result<(), Rejection> {
        let mut guard = self.worker.borrow_mut();
        let w = &mut *guard;
        let now = w.now_ms;
        let interval = u64::try_from(w.config.refresh_interval.as_millis()).unwrap_or(0);
        let failed = |cause: String| Rejection::DiscoveryFailed {
            service: key.clone(),
            cause,
        };
        let mut instances = None;
        let mut routing = None;
        for (kind, answer) in answers {
            match kind {
                Kind::Instances => instances = Some(answer),
                Kind::Routing => routing = Some(answer),
            }
        }
        let instances = instances.unwrap_or_else(|| Err("no instances answer".into()));
        let bytes = match instances {
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
        let routing = match routing.unwrap_or_else(|| Err("no routing answer".into())) {
            Ok(r) => r,
            Err(cause) => return Err(failed(format!("routing: {cause}"))),
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
                if !super::worker::install_rules(
                    &mut w.rules,
                    key,
                    &routing,
                    None,
                    &w.config.caller,
                ) {
                    return Err(failed("unusable routing answer".into()));
                }
                for (kind, answer) in [(Kind::Instances, &bytes), (Kind::Routing, &routing)] {
                    if store::store_answer(kind, key, answer) {
                        w.metrics.inc(Counter::SnapshotUpdates);
                    }
                }
                w.plans.remove(key);
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
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(loading) = self.loading.as_mut() else {
            return;
        };
        let Some(kind) = loading
            .tokens
            .iter()
            .find(|(t, _)| *t == token_id)
            .map(|(_, k)| *k)
        else {
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
        loading.answers.push((kind, answer));
        if loading.answers.len() < loading.tokens.len() {
            return;
        }
        let Some(Loading { key, answers, .. }) = self.loading.take() else {
            return;
        };
        let route = match self.install_loaded(&key, answers) {
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

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in self.trace.drain(..) {
            if let Err(e) =
                hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(&value))
            {
                log::warn!("cannot add {name} to the response: {e:?}");
            }
        }
        Action::Continue
    }
}
