//! Circuit breaking in the request lifecycle: the gate a request passes (SERVICE and METHOD
//! breakers, then INSTANCE breakers during the pick), the feedback its response gives, the
//! ERROR_RATE counts each worker merges on its tick, and the leader's ERROR_RATE checks.
//!
//! One state per Envoy: a service's breaker state is one shared-data entry
//! (`shared::breaker_key`), read once by every request a breaker applies to (so a breaker opened
//! by one worker stops every worker's next request) and written by CAS only on a failure, on a
//! success that changes something (a failure streak to reset, a half-open probe), and when a
//! half-open probe is taken. A success in the initial state writes nothing.

use rustc_hash::FxHashMap;
use std::rc::Rc;

use super::breakers::Breakers;
use super::host::{Host, Stream};
use super::metrics::{Counter, Counters, Gauge};
use super::reply::LocalReply;
use super::store::{cas_update, Update};
use super::worker::Worker;
use crate::breaker::rule::Fallback;
use crate::breaker::rule::Trigger;
use crate::breaker::window::{Schedule, Verdict, Windows};
use crate::breaker::{Effective, Level, Outcome, Resource, Rule, Rules, Table, Transition};
use crate::decision::Rejection;
use crate::matching::path_only;
use crate::model::{ServiceKey, ServiceSnapshot};
use crate::snapshot::Known;

/// Response header of the decision trace naming the breaker state that applied.
pub const TRACE_HEADER: &str = "x-polaris-breaker";

/// What a request's response reports back: where it went and what each breaker was then.
#[derive(Clone, Debug)]
pub struct Feedback {
    breakers: Rc<Breakers>,
    upstream: String,
    method: Option<(Rc<Rule>, String)>,
    /// When the request passed the gate, read only when a DELAY condition needs the latency or a
    /// breaker was away from its initial state.
    started_ms: Option<u64>,
    /// The state each level's breaker had when the request passed: instance, service, method.
    states: [Option<Effective>; 3],
}

impl Feedback {
    pub fn service(&self) -> &ServiceKey {
        &self.breakers.service
    }

    /// When the request passed the gate, if the clock was read then.
    pub fn started_ms(&self) -> Option<u64> {
        self.started_ms
    }

    /// The decision trace: `level=state/rule` per level with a rule, `dry-run` marked.
    pub fn trace(&self) -> String {
        let rules = [
            self.breakers.rules.instance.as_ref(),
            self.breakers.rules.service.as_ref(),
            self.method.as_ref().map(|(r, _)| r),
        ];
        let parts: Vec<String> = rules
            .iter()
            .zip(self.states.iter())
            .filter_map(|(rule, state)| {
                let (rule, state) = (rule.as_ref()?, state.as_ref()?);
                Some(format!(
                    "{}={}/{}{}",
                    rule.level.name(),
                    state.name(),
                    rule.name,
                    if rule.dry_run { "/dry-run" } else { "" }
                ))
            })
            .collect();
        if parts.is_empty() {
            "-".to_string()
        } else {
            parts.join(" ")
        }
    }
}

/// A request's view of its service's breakers, from the gate to the pick.
pub struct Guard {
    breakers: Rc<Breakers>,
    table: Rc<Table>,
    now_ms: Option<u64>,
    method: Option<(Rc<Rule>, String)>,
    service_state: Option<Effective>,
    method_state: Option<Effective>,
}

impl Guard {
    /// Whether the pick must avoid some instance (an enforcing INSTANCE rule with state).
    pub fn filters_instances(&self) -> bool {
        self.breakers
            .rules
            .instance
            .as_ref()
            .is_some_and(|r| !r.dry_run && !self.table.is_empty())
    }

    /// The INSTANCE-level filter for the pick: true = avoid. A half-open instance is used only if
    /// it gives this request one of its probes.
    pub fn instance_filter<'a, H: Host>(
        &'a self,
        host: &'a H,
        counters: &'a Counters,
        snapshot: &'a ServiceSnapshot,
    ) -> impl FnMut(usize) -> bool + 'a {
        let now_ms = self.now_ms.unwrap_or(0);
        move |index| {
            let (Some(rule), Some(instance)) = (
                self.breakers.rules.instance.as_ref(),
                snapshot.instances.get(index),
            ) else {
                return false;
            };
            let resource = Resource::Instance(&instance.upstream);
            match self.table.effective(resource, rule, now_ms) {
                Effective::Closed { .. } => false,
                Effective::Open { .. } | Effective::HalfOpen { free: 0 } => true,
                Effective::HalfOpen { .. } => {
                    !admit(host, counters, &self.breakers, resource, rule, now_ms)
                }
            }
        }
    }

    /// The feedback of a request sent to `upstream`.
    pub fn feedback(self, upstream: &str) -> Feedback {
        let now_ms = self.now_ms.unwrap_or(0);
        let instance_state = self.breakers.rules.instance.as_ref().map(|r| {
            self.table
                .effective(Resource::Instance(upstream), r, now_ms)
        });
        Feedback {
            upstream: upstream.to_string(),
            started_ms: self.now_ms,
            states: [instance_state, self.service_state, self.method_state],
            method: self.method,
            breakers: self.breakers,
        }
    }
}

/// The breakers of `key` when any applies (`None` also while its rules are not loaded yet).
pub fn rules_for<H: Host>(w: &mut Worker<H>, key: &ServiceKey) -> Option<Rc<Breakers>> {
    w.config.breaker.as_ref()?;
    let breakers = w.lookup_breakers(key)?;
    (!breakers.rules.is_empty()).then(|| Rc::clone(breakers))
}

/// The state table of a service as shared data holds it now (decoded again only when it
/// changed; no allocation while it has no entry).
fn read_table<H: Host>(w: &mut Worker<H>, breakers: &Breakers) -> Rc<Table> {
    let (bytes, cas) = w.host.get(&breakers.state_key);
    let Some(cas) = cas else {
        return Rc::clone(&w.empty_table);
    };
    if let Some((seen, table)) = w.tables.get(&breakers.service) {
        if *seen == cas {
            return Rc::clone(table);
        }
    }
    let table = Rc::new(Table::decode(bytes.as_deref()));
    w.tables
        .insert(breakers.service.clone(), (cas, Rc::clone(&table)));
    table
}

/// SERVICE and METHOD breakers: `Err` is the reply when one is open (or half-open without a
/// probe for this request).
pub fn gate<H: Host, S: Stream + ?Sized>(
    w: &mut Worker<H>,
    breakers: Rc<Breakers>,
    stream: &mut S,
) -> Result<Guard, LocalReply> {
    let table = read_table(w, &breakers);
    // The clock only when something is away from its initial state or a DELAY needs it.
    let now_ms = (!table.is_empty() || breakers.timed).then(|| w.host.now_ms());
    let method = if breakers.rules.methods.is_empty() {
        None
    } else {
        let verb = stream.request_header(":method").unwrap_or_default();
        let path = stream
            .request_header(":path")
            .map(|p| path_only(&p).to_string())
            .unwrap_or_default();
        breakers
            .rules
            .method(&verb, &path)
            .map(|r| (Rc::clone(r), path))
    };
    let mut guard = Guard {
        breakers,
        table,
        now_ms,
        method,
        service_state: None,
        method_state: None,
    };
    let now = now_ms.unwrap_or(0);
    if let Some(rule) = guard.breakers.rules.service.clone() {
        let state = pass(
            w,
            &guard.breakers,
            Resource::Service,
            &rule,
            &guard.table,
            now,
        )
        .map_err(|state| open_reply(w, &guard.breakers.service, &rule, None, state))?;
        guard.service_state = Some(state);
    }
    if let Some((rule, path)) = guard.method.clone() {
        let state = pass(
            w,
            &guard.breakers,
            Resource::Method(&path),
            &rule,
            &guard.table,
            now,
        )
        .map_err(|state| open_reply(w, &guard.breakers.service, &rule, Some(&path), state))?;
        guard.method_state = Some(state);
    }
    Ok(guard)
}

/// Whether a request passes one SERVICE or METHOD breaker: `Ok` with the state it passed in.
fn pass<H: Host>(
    w: &Worker<H>,
    breakers: &Breakers,
    resource: Resource<'_>,
    rule: &Rule,
    table: &Table,
    now_ms: u64,
) -> Result<Effective, Effective> {
    let state = table.effective(resource, rule, now_ms);
    if rule.dry_run {
        return Ok(state);
    }
    match state {
        Effective::Closed { .. } => Ok(state),
        Effective::Open { .. } | Effective::HalfOpen { free: 0 } => Err(state),
        Effective::HalfOpen { .. } => {
            if admit(&w.host, &w.counters, breakers, resource, rule, now_ms) {
                Ok(state)
            } else {
                Err(state)
            }
        }
    }
}

/// Takes a half-open probe by CAS; false when none is left (or the write lost every race).
fn admit<H: Host>(
    host: &H,
    counters: &Counters,
    breakers: &Breakers,
    resource: Resource<'_>,
    rule: &Rule,
    now_ms: u64,
) -> bool {
    let key = &breakers.service;
    let result = cas_update(host, &breakers.state_key, |bytes| {
        let mut table = Table::decode(bytes);
        let (admitted, transition, wrote) = table.admit(resource, rule, now_ms);
        if wrote {
            Update::Write(table.encode(), (admitted, transition))
        } else {
            Update::Keep((admitted, transition))
        }
    });
    match result {
        Ok((admitted, transition)) => {
            if let Some(t) = transition {
                note(counters, key, resource, rule, t);
            }
            admitted
        }
        Err(e) => {
            counters.inc(Counter::BreakerContended);
            log::warn!("circuit breaker of {key}: cannot take a half-open probe: {e}");
            false
        }
    }
}

/// The reply of an open SERVICE or METHOD breaker: the rule's fallback, else a 503.
fn open_reply<H: Host>(
    w: &Worker<H>,
    key: &ServiceKey,
    rule: &Rule,
    path: Option<&str>,
    state: Effective,
) -> LocalReply {
    w.counters.inc(Counter::BreakerFallbacks);
    w.counters.inc(Counter::LocalReplies);
    match &rule.fallback {
        Some(Fallback {
            status,
            headers,
            body,
        }) => LocalReply {
            status: *status,
            reason: "circuit-open",
            body: body.clone(),
            headers: headers.clone(),
        },
        None => {
            let rejection = Rejection::CircuitOpen {
                service: key.clone(),
                method: path.map(str::to_string),
                rule: rule.name.clone(),
                state: state.name(),
            };
            LocalReply {
                status: rejection.status(),
                reason: rejection.reason(),
                body: format!("polaris-wasm: {rejection}\n"),
                headers: Vec::new(),
            }
        }
    }
}

/// A response arrived (`status` `None` when there was none; `code_details` read only for a 5xx):
/// feeds every breaker the request passed. A success in the initial state reads no clock and
/// writes nothing.
pub fn respond<H: Host>(
    w: &mut Worker<H>,
    feedback: &Feedback,
    status: Option<u32>,
    code_details: Option<&str>,
) {
    let mut now = feedback.started_ms.map(|_| w.host.now_ms());
    let latency = match (now, feedback.started_ms) {
        (Some(n), Some(s)) => n.saturating_sub(s),
        _ => 0,
    };
    let outcome = Outcome::from_response(status, code_details, latency);
    let levels = levels(feedback);
    let mut failed = [false; 3];
    let mut write = false;
    for (slot, level) in failed.iter_mut().zip(levels.iter()) {
        if let Some((_, rule, state)) = level {
            *slot = rule.is_failure(&outcome);
            write |= *slot || state.success_matters();
        }
    }
    if write && now.is_none() {
        now = Some(w.host.now_ms());
    }
    let service = &feedback.breakers.service;
    for (level, failed) in levels.iter().zip(failed.iter()) {
        let Some((resource, rule, Effective::Closed { .. })) = level else {
            continue;
        };
        let Some(Trigger::ErrorRate { interval_ms, .. }) = rule.error_rate() else {
            continue;
        };
        let mut local = feedback.breakers.local.borrow_mut();
        match now {
            Some(t) => local.add(*resource, &rule.tag, interval_ms, *failed, t),
            None => local.add_success(*resource, &rule.tag, interval_ms),
        }
    }
    let (true, Some(now_ms)) = (write, now) else {
        return;
    };
    let result = cas_update(&w.host, &feedback.breakers.state_key, |bytes| {
        let mut table = Table::decode(bytes);
        let mut changed = false;
        let mut transitions = Vec::new();
        for (level, failed) in levels.iter().zip(failed.iter()) {
            let Some((resource, rule, _)) = level else {
                continue;
            };
            let (transition, wrote) = table.record(*resource, rule, *failed, now_ms);
            changed |= wrote;
            if let Some(t) = transition {
                transitions.push((*resource, Rc::clone(rule), t));
            }
        }
        if changed {
            Update::Write(table.encode(), transitions)
        } else {
            Update::Keep(transitions)
        }
    });
    match result {
        Ok(transitions) => {
            for (resource, rule, t) in transitions {
                note(&w.counters, service, resource, &rule, t);
            }
        }
        Err(e) => {
            w.counters.inc(Counter::BreakerContended);
            log::warn!("circuit breaker of {service}: outcome not recorded: {e}");
        }
    }
}

/// A fault-detection probe's answer: an outcome of the instance's breaker.
pub fn record_probe<H: Host>(
    w: &mut Worker<H>,
    key: &ServiceKey,
    upstream: &str,
    failed: bool,
    now_ms: u64,
) {
    let Some(breakers) = w.lookup_breakers(key).map(Rc::clone) else {
        return;
    };
    let Some(rule) = breakers.rules.instance.clone() else {
        return;
    };
    let resource = Resource::Instance(upstream);
    let result = cas_update(&w.host, &breakers.state_key, |bytes| {
        let mut table = Table::decode(bytes);
        let (transition, wrote) = table.record(resource, &rule, failed, now_ms);
        if wrote {
            Update::Write(table.encode(), transition)
        } else {
            Update::Keep(transition)
        }
    });
    match result {
        Ok(Some(t)) => note(&w.counters, key, resource, &rule, t),
        Ok(None) => {}
        Err(e) => {
            w.counters.inc(Counter::BreakerContended);
            log::warn!("circuit breaker of {key}: probe result not recorded: {e}");
        }
    }
}

/// The breakers a response feeds: (resource, rule, state when the request passed), per level.
type Level3<'f> = [Option<(Resource<'f>, &'f Rc<Rule>, Effective)>; 3];

fn levels(f: &Feedback) -> Level3<'_> {
    let [instance, service, method] = f.states;
    let rules = &f.breakers.rules;
    [
        rules
            .instance
            .as_ref()
            .zip(instance)
            .map(|(r, s)| (Resource::Instance(&f.upstream), r, s)),
        rules
            .service
            .as_ref()
            .zip(service)
            .map(|(r, s)| (Resource::Service, r, s)),
        f.method
            .as_ref()
            .zip(method)
            .map(|((r, p), s)| (Resource::Method(p), r, s)),
    ]
}

/// Counts and logs a transition.
fn note(counters: &Counters, key: &ServiceKey, resource: Resource<'_>, rule: &Rule, t: Transition) {
    let counter = match (rule.level, t) {
        (Level::Instance, Transition::Opened | Transition::Reopened) => {
            Counter::BreakerInstanceOpen
        }
        (Level::Service, Transition::Opened | Transition::Reopened) => Counter::BreakerServiceOpen,
        (Level::Method, Transition::Opened | Transition::Reopened) => Counter::BreakerMethodOpen,
        (Level::Instance, Transition::HalfOpened) => Counter::BreakerInstanceHalfOpen,
        (Level::Service, Transition::HalfOpened) => Counter::BreakerServiceHalfOpen,
        (Level::Method, Transition::HalfOpened) => Counter::BreakerMethodHalfOpen,
        (Level::Instance, Transition::Closed) => Counter::BreakerInstanceClose,
        (Level::Service, Transition::Closed) => Counter::BreakerServiceClose,
        (Level::Method, Transition::Closed) => Counter::BreakerMethodClose,
    };
    if rule.dry_run {
        if matches!(t, Transition::Opened | Transition::Reopened) {
            counters.inc(Counter::BreakerDryRunOpen);
        }
    } else {
        counters.inc(counter);
    }
    let what = match resource {
        Resource::Instance(a) => format!("instance {a}"),
        Resource::Service => "the service".to_string(),
        Resource::Method(p) => format!("method {p}"),
    };
    log::info!(
        "circuit breaker {}{} of {key}, {what}: {t}",
        rule.name,
        if rule.dry_run { " (dry run)" } else { "" }
    );
}

/// Every worker's tick: merges its ERROR_RATE counts into shared data.
pub fn flush_windows<H: Host>(w: &mut Worker<H>, now_ms: u64) {
    for key in w.breakers.keys() {
        let Some(breakers) = w.breakers.peek(&key).map(Rc::clone) else {
            continue;
        };
        let mut local = breakers.local.borrow_mut();
        // Every tick, so unstamped successes land midway between this tick and the last.
        local.stamp(now_ms);
        if local.is_empty() {
            continue;
        }
        let merged = cas_update(&w.host, &breakers.window_key, |bytes| {
            let mut windows = Windows::decode(bytes);
            windows.merge(&local, now_ms);
            Update::Write(windows.encode(), ())
        });
        match merged {
            Ok(()) => local.clear(),
            Err(e) => log::warn!("ERROR_RATE counts of {key} kept for the next tick: {e}"),
        }
    }
}

/// The leader's tick: ERROR_RATE checks, stale entries dropped, the open-breakers gauge.
pub fn lead<H: Host>(w: &mut Worker<H>, watched: &[ServiceKey], now_ms: u64) {
    if w.config.breaker.is_none() {
        return;
    }
    let settle_ms = u64::try_from(w.tick_period().as_millis())
        .unwrap_or(500)
        .saturating_add(100);
    let mut open = 0u64;
    let mut seen: FxHashMap<(ServiceKey, String), Schedule> = FxHashMap::default();
    for key in watched {
        let Some(breakers) = w.lookup_breakers(key).map(Rc::clone) else {
            continue;
        };
        let rules = &breakers.rules;
        // Instances Polaris no longer lists lose their entries too (else a request would keep
        // reading a non-empty table for an instance that is gone).
        let listed: Option<Vec<String>> = match w.lookup(key) {
            Some(Known::Ready(s)) => Some(s.instances.iter().map(|i| i.upstream.clone()).collect()),
            _ => None,
        };
        let current = |entry_key: &str, tag: &str| {
            let gone = match (entry_key.strip_prefix("i "), &listed) {
                (Some(addr), Some(listed)) => !listed.iter().any(|u| u == addr),
                _ => false,
            };
            !gone && rule_of(rules, entry_key, tag).is_some()
        };
        let (bytes, cas) = w.host.get(&breakers.state_key);
        if cas.is_none() && !rules.is_empty() {
            // Envoy checks no CAS on a missing key, so two workers creating it at once could
            // lose an update: the leader creates it empty first (reading an empty value copies
            // nothing into the VM).
            if let Err(e) = w.host.set(&breakers.state_key, b"", None) {
                log::warn!("cannot create the breaker state of {key}: {e:?}");
            }
        }
        let table = Table::decode(bytes.as_deref());
        open += u64::try_from(
            table.not_closed(|k, t| rule_of(rules, k, t).is_some_and(|r| !r.dry_run)),
        )
        .unwrap_or(0);
        if table.entries_stale(&current) {
            let _ = cas_update(&w.host, &breakers.state_key, |bytes| {
                let mut t = Table::decode(bytes);
                if t.retain(&current) {
                    Update::Write(t.encode(), ())
                } else {
                    Update::Keep(())
                }
            });
        }
        if !rules.all().any(|r| r.error_rate().is_some()) {
            continue;
        }
        let (bytes, _) = w.host.get(&breakers.window_key);
        let windows = Windows::decode(bytes.as_deref());
        for (entry_key, series) in &windows.series {
            let Some(rule) = rule_of(rules, entry_key, &series.tag) else {
                continue;
            };
            let Some(Trigger::ErrorRate {
                percent,
                interval_ms,
                minimum,
            }) = rule.error_rate()
            else {
                continue;
            };
            let id = (key.clone(), format!("{entry_key}\t{}", series.tag));
            let mut schedule = w.schedules.remove(&id).unwrap_or_default();
            let verdict = schedule.step(series, (percent, interval_ms, minimum), now_ms, settle_ms);
            seen.insert(id, schedule);
            if let Verdict::Open { requests, failures } = verdict {
                let Some(resource) = resource_of(entry_key) else {
                    continue;
                };
                let tripped = cas_update(&w.host, &breakers.state_key, |bytes| {
                    let mut t = Table::decode(bytes);
                    match t.trip(resource, rule, now_ms) {
                        Some(tr) => Update::Write(t.encode(), Some(tr)),
                        None => Update::Keep(None),
                    }
                });
                if let Ok(Some(t)) = tripped {
                    log::info!(
                        "circuit breaker {} of {key}: ERROR_RATE {failures} of {requests} failed \
                         (threshold {percent} %, minimum {minimum})",
                        rule.name
                    );
                    note(&w.counters, key, resource, rule, t);
                }
            }
        }
    }
    w.schedules = seen;
    w.counters.set(Gauge::BreakersOpen, open);
}

/// The rule an entry (key and tag) was written under, if it still applies.
fn rule_of<'r>(rules: &'r Rules, entry_key: &str, tag: &str) -> Option<&'r Rc<Rule>> {
    let rule = match entry_key.split_once(' ') {
        Some(("i", _)) => rules.instance.as_ref(),
        Some(("m", _)) => rules.methods.iter().find(|r| r.tag == tag),
        _ if entry_key == "s" => rules.service.as_ref(),
        _ => None,
    };
    rule.filter(|r| r.tag == tag)
}

fn resource_of(entry_key: &str) -> Option<Resource<'_>> {
    match entry_key.split_once(' ') {
        Some(("i", a)) => Some(Resource::Instance(a)),
        Some(("m", p)) => Some(Resource::Method(p)),
        _ if entry_key == "s" => Some(Resource::Service),
        _ => None,
    }
}
