//! Fault detection from the leader: when a service's INSTANCE breaker rule enables
//! `faultDetectConfig`, its FAULT_DETECTOR rules are discovered and every instance is probed on
//! each rule's interval through the configured ORIGINAL_DST probe cluster (`dispatch_http_call`,
//! the instance's `ip:port` in the upstream header). Each answer is an outcome of that instance's
//! breaker, so a dead instance that gets no user traffic is ejected, and re-admitted once it
//! answers again (after the sleep window, its probes count as the half-open probes).
//!
//! Only the leader probes; only addresses from Polaris are probed (the rule cannot name one), and
//! no route leads to the probe cluster, so a client can never steer it.

use std::rc::Rc;
use std::time::Duration;

use super::breaking;
use super::host::{Host, HttpCall};
use super::metrics::Counter;
use super::probe_queue::Pending;
use super::worker::Worker;
use crate::breaker::probe::Detector;
use crate::model::{Kind, ServiceKey};
use crate::snapshot::Known;

/// Most probes in flight at once, over every service.
pub const MAX_IN_FLIGHT: usize = 512;

/// The services whose INSTANCE breaker rule asks for fault detection (their FAULT_DETECTOR rules
/// are discovered); none without a probe cluster.
pub fn services<H: Host>(w: &mut Worker<H>, watched: &[ServiceKey]) -> Vec<(Kind, ServiceKey)> {
    let configured = w
        .config
        .breaker
        .as_ref()
        .is_some_and(|b| b.probe_cluster.is_some());
    if !configured {
        return Vec::new();
    }
    watched
        .iter()
        .filter(|key| wants_probes(w, key))
        .map(|key| (Kind::FaultDetector, key.clone()))
        .collect()
}

fn wants_probes<H: Host>(w: &mut Worker<H>, key: &ServiceKey) -> bool {
    w.lookup_breakers(key)
        .and_then(|b| b.rules.instance.as_ref())
        .is_some_and(|r| r.fault_detect)
}

/// The leader's tick: sends the probes that are due.
pub fn probe<H: Host>(w: &mut Worker<H>, watched: &[ServiceKey], now_ms: u64) {
    let Some(cluster) = w
        .config
        .breaker
        .as_ref()
        .and_then(|b| b.probe_cluster.clone())
    else {
        return;
    };
    expire(w, now_ms);
    let mut live = Vec::new();
    for key in watched {
        if !wants_probes(w, key) {
            continue;
        }
        let Some(detectors) = w.lookup_detectors(key).map(Rc::clone) else {
            continue;
        };
        let targets: Vec<(String, u32, String)> = match w.lookup(key) {
            Some(Known::Ready(s)) => s
                .instances
                .iter()
                .filter(|i| !i.isolated)
                .map(|i| (i.host.clone(), i.port, i.upstream.clone()))
                .collect(),
            _ => continue,
        };
        for detector in detectors.iter() {
            let slot = (key.clone(), detector.name.clone());
            live.push(slot.clone());
            if w.probing.due.get(&slot).is_some_and(|due| now_ms < *due) {
                continue;
            }
            w.probing
                .due
                .insert(slot, now_ms.saturating_add(detector.interval_ms));
            let detector = Rc::new(detector.clone());
            for (host, port, upstream) in &targets {
                send(w, &cluster, key, &detector, (host, *port, upstream), now_ms);
            }
        }
    }
    w.probing.due.retain(|slot, _| live.contains(slot));
}

fn send<H: Host>(
    w: &mut Worker<H>,
    cluster: &str,
    key: &ServiceKey,
    detector: &Rc<Detector>,
    (host, port, upstream): (&str, u32, &str),
    now_ms: u64,
) {
    let busy = w
        .probing
        .pending
        .values()
        .any(|p| p.upstream == upstream && p.service == *key);
    if busy || w.probing.pending.len() >= MAX_IN_FLIGHT {
        return;
    }
    let headers = detector.request(&w.config.upstream_header, host, port);
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let call = HttpCall {
        cluster,
        headers: &headers,
        body: detector.body(),
        timeout: Duration::from_millis(detector.timeout_ms),
    };
    match w.host.http_call(call) {
        Ok(token) => {
            w.counters.inc(Counter::ProbesSent);
            w.probing.pending.insert(
                token,
                Pending {
                    service: key.clone(),
                    upstream: upstream.to_string(),
                    detector: Rc::clone(detector),
                    sent_ms: now_ms,
                },
            );
        }
        Err(e) => log::warn!(
            "fault detection of {key}: probe {} of {upstream} not sent through cluster {cluster}: {e}",
            detector.name
        ),
    }
}

/// Drops probes whose answer never came (Envoy enforces the timeout; this only bounds memory).
fn expire<H: Host>(w: &mut Worker<H>, now_ms: u64) {
    w.probing.pending.retain(|_, p| {
        now_ms
            < p.sent_ms
                .saturating_add(p.detector.timeout_ms.saturating_mul(2))
                .saturating_add(5_000)
    });
}

/// A probe's answer (`status` `None`: the call failed or timed out); false if the token was
/// not a probe.
pub fn on_result<H: Host>(
    w: &mut Worker<H>,
    token: u32,
    status: Option<u32>,
    body: &[u8],
    now_ms: u64,
) -> bool {
    let Some(p) = w.probing.pending.remove(&token) else {
        return false;
    };
    let ok = p.detector.succeeded(status, body);
    if !ok {
        w.counters.inc(Counter::ProbesFailed);
        log::debug!(
            "probe {} of {} ({}) failed: status {status:?}",
            p.detector.name,
            p.upstream,
            p.service
        );
    }
    breaking::record_probe(w, &p.service, &p.upstream, !ok, now_ms);
    true
}
