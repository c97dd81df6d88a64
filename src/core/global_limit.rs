//! GLOBAL rate limits through polaris-limiter, the leader's side: its streams
//! (`polaris.metric.v2.RateLimitGRPCV2/Service`), what it sends on them and what it does with the
//! answers. The request path is `core::global_take`; the pure record and messages `limit::global`.
//!
//! - Requests never wait on the network: a worker takes tokens from its Envoy's record of the
//!   window in shared data ([`GlobalWindow`]), by CAS, as for local windows. The first take of a
//!   new window key adds it to the registry (`polaris-wasm/grl/list`) the leader works from.
//! - Only the leader talks to the limiter: per limiter endpoint one stream; per window key one
//!   INIT (target, clientId, one total per amount); then on every tick (~40 ms) one ACQUIRE per
//!   stream reporting what every worker took since the last report. Each answer's `left` becomes
//!   the records' budget. An answer with an error code (400214: the server no longer knows the
//!   counter, and closes the stream) or a closed stream makes it INIT again; `TimeAdjust` every
//!   30 s sets the clock offset global windows are aligned with.
//! - A record the leader does not refresh (limiter down, stream stuck, no leader) goes stale
//!   after a second and the rule's `failover` applies on the request path.

use std::collections::HashMap;
use std::time::Duration;

use super::global_take::{read_list, record_key, update_list, Entry, ANSWERED_KEY};
use super::host::{GrpcCall, Host, Store};
use super::limiter_link::{Bound, Endpoint, GlobalSync, Link, Target, LINK_IDLE_MS};
use super::metrics::{Counter as Metric, Gauge};
use super::store::{self, Update};
use super::worker::Worker;
use crate::config::LimiterConfig;
use crate::lb::murmur3::murmur3_64;
use crate::limit::global::{self, Answer, Global, GlobalWindow};
use crate::limit::window_start;
use crate::model::{Kind, ServiceKey};
use crate::polaris::client::envoy_grpc_service;
use crate::polaris::CallError;

/// This Envoy's clientId (one per Envoy, kept across leader changes).
pub const CLIENT_ID_KEY: &str = "polaris-wasm/grl/client-id";
/// Server clock minus local clock (ms, i64 LE), from the last TimeAdjust.
pub const OFFSET_KEY: &str = "polaris-wasm/grl/offset";
/// How often the clock offset is measured again (polaris-go: 30 s).
const ADJUST_EVERY_MS: u64 = 30_000;
/// An INIT unanswered this long is sent again; a failed stream is reopened after this long.
const RETRY_MS: u64 = 1000;
/// A stream that answered nothing this long while we reported is closed and reopened.
const SILENT_MS: u64 = 3000;
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// The limiter services the leader must keep discovered (with `address_cluster`).
pub fn services<H: Host>(w: &mut Worker<H>) -> Vec<(Kind, ServiceKey)> {
    let Some(LimiterConfig::Discovered { service, .. }) = &w.config.limiter else {
        return Vec::new();
    };
    let mut out = vec![(Kind::Instances, service.clone())];
    for entry in read_list(&w.host) {
        let key = entry.service_key();
        let cluster = w
            .lookup_limits(&key)
            .and_then(|l| l.rules.iter().find(|r| r.id == entry.rule))
            .and_then(|r| r.global.as_ref())
            .and_then(|g| g.cluster.clone());
        if let Some(c) = cluster {
            if !out.iter().any(|(_, s)| *s == c) {
                out.push((Kind::Instances, c));
            }
        }
    }
    out
}

/// Every worker's tick: the clock offset for the request path; the leader's sync.
pub fn tick<H: Host>(w: &mut Worker<H>, now: u64) {
    if w.config.limiter.is_none() {
        return;
    }
    if let Some(b) = w.host.get(OFFSET_KEY).0 {
        if let Ok(b) = <[u8; 8]>::try_from(b.as_slice()) {
            w.limiter.offset_ms = i64::from_le_bytes(b);
        }
    }
    if !w.leader.holds_lease() {
        if !w.global.links.is_empty() {
            log::info!("not the leader any more: closing the limiter streams");
            let host = &w.host;
            w.global.close_all(host);
        }
        return;
    }
    lead(w, now);
    let up = w.global.links.iter().filter(|l| l.up(now)).count();
    w.counters
        .set(Gauge::LimiterStreamsUp, u64::try_from(up).unwrap_or(0));
}

/// What one registry entry needs: its endpoint, target and records.
fn resolve<H: Host>(w: &mut Worker<H>, entry: &Entry) -> Option<(Endpoint, Target, Vec<Bound>)> {
    let key = entry.service_key();
    let rule = w
        .lookup_limits(&key)?
        .rules
        .iter()
        .find(|r| r.id == entry.rule && r.global.is_some())?;
    let (g, amounts) = (rule.global.clone()?, rule.amounts.clone());
    let label_hash = murmur3_64(entry.label.as_bytes(), 0);
    let bounds = amounts
        .iter()
        .map(|a| Bound {
            record: record_key(&key, &entry.rule, a.window_ms, label_hash),
            window_ms: a.window_ms,
            max: a.max,
            global: g.clone(),
        })
        .collect();
    let target = (key, entry.label.clone());
    let endpoint = endpoint(w, &g, &target)?;
    Some((endpoint, target, bounds))
}

/// The limiter a window key goes to: the configured cluster, or an instance of the discovered
/// limiter service picked by the key's hash (every Envoy picks the same one).
fn endpoint<H: Host>(w: &mut Worker<H>, g: &Global, target: &Target) -> Option<Endpoint> {
    match w.config.limiter.clone()? {
        LimiterConfig::Cluster(cluster) => Some(Endpoint {
            upstream: envoy_grpc_service(&cluster)?,
            address: None,
            name: cluster,
        }),
        LimiterConfig::Discovered {
            via,
            header,
            service,
        } => {
            let service = g.cluster.clone().unwrap_or(service);
            let known = w.lookup(&service)?;
            let crate::snapshot::Known::Ready(snapshot) = known else {
                return None;
            };
            let mut picks: Vec<&str> = snapshot
                .instances
                .iter()
                .filter(|i| i.is_selectable() && i.healthy)
                .map(|i| i.upstream.as_str())
                .collect();
            picks.sort_unstable();
            let n = u64::try_from(picks.len()).ok().filter(|n| *n > 0)?;
            let hash = murmur3_64(
                format!("{}#{}#{}", target.0.name, target.0.namespace, target.1).as_bytes(),
                0,
            );
            let pick = picks.get(usize::try_from(hash % n).ok()?)?.to_string();
            Some(Endpoint {
                upstream: envoy_grpc_service(&via)?,
                name: format!("{service} at {pick} via {via}"),
                address: Some((header, pick)),
            })
        }
    }
}

fn client_id<H: Host>(w: &mut Worker<H>) -> Option<String> {
    if let Some(id) = &w.global.client_id {
        return Some(id.clone());
    }
    let fresh = format!("polaris-wasm-{:016x}", w.rng.next_u64());
    let id = store::cas_update(&w.host, CLIENT_ID_KEY, |bytes| match bytes {
        Some(b) if !b.is_empty() => Update::Keep(String::from_utf8_lossy(b).into_owned()),
        _ => Update::Write(fresh.clone().into_bytes(), fresh.clone()),
    })
    .ok()?;
    w.global.client_id = Some(id.clone());
    Some(id)
}

/// The leader's tick: streams open, INITs sent, usage reported.
fn lead<H: Host>(w: &mut Worker<H>, now: u64) {
    let entries = read_list(&w.host);
    if entries.is_empty() && w.global.links.is_empty() {
        return;
    }
    let Some(client_id) = client_id(w) else {
        return;
    };
    for link in &mut w.global.links {
        link.wanted.clear();
    }
    let mut gone = Vec::new();
    let server_now = now.saturating_add_signed(w.limiter.offset_ms);
    for entry in &entries {
        let Some((endpoint, target, bounds)) = resolve(w, entry) else {
            if w.lookup_limits(&entry.service_key())
                .is_some_and(|l| !l.rules.iter().any(|r| r.id == entry.rule))
            {
                gone.push(entry.clone());
            }
            continue;
        };
        if bounds.iter().all(|b| idle(&w.host, b, server_now, now)) {
            // No request for two of its longest windows: no longer reported (the server expires
            // the counter); the next request registers the key again.
            gone.push(entry.clone());
            continue;
        }
        let links = &mut w.global.links;
        let i = match links.iter().position(|l| l.endpoint == endpoint) {
            Some(i) => i,
            None => {
                links.push(Link::new(endpoint));
                links.len() - 1
            }
        };
        if let Some(link) = links.get_mut(i) {
            link.used_ms = now;
            link.wanted.entry(target).or_default().extend(bounds);
        }
    }
    if !gone.is_empty() {
        forget_entries(&w.host, &gone);
    }
    let offset = w.limiter.offset_ms;
    let Worker {
        host,
        global,
        counters,
        ..
    } = w;
    let GlobalSync { links, adjusts, .. } = global;
    links.retain_mut(|l| {
        let keep = now.saturating_sub(l.used_ms) < LINK_IDLE_MS;
        if !keep {
            if let Some(t) = l.token.take() {
                let _ = host.grpc_stream_close(t);
            }
        }
        keep
    });
    for link in links.iter_mut() {
        let wanted = &link.wanted;
        link.ready.retain(|t| wanted.contains_key(t));
        link.inits.retain(|t, _| wanted.contains_key(t));
        link.counters.retain(|_, bounds| {
            bounds.retain(|b| wanted.values().flatten().any(|w| w.record == b.record));
            !bounds.is_empty()
        });
        sync_link(host, counters, link, adjusts, &client_id, now, offset);
    }
    // A quiet stream is still an answering one: with no key in use nothing is reported, and a key
    // coming back must find the limiter answering rather than fail over (a PASS burst).
    if links.iter().any(|l| l.answering(now)) {
        if let Err(e) = host.set(ANSWERED_KEY, &now.to_le_bytes(), None) {
            log::warn!("limiter answer time not stored: {e:?}");
        }
    }
}

/// Whether no request took from `b`'s record for two of its windows; such a record is reset
/// (by CAS, so a take in between keeps it) to one that remembers only the client count, and the
/// next take registers it again. A record only ever passed by FAILOVER_PASS has no window: it is
/// idle two windows after it was made (`now_local`), or the key would be reported for ever.
fn idle<S: Store + ?Sized>(store: &S, b: &Bound, server_now: u64, now_local: u64) -> bool {
    let horizon = b.window_ms.saturating_mul(2);
    store::cas_update(store, &b.record, |bytes| {
        let w = GlobalWindow::decode(bytes);
        let recent = match w.start {
            0 => w.created_ms == 0 || w.created_ms.saturating_add(horizon) >= now_local,
            start => start.saturating_add(horizon) >= server_now,
        };
        if recent {
            return Update::Keep(false);
        }
        let reset = GlobalWindow {
            clients: w.clients,
            ..GlobalWindow::default()
        };
        Update::Write(reset.encode(), true)
    })
    .unwrap_or(false)
}

/// Drops window keys of rules that are gone or idle.
fn forget_entries<S: Store + ?Sized>(store: &S, gone: &[Entry]) {
    let _ = update_list(store, |list| {
        let before = list.len();
        list.retain(|e| !gone.contains(e));
        list.len() != before
    });
}

fn sync_link<H: Host>(
    host: &H,
    counters: &super::metrics::Counters,
    link: &mut Link,
    adjusts: &mut HashMap<u32, u64>,
    client_id: &str,
    now: u64,
    offset: i64,
) {
    if let Some(t) = link.token {
        if link
            .unanswered_since
            .is_some_and(|since| now.saturating_sub(since) > SILENT_MS)
        {
            log::warn!(
                "limiter {}: no answer for {SILENT_MS} ms, reopening the stream",
                link.endpoint.name
            );
            counters.inc(Metric::LimiterSyncErrors);
            let _ = host.grpc_stream_close(t);
            link.token = None;
            link.forget();
        }
    }
    if link.token.is_none() {
        if now < link.retry_at_ms {
            return;
        }
        let metadata: Vec<(&str, &[u8])> = link
            .endpoint
            .address
            .iter()
            .map(|(h, a)| (h.as_str(), a.as_bytes()))
            .collect();
        match host.grpc_stream_open(
            &link.endpoint.upstream,
            global::SERVICE,
            global::STREAM_METHOD,
            &metadata,
        ) {
            Ok(t) => {
                log::info!("limiter {}: stream opened", link.endpoint.name);
                counters.inc(Metric::LimiterStreamOpens);
                link.token = Some(t);
                link.opened_ms = now;
                link.last_recv_ms = 0;
                link.forget();
            }
            Err(e) => {
                log::warn!(
                    "limiter {}: cannot open the stream: {e}",
                    link.endpoint.name
                );
                counters.inc(Metric::LimiterSyncErrors);
                link.retry_at_ms = now.saturating_add(RETRY_MS);
                return;
            }
        }
    }
    let Some(token) = link.token else {
        return;
    };
    if link.last_adjust_ms == 0 || now.saturating_sub(link.last_adjust_ms) >= ADJUST_EVERY_MS {
        link.last_adjust_ms = now;
        let metadata: Vec<(&str, &[u8])> = link
            .endpoint
            .address
            .iter()
            .map(|(h, a)| (h.as_str(), a.as_bytes()))
            .collect();
        let message = global::time_adjust_request();
        match host.grpc_unary(GrpcCall {
            upstream: &link.endpoint.upstream,
            service: global::SERVICE,
            method: global::TIME_ADJUST_METHOD,
            metadata: &metadata,
            message: &message,
            timeout: CALL_TIMEOUT,
        }) {
            Ok(t) => {
                adjusts.insert(t, now);
            }
            Err(e) => log::warn!("limiter {}: TimeAdjust not sent: {e}", link.endpoint.name),
        }
    }
    // INIT what is not initialized (again after RETRY_MS without an answer).
    for (target, bounds) in &link.wanted {
        if link.ready.contains(target) {
            continue;
        }
        if link
            .inits
            .get(target)
            .is_some_and(|sent| now.saturating_sub(*sent) < RETRY_MS)
        {
            continue;
        }
        let mut amounts: Vec<(u32, u64)> = bounds.iter().map(|b| (b.max, b.window_ms)).collect();
        amounts.dedup();
        let Some(g) = bounds.first().map(|b| &b.global) else {
            continue;
        };
        let message = global::init_request(&target.0, &target.1, client_id, &amounts, g);
        match host.grpc_stream_send(token, &message, false) {
            Ok(()) => {
                counters.inc(Metric::LimiterInits);
                link.unanswered_since.get_or_insert(now);
                link.inits.insert(target.clone(), now);
            }
            Err(e) => {
                log::warn!("limiter {}: INIT not sent: {e}", link.endpoint.name);
                counters.inc(Metric::LimiterSyncErrors);
            }
        }
    }
    // Report what was taken since the last report, for every answered counter.
    if link.client_key == 0 || link.counters.is_empty() {
        return;
    }
    let server_now = now.saturating_add_signed(offset);
    let mut uses = Vec::with_capacity(link.counters.len());
    for (key, bounds) in &link.counters {
        let mut used = 0u32;
        for b in bounds {
            let start = window_start(server_now, b.window_ms);
            let delta = store::cas_update(host, &b.record, |bytes| {
                let (w, delta) = GlobalWindow::decode(bytes).report(start);
                if delta == 0 {
                    Update::Keep(0)
                } else {
                    Update::Write(w.encode(), delta)
                }
            })
            .unwrap_or(0);
            used = used.saturating_add(delta);
        }
        uses.push((*key, used));
    }
    uses.sort_unstable();
    let message = global::acquire_request(link.client_key, &uses, server_now);
    match host.grpc_stream_send(token, &message, false) {
        Ok(()) => {
            counters.inc(Metric::LimiterReports);
            link.unanswered_since.get_or_insert(now);
        }
        Err(e) => {
            log::warn!("limiter {}: ACQUIRE not sent: {e}", link.endpoint.name);
            counters.inc(Metric::LimiterSyncErrors);
        }
    }
}

/// Applies one server figure to every record bound to it.
fn apply<S: Store + ?Sized>(
    store: &S,
    bounds: &[Bound],
    left: &global::Left,
    server_ms: u64,
    now: u64,
) {
    for b in bounds {
        let result = store::cas_update(store, &b.record, |bytes| {
            let w = GlobalWindow::decode(bytes).apply(
                left.left,
                left.clients,
                server_ms,
                b.window_ms,
                now,
                b.max,
                &b.global,
            );
            Update::Write(w.encode(), ())
        });
        if let Err(e) = result {
            log::warn!("global window {} not updated: {e}", b.record);
        }
    }
}

impl<H: Host> Worker<H> {
    /// Whether a gRPC stream token is one of the limiter streams.
    pub fn owns_stream(&self, token: u32) -> bool {
        self.global.owns_stream(token)
    }

    /// A message on a stream this VM opened.
    pub fn on_stream_message(&mut self, token: u32, message: &[u8]) {
        let now = self.host.now_ms();
        let offset = self.limiter.offset_ms;
        let Worker {
            host,
            global,
            counters,
            ..
        } = self;
        let Some(link) = global.links.iter_mut().find(|l| l.token == Some(token)) else {
            return;
        };
        link.last_recv_ms = now;
        link.unanswered_since = None;
        if let Err(e) = host.set(ANSWERED_KEY, &now.to_le_bytes(), None) {
            log::warn!("limiter answer time not stored: {e:?}");
        }
        let Some(answer) = global::decode_answer(message) else {
            log::warn!("limiter {}: undecodable message", link.endpoint.name);
            counters.inc(Metric::LimiterSyncErrors);
            return;
        };
        let server = |ms: u64| {
            if ms == 0 {
                now.saturating_add_signed(offset)
            } else {
                ms
            }
        };
        match answer {
            Answer::Init {
                code,
                target,
                client_key,
                lefts,
                server_ms,
            } => {
                let Some(target) = target else {
                    counters.inc(Metric::LimiterSyncErrors);
                    return;
                };
                if !global::is_success(code) {
                    log::warn!(
                        "limiter {}: INIT of {} `{}` answered code {code}",
                        link.endpoint.name,
                        target.0,
                        target.1
                    );
                    counters.inc(Metric::LimiterSyncErrors);
                    return;
                }
                link.client_key = client_key;
                link.inits.remove(&target);
                link.ready.insert(target.clone());
                let Some(bounds) = link.wanted.get(&target).cloned() else {
                    return;
                };
                for left in &lefts {
                    let window_ms = u64::from(left.duration_s.unwrap_or(0)) * 1000;
                    let mine: Vec<Bound> = bounds
                        .iter()
                        .filter(|b| b.window_ms == window_ms)
                        .cloned()
                        .collect();
                    apply(host, &mine, left, server(server_ms), now);
                    let slot = link.counters.entry(left.counter_key).or_default();
                    for b in mine {
                        if !slot.iter().any(|x| x.record == b.record) {
                            slot.push(b);
                        }
                    }
                }
            }
            Answer::Acquire {
                code,
                lefts,
                server_ms,
            } => {
                if !global::is_success(code) {
                    log::warn!(
                        "limiter {}: ACQUIRE answered code {code}{}: initializing again",
                        link.endpoint.name,
                        if code == global::CODE_UNKNOWN_COUNTER {
                            " (unknown counter)"
                        } else {
                            ""
                        }
                    );
                    counters.inc(Metric::LimiterSyncErrors);
                    link.forget();
                    return;
                }
                for left in &lefts {
                    if let Some(bounds) = link.counters.get(&left.counter_key) {
                        apply(host, bounds, left, server(server_ms), now);
                    }
                }
            }
            Answer::Other => {}
        }
    }

    /// A stream this VM opened ended (`status` 0: the server closed it cleanly).
    pub fn on_stream_close(&mut self, token: u32, status: u32, message: Option<String>) {
        let now = self.host.now_ms();
        let Some(link) = self
            .global
            .links
            .iter_mut()
            .find(|l| l.token == Some(token))
        else {
            return;
        };
        log::warn!(
            "limiter {}: stream closed (gRPC status {status}{}): initializing again",
            link.endpoint.name,
            message.map(|m| format!(": {m}")).unwrap_or_default()
        );
        self.counters.inc(Metric::LimiterSyncErrors);
        link.token = None;
        link.forget();
        // A clean close (after an unknown-counter answer) reopens at once; a failure waits.
        link.retry_at_ms = if status == 0 {
            now
        } else {
            now.saturating_add(RETRY_MS)
        };
    }

    /// The answer to a TimeAdjust call; false if the token is not one.
    pub(super) fn on_time_adjust(
        &mut self,
        token: u32,
        result: &Result<Vec<u8>, CallError>,
    ) -> bool {
        let Some(sent) = self.global.adjusts.remove(&token) else {
            return false;
        };
        let now = self.host.now_ms();
        match result {
            Ok(bytes) => match global::clock_offset(bytes, sent, now) {
                Some(offset) => {
                    self.limiter.offset_ms = offset;
                    if let Err(e) = self.host.set(OFFSET_KEY, &offset.to_le_bytes(), None) {
                        log::warn!("clock offset not stored: {e:?}");
                    }
                }
                None => self.counters.inc(Metric::LimiterSyncErrors),
            },
            Err(e) => {
                log::warn!("limiter TimeAdjust failed: {e}");
                self.counters.inc(Metric::LimiterSyncErrors);
            }
        }
        true
    }
}
