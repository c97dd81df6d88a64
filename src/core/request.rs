//! One request's life in the core: resolve the destination, load it if needed, decide, hand the
//! instance to Envoy, and add the trace to the response.
//!
//! With no rules and no hash key, a request for a service seen before makes two host calls (read
//! the destination header, write the upstream header) and allocates nothing. Rules read only the
//! request facts they name.

use super::admission::{Negative, FAILURE_MEMORY_MS};
use super::admitting;
use super::breaking::{self, Feedback};
use super::facts::StreamFacts;
use super::host::{CallResult, Host, Stream};
use super::limiter::Admission;
use super::metrics::Counter;
use super::store;
use super::worker::Worker;
use crate::breaker::Outcome;
use crate::config::{Handover, RateLimitSide};
use crate::decision::{self, Rejection};
use crate::limit::{CallerFacts, Limits};
use crate::matching::RequestFacts;
use crate::model::{Kind, ServiceKey};
use crate::provider::is_loopback;
use crate::provider::record::Outcome as ProviderOutcome;
use crate::routing::{Plan, Rules};
use crate::shared::Added;
use crate::snapshot::{decode_instances, Discovered, DiscoveryError, Known};

/// Request header asking for the decision trace (honoured when `debug_trace` is on).
pub const DEBUG_HEADER: &str = "x-polaris-debug";
/// Trace header: the unirate turn a request waited for (`queued/RULE/WAITms`), or the rule
/// that limited it (`limited/RULE`, on the 429).
pub const RATE_LIMIT_TRACE: &str = "x-polaris-rate-limit";

/// What the host does with the request now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream header is written: let the request go (or resume it).
    Forward,
    /// Answer the request with this reply.
    Reply(LocalReply),
    /// Hold the request: calls are out, and their results decide it; or it waits for its
    /// unirate turn, and a later tick resumes it through `Pacing::resume_request`.
    Wait,
}

pub use super::reply::LocalReply;

/// Where a forwarded request went: what the response feeds back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub service: ServiceKey,
    /// `ip:port` of the instance.
    pub upstream: String,
}

/// A first discovery in progress: every kind the request needs is asked at once.
struct Loading {
    key: ServiceKey,
    tokens: Vec<(u32, Kind)>,
    answers: Vec<(Kind, CallResult)>,
}

/// Where the offline trigger is: isolating, then deregistering.
enum OfflineStep {
    Isolating(u32),
    Deregistering(u32, ProviderOutcome),
}

/// The core's state for one HTTP stream.
#[derive(Default)]
pub struct Exchange {
    loading: Option<Loading>,
    /// The offline trigger's calls, out.
    offline: Option<OfflineStep>,
    ticket: Option<Ticket>,
    /// What the response reports to the circuit breakers, when any applies.
    feedback: Option<Feedback>,
    /// Response headers for the decision trace, when asked for.
    trace: Vec<(&'static str, String)>,
    /// The host's id of this stream (what the unirate queue resumes).
    id: u32,
    /// A unirate rule's turn this request waits for once routed: the rule and the wait.
    turn: Option<(String, u64)>,
    /// Paused in this worker's unirate queue.
    queued: bool,
    /// CONCURRENCY slots this request holds until its stream ends.
    held: Vec<String>,
}

/// What the rate-limit rules said.
enum Limit {
    Pass,
    /// Routed now, resumed at its unirate turn.
    Wait {
        rule: String,
        wait_ms: u64,
    },
    Reply(LocalReply),
}

/// What the routing step concluded.
enum Route {
    Sent,
    Reject(Rejection),
    /// Answered without routing (an open circuit breaker).
    Replied(LocalReply),
    /// The service or its rules are not loaded yet: discover them first.
    Load(ServiceKey),
}

impl Exchange {
    /// The exchange of the host's stream `id`.
    pub fn new(id: u32) -> Exchange {
        Exchange {
            id,
            ..Exchange::default()
        }
    }

    /// Whether the stream's end matters to the core (a unirate queue place, CONCURRENCY slots).
    pub fn wants_end(&self) -> bool {
        self.queued || !self.held.is_empty()
    }

    /// The stream ended (completed, reset, or the client left): leave the unirate queue and
    /// give back the CONCURRENCY slots held.
    pub fn on_end<H: Host>(&mut self, w: &mut Worker<H>) {
        if std::mem::take(&mut self.queued) && w.queue.remove(self.id) {
            w.counters.inc(Counter::RateLimitQueueDropped);
        }
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            w.limiter.release(&w.host, held);
        }
    }

    /// A routed request: forwarded now, or paused until its unirate turn.
    fn sent<H: Host>(&mut self, w: &mut Worker<H>) -> Verdict {
        let Some((rule, wait_ms)) = self.turn.take() else {
            return Verdict::Forward;
        };
        if w.enqueue(self.id, wait_ms) {
            self.queued = true;
            return Verdict::Wait;
        }
        let body =
            format!("polaris-wasm: rate limited by rule `{rule}`: this worker's queue is full\n");
        let mut r = local_reply(w, 429, "rate-limited", body);
        r.headers.push((
            "retry-after".into(),
            wait_ms.div_ceil(1000).max(1).to_string(),
        ));
        w.counters.inc(Counter::RateLimited);
        Verdict::Reply(r)
    }

    /// The request headers have arrived.
    pub fn on_request<H: Host, S: Stream + ?Sized>(
        &mut self,
        w: &mut Worker<H>,
        stream: &mut S,
    ) -> Verdict {
        if w.provider.is_some() {
            return self.inbound(w, stream);
        }
        match self.route(w, stream) {
            Route::Sent => self.sent(w),
            Route::Reject(r) => Verdict::Reply(reply(w, &r)),
            Route::Replied(r) => Verdict::Reply(r),
            Route::Load(key) => self.load(w, key),
        }
    }

    /// A call this stream made has an answer; `Some` once the request is decided.
    pub fn on_call_result<H: Host, S: Stream + ?Sized>(
        &mut self,
        w: &mut Worker<H>,
        stream: &mut S,
        token: u32,
        result: CallResult,
    ) -> Option<Verdict> {
        if let Some(step) = self.offline.take() {
            return self.offline_step(w, step, token, result);
        }
        let loading = self.loading.as_mut()?;
        let kind = loading
            .tokens
            .iter()
            .find(|(t, _)| *t == token)
            .map(|(_, k)| *k)?;
        loading.answers.push((kind, result));
        if loading.answers.len() < loading.tokens.len() {
            return None;
        }
        let Loading { key, answers, .. } = self.loading.take()?;
        let route = match install_loaded(w, &key, answers) {
            Ok(()) => self.route(w, stream),
            Err(r) => Route::Reject(r),
        };
        Some(match route {
            Route::Sent => self.sent(w),
            Route::Reject(r) => Verdict::Reply(reply(w, &r)),
            Route::Replied(r) => Verdict::Reply(r),
            Route::Load(_) => Verdict::Reply(reply(
                w,
                &Rejection::DiscoveryFailed {
                    service: key,
                    cause: DiscoveryError::Vanished,
                },
            )),
        })
    }

    /// The response headers have arrived: feed the circuit breakers the request passed, and add
    /// the trace when it was asked for. A request the filter answered itself feeds nothing.
    pub fn on_response<H: Host, S: Stream + ?Sized>(&mut self, w: &mut Worker<H>, stream: &mut S) {
        if let Some(feedback) = self.feedback.take() {
            let status = stream
                .response_header(":status")
                .and_then(|s| s.trim().parse::<u32>().ok());
            let details = if Outcome::needs_details(status) {
                stream
                    .stream_property(&["response", "code_details"])
                    .and_then(|b| String::from_utf8(b).ok())
            } else {
                None
            };
            breaking::respond(w, &feedback, status, details.as_deref());
        }
        for (name, value) in self.trace.drain(..) {
            if let Err(e) = stream.set_response_header(name, &value) {
                log::warn!("cannot add {name} to the response: {e}");
            }
        }
    }

    /// Where the request was sent, once it was.
    pub fn ticket(&self) -> Option<&Ticket> {
        self.ticket.as_ref()
    }

    /// The calls this stream still waits on: their answers go to [`Exchange::on_call_result`].
    pub fn pending_calls(&self) -> Vec<u32> {
        let loading = self.loading.iter().flat_map(|l| {
            l.tokens
                .iter()
                .filter(|(_, kind)| !l.answers.iter().any(|(answered, _)| answered == kind))
                .map(|(t, _)| *t)
        });
        let offline = self.offline.iter().map(|step| match step {
            OfflineStep::Isolating(t) | OfflineStep::Deregistering(t, _) => *t,
        });
        loading.chain(offline).collect()
    }

    /// Whether the response needs the core (the trace, or the breakers' feedback).
    pub fn wants_response(&self) -> bool {
        !self.trace.is_empty() || self.feedback.is_some()
    }

    /// A request on the provider's listener: it goes to the service this Envoy fronts, except
    /// the offline and status paths, which the filter answers itself, to loopback only.
    fn inbound<H: Host, S: Stream + ?Sized>(
        &mut self,
        w: &mut Worker<H>,
        stream: &mut S,
    ) -> Verdict {
        let Some(p) = &w.provider else {
            return Verdict::Forward;
        };
        let raw = stream.request_header(":path").unwrap_or_default();
        let path = raw.split(['?', '#']).next().unwrap_or_default();
        let offline = path == p.config().offline_path;
        if !offline && path != p.config().status_path {
            // The listener routes to the local service; a pick header from a client (or from
            // a consumer Envoy in front) has no business going further.
            if let Err(e) = stream.remove_request_header(&w.config.upstream_header) {
                log::warn!("cannot remove {}: {e}", w.config.upstream_header);
            }
            if let Some(local) = w.local_service() {
                if let Ok(Some(side)) = limits_of(w, &local) {
                    match check_limits(w, &local, side, stream, &mut self.held) {
                        Limit::Pass => {}
                        Limit::Wait { rule, wait_ms } => self.turn = Some((rule, wait_ms)),
                        Limit::Reply(r) => return Verdict::Reply(r),
                    }
                }
            }
            return self.sent(w);
        }
        // Both ends of the connection on loopback: the destination is the connection's local
        // address, which no request header can change (the source alone can come from
        // x-forwarded-for).
        let local = stream.source_address().is_some_and(|a| is_loopback(&a))
            && stream
                .destination_address()
                .is_some_and(|a| is_loopback(&a));
        if !local {
            w.counters.inc(Counter::ProviderAdminRefused);
            let body = format!("polaris-wasm: {path} is only answered on loopback\n");
            return Verdict::Reply(local_reply(w, 403, "not-local", body));
        }
        let method = stream.request_header(":method").unwrap_or_default();
        if !(method == "GET" || (offline && method == "POST")) {
            let body = format!("polaris-wasm: {method} is not allowed on {path}\n");
            return Verdict::Reply(local_reply(w, 405, "method-not-allowed", body));
        }
        if !offline {
            let body = p.status(&w.host);
            return Verdict::Reply(local_reply(w, 200, "status", body));
        }
        match p.offline(&w.host, &w.link) {
            Ok(token) => {
                self.offline = Some(OfflineStep::Isolating(token));
                Verdict::Wait
            }
            Err(r) => Verdict::Reply(local_reply(w, r.status, "offline-failed", r.body)),
        }
    }

    /// An answer to the offline trigger's calls: the next call, or the reply.
    fn offline_step<H: Host>(
        &mut self,
        w: &mut Worker<H>,
        step: OfflineStep,
        token: u32,
        result: CallResult,
    ) -> Option<Verdict> {
        let p = w.provider.as_ref()?;
        let r = match step {
            OfflineStep::Isolating(t) if t == token => {
                match p.offline_isolated(&w.host, &w.link, &result) {
                    (isolated, Ok(next)) => {
                        self.offline = Some(OfflineStep::Deregistering(next, isolated));
                        return None;
                    }
                    (_, Err(r)) => r,
                }
            }
            OfflineStep::Deregistering(t, isolated) if t == token => {
                p.offline_answer(&w.host, &w.counters, &isolated, &result)
            }
            other => {
                self.offline = Some(other);
                return None;
            }
        };
        let reason = if r.status == 200 {
            "offline"
        } else {
            "offline-failed"
        };
        Some(Verdict::Reply(local_reply(w, r.status, reason, r.body)))
    }

    fn route<H: Host, S: Stream + ?Sized>(&mut self, w: &mut Worker<H>, stream: &mut S) -> Route {
        w.settle_location(true);
        let raw = stream.request_header(w.config.destination.header());
        let resolved = match raw.as_deref() {
            Some(raw) => w.destinations.resolve(raw, &w.config.namespace),
            None => None,
        };
        let Some(key) = resolved else {
            return Route::Reject(Rejection::NoDestination {
                source: w.config.destination.describe(),
            });
        };
        if let Some(allowed) = &w.config.admission.allowed {
            if !allowed.allows(&key) {
                w.counters.inc(Counter::NotAllowed);
                return Route::Reject(Rejection::NotAllowed(ServiceKey::clone(&key)));
            }
        }
        let host = &w.host;
        if let Some(r) = w.admission.remembered(&key, || host.now_ms()) {
            return Route::Reject(r);
        }
        match w.lookup(&key) {
            None => {
                if let Err(r) = admitting::take_budget(w, &key) {
                    return Route::Reject(r);
                }
                return Route::Load(ServiceKey::clone(&key));
            }
            Some(Known::NotFound) => {
                return Route::Reject(Rejection::ServiceNotFound(ServiceKey::clone(&key)))
            }
            Some(Known::Ready(_)) => w.admission.touch(&key),
        }
        if !w.plans.contains_key(&key) && !build_plan(w, &key) {
            return Route::Load(ServiceKey::clone(&key));
        }
        match limits_of(w, &key) {
            Err(()) => return Route::Load(ServiceKey::clone(&key)),
            Ok(Some(side)) => match check_limits(w, &key, side, stream, &mut self.held) {
                Limit::Pass => {}
                Limit::Wait { rule, wait_ms } => self.turn = Some((rule, wait_ms)),
                Limit::Reply(r) => return Route::Replied(r),
            },
            Ok(None) => {}
        }
        let guard = match breaking::rules_for(w, &key) {
            Some(breakers) => match breaking::gate(w, breakers, stream) {
                Ok(g) => Some(g),
                Err(reply) => return Route::Replied(reply),
            },
            None => None,
        };
        let Worker {
            host,
            config,
            cache,
            plans,
            rng,
            counters,
            ..
        } = w;
        let (Some(plan), Some(Known::Ready(snapshot))) = (plans.get(&key), cache.peek(&key)) else {
            return Route::Load(ServiceKey::clone(&key));
        };
        let mut facts = StreamFacts::new(stream, &config.caller);
        let decided = match guard.as_ref().filter(|g| g.filters_instances()) {
            Some(g) => {
                let mut avoid = g.instance_filter(&*host, counters, snapshot);
                decision::decide_avoiding(plan, snapshot, &mut facts, rng, Some(&mut avoid))
            }
            None => decision::decide(plan, snapshot, &mut facts, rng),
        };
        let decision = match decided {
            Ok(d) => d,
            Err(r) => return Route::Reject(r),
        };
        let upstream = &decision.instance.upstream;
        let trace = config.debug_trace && facts.header(DEBUG_HEADER) == Some("1");
        drop(facts);
        // The header by default, replacing whatever the client sent: it is always ours.
        let handed = match config.upstream_handover {
            Handover::Header => stream.set_request_header(&config.upstream_header, upstream),
            Handover::OverrideHost | Handover::LoadBalancer => stream.set_override_host(upstream),
        };
        if let Err(e) = handed {
            return Route::Reject(Rejection::HostRefused {
                what: format!("cannot hand {upstream} over: {e}"),
            });
        }
        counters.inc(Counter::Picks);
        if decision.recovered_all {
            counters.inc(Counter::RecoverAll);
        }
        self.feedback = guard.map(|g| g.feedback(upstream));
        if trace {
            self.trace = vec![
                ("x-polaris-service", key.to_string()),
                ("x-polaris-rule", decision.rule.unwrap_or("-").to_string()),
                ("x-polaris-group", decision.group.unwrap_or("-").to_string()),
                ("x-polaris-instance", upstream.clone()),
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
                (
                    breaking::TRACE_HEADER,
                    self.feedback
                        .as_ref()
                        .map_or_else(|| "-".to_string(), Feedback::trace),
                ),
                (
                    RATE_LIMIT_TRACE,
                    self.turn
                        .as_ref()
                        .map_or_else(|| "-".to_string(), |(r, ms)| format!("queued/{r}/{ms}ms")),
                ),
            ];
            self.ticket = Some(Ticket {
                service: ServiceKey::clone(&key),
                upstream: upstream.clone(),
            });
        }
        Route::Sent
    }

    /// Starts the first discovery of a service: every kind it needs at once; the request waits.
    fn load<H: Host>(&mut self, w: &mut Worker<H>, key: ServiceKey) -> Verdict {
        if w.config.upstream_handover == Handover::LoadBalancer {
            return through_leader(w, key);
        }
        let kinds = w.config.first_load_kinds();
        let mut tokens = Vec::with_capacity(kinds.len());
        for kind in kinds {
            let sent = w.link.discover(
                &w.host,
                &w.counters,
                (kind, &key),
                "",
                w.config.lazy_load_timeout,
            );
            match sent {
                Ok(token) => tokens.push((token, kind)),
                Err(e) => {
                    let rejection = Rejection::DiscoveryFailed {
                        service: key,
                        cause: DiscoveryError::NotSent {
                            cluster: e.cluster,
                            error: e.error.to_string(),
                        },
                    };
                    return Verdict::Reply(reply(w, &rejection));
                }
            }
        }
        self.loading = Some(Loading {
            key,
            tokens,
            answers: Vec::new(),
        });
        Verdict::Wait
    }
}

/// A load balancer has no stream to call from: the service goes on the watch list, and the
/// leader, woken now, discovers it with its next refresh; the host decides the request again
/// when the store has it.
fn through_leader<H: Host>(w: &mut Worker<H>, key: ServiceKey) -> Verdict {
    let limit = w.config.max_services;
    if store::watch(&w.host, &key, limit) == Added::Full {
        return Verdict::Reply(reply(
            w,
            &Rejection::TooManyServices {
                service: key,
                limit,
            },
        ));
    }
    w.host.wake_leader();
    Verdict::Wait
}

/// Builds the plan of `key` from its snapshot and rules; false when its rules are not loaded.
fn build_plan<H: Host>(w: &mut Worker<H>, key: &ServiceKey) -> bool {
    if w.lookup_rules(key).is_none() {
        return false;
    }
    let caller_key = w.caller_key();
    if let Some(c) = &caller_key {
        w.lookup_rules(c);
    }
    let Some(Known::Ready(snapshot)) = w.cache.peek(key) else {
        return false;
    };
    let empty = Rules::default();
    let inbound = &w.rules.peek(key).unwrap_or(&empty).inbound;
    let outbound = &caller_key
        .as_ref()
        .and_then(|c| w.rules.peek(c))
        .unwrap_or(&empty)
        .outbound;
    let (balancer, hash_key) = w.config.balancing(key);
    let mut plan = Plan::build(
        snapshot,
        inbound,
        outbound,
        balancer,
        w.config.failover,
        Some(&w.config.nearby),
        Some(&w.config.metadata),
    );
    plan.hash_key = hash_key.cloned();
    w.plans.insert(key.clone(), plan);
    true
}

/// The service whose rate-limit rules apply to a request for `key`, with its limits loaded:
/// `Ok(None)` when rate limiting is off; `Err` when the destination's limits must be discovered
/// first. A local service's limits come with the leader's first refresh; until then its requests
/// pass.
fn limits_of<H: Host>(w: &mut Worker<H>, key: &ServiceKey) -> Result<Option<RateLimitSide>, ()> {
    match w.config.rate_limit {
        None => Ok(None),
        Some(RateLimitSide::Destination) => match w.lookup_limits(key) {
            Some(_) => Ok(Some(RateLimitSide::Destination)),
            None => Err(()),
        },
        Some(RateLimitSide::Local) => {
            let Some(local) = w.local_service() else {
                return Ok(None);
            };
            Ok(w.lookup_limits(&local).map(|_| RateLimitSide::Local))
        }
    }
}

/// Applies the rate-limit rules of `side` to the request: pass, wait for a unirate turn, or the
/// 429 (the rule's own body when it has one; the limiting rule in the trace when asked for).
fn check_limits<H: Host, S: Stream + ?Sized>(
    w: &mut Worker<H>,
    key: &ServiceKey,
    side: RateLimitSide,
    stream: &mut S,
    held: &mut Vec<String>,
) -> Limit {
    let local = match side {
        RateLimitSide::Destination => None,
        RateLimitSide::Local => match w.local_service() {
            Some(l) => Some(l),
            None => return Limit::Pass,
        },
    };
    let Worker {
        host,
        config,
        counters,
        limits,
        limiter,
        ..
    } = w;
    let rules_of = local.as_ref().unwrap_or(key);
    let Some(l) = limits.peek(rules_of).filter(|l| !l.is_empty()) else {
        return Limit::Pass;
    };
    let who = CallerFacts {
        namespace: &config.caller.namespace,
        service: &config.caller.service,
    };
    let mut facts = StreamFacts::new(stream, &config.caller);
    let admission = limiter.check(
        &*host,
        rules_of,
        l,
        &mut facts,
        &who,
        || host.now_ms(),
        held,
    );
    let trace = config.debug_trace && facts.header(DEBUG_HEADER) == Some("1");
    drop(facts);
    counters.add(Counter::RateLimitContended, limiter.take_contended());
    counters.add(Counter::RateLimitDryRun, limiter.take_dry_run_hits());
    if let Some(now) = limiter.take_new_grant() {
        // Its tokens are spent without the clock until the timer marks the window's end.
        w.retime(now, false);
    }
    let (rule, retry_after_s, body) = match admission {
        Admission::Allowed => return Limit::Pass,
        Admission::Queued { rule, wait_ms } => return Limit::Wait { rule, wait_ms },
        Admission::Limited {
            rule,
            retry_after_s,
            body,
        } => (rule, retry_after_s, body),
    };
    w.counters.inc(Counter::RateLimited);
    let rejection = Rejection::RateLimited {
        service: rules_of.clone(),
        rule,
        retry_after_s,
    };
    let mut r = reply(w, &rejection);
    if let Some(b) = body {
        r.body = b;
    }
    if trace {
        if let Rejection::RateLimited { rule, .. } = &rejection {
            r.headers
                .push((RATE_LIMIT_TRACE.to_string(), format!("limited/{rule}")));
        }
    }
    Limit::Reply(r)
}

/// The local reply for a rejection, counted.
fn reply<H: Host>(w: &Worker<H>, rejection: &Rejection) -> LocalReply {
    w.counters.inc(Counter::LocalReplies);
    if matches!(rejection, Rejection::NoInstance { .. }) {
        w.counters.inc(Counter::NoInstance);
    }
    let headers = match rejection {
        Rejection::RateLimited { retry_after_s, .. } => {
            vec![("retry-after".to_string(), retry_after_s.to_string())]
        }
        Rejection::DiscoveryThrottled { .. } => vec![("retry-after".to_string(), "1".to_string())],
        _ => Vec::new(),
    };
    LocalReply {
        status: rejection.status(),
        reason: rejection.reason(),
        body: format!("polaris-wasm: {rejection}\n"),
        headers,
    }
}

/// A reply the provider side makes, counted.
fn local_reply<H: Host>(
    w: &Worker<H>,
    status: u32,
    reason: &'static str,
    body: String,
) -> LocalReply {
    w.counters.inc(Counter::LocalReplies);
    LocalReply {
        status,
        reason,
        body,
        headers: Vec::new(),
    }
}

/// Installs first-discovery answers; the error is the reply to send.
fn install_loaded<H: Host>(
    w: &mut Worker<H>,
    key: &ServiceKey,
    answers: Vec<(Kind, CallResult)>,
) -> Result<(), Rejection> {
    let failed = |cause: DiscoveryError| Rejection::DiscoveryFailed {
        service: key.clone(),
        cause,
    };
    let mut instances = None;
    let mut routing = None;
    let mut rate_limits = None;
    for (kind, answer) in answers {
        match kind {
            Kind::Instances => instances = Some(answer),
            Kind::Routing => routing = Some(answer),
            Kind::RateLimit => rate_limits = Some(answer),
            Kind::CircuitBreaker | Kind::FaultDetector => {}
        }
    }
    let no_answer = || {
        Err(crate::polaris::CallError {
            status: 0,
            message: Some("no answer".into()),
        })
    };
    let bytes = match instances.unwrap_or_else(no_answer) {
        Ok(b) => b,
        Err(e) => {
            let cause = DiscoveryError::Unreachable(e);
            let now = w.host.now_ms();
            let until = now.saturating_add(FAILURE_MEMORY_MS);
            w.admission
                .remember(key, Negative::Failed(cause.clone()), now, until);
            return Err(failed(cause));
        }
    };
    let routing = match routing.unwrap_or_else(no_answer) {
        Ok(r) => r,
        Err(e) => {
            return Err(failed(DiscoveryError::Rules(Box::new(
                DiscoveryError::Unreachable(e),
            ))))
        }
    };
    let interval = u64::try_from(w.config.refresh_interval.as_millis()).unwrap_or(0);
    match decode_instances(key, &bytes) {
        Ok(Discovered::Changed(snapshot)) => {
            let limit = w.config.max_services;
            if store::watch(&w.host, key, limit) == Added::Full {
                return Err(Rejection::TooManyServices {
                    service: key.clone(),
                    limit,
                });
            }
            let rules = Rules::compile(key, &routing, &w.config.caller)
                .map_err(|e| failed(DiscoveryError::Rules(Box::new(DiscoveryError::Answer(e)))))?;
            w.rules.install_transient(key, rules, None);
            let limits = match rate_limits {
                None => None,
                Some(Ok(b)) => {
                    let l =
                        Limits::from_stored(key, &b, &w.config.rate_limit_rules).map_err(|e| {
                            failed(DiscoveryError::Limits(Box::new(DiscoveryError::Answer(e))))
                        })?;
                    Some((l, b))
                }
                Some(Err(e)) => {
                    return Err(failed(DiscoveryError::Limits(Box::new(
                        DiscoveryError::Unreachable(e),
                    ))))
                }
            };
            let mut answers = vec![(Kind::Instances, &bytes), (Kind::Routing, &routing)];
            if let Some((l, b)) = &limits {
                w.limits.install_transient(key, l.clone(), None);
                answers.push((Kind::RateLimit, b));
            }
            for (kind, answer) in answers {
                if store::store_answer(&w.host, kind, key, answer) {
                    w.counters.inc(Counter::SnapshotUpdates);
                }
            }
            w.plans.remove(key);
            let until = w.host.now_ms().saturating_add(interval);
            w.cache
                .install_transient(key, Known::Ready(snapshot), Some(until));
            Ok(())
        }
        Ok(Discovered::NotFound) => {
            let now = w.host.now_ms();
            let ttl = u64::try_from(w.config.admission.not_found_ttl.as_millis()).unwrap_or(0);
            w.admission
                .remember(key, Negative::NotFound, now, now.saturating_add(ttl));
            Err(Rejection::ServiceNotFound(key.clone()))
        }
        Ok(Discovered::Unchanged) => Err(failed(DiscoveryError::NoChangeOnFirst)),
        Err(e) => {
            log::warn!("first discovery of {key} unusable: {e}");
            Err(failed(DiscoveryError::Answer(e)))
        }
    }
}
