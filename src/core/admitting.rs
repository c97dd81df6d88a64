//! Admission steps that need the worker: the shared budget of first discoveries, publishing the
//! services in use, and the leader's sweep of idle ones (the state is in `admission`).

use super::host::Host;
use super::metrics::{Counter, Gauge};
use super::store::{self, Update};
use super::worker::Worker;
use crate::decision::Rejection;
use crate::model::{Kind, ServiceKey};
use crate::shared::{self, admission::Budget, admission::Seen, WatchList};

/// The leader looks for idle services at most this often.
const SWEEP_EVERY_MS: u64 = 1000;
/// The leader sums the shared-data bytes at most this often (it reads every entry).
const MEASURE_EVERY_MS: u64 = 5000;

/// Takes one first discovery from this Envoy's budget for the current second; the rejection when
/// it is used up (or the budget record is contended: the request is answered, the next retries).
pub(super) fn take_budget<H: Host>(w: &mut Worker<H>, key: &ServiceKey) -> Result<(), Rejection> {
    let per_second = w.config.admission.new_services_per_second;
    let second = w.host.now_ms() / 1000;
    let taken = w.admission.spent_second != Some(second)
        && store::cas_update(&w.host, shared::BUDGET_KEY, |bytes| {
            match Budget::decode(bytes).take(second, per_second) {
                Some(next) => Update::Write(next.encode(), true),
                None => Update::Keep(false),
            }
        })
        .unwrap_or(false);
    if taken {
        return Ok(());
    }
    w.admission.spent_second = Some(second);
    w.counters.inc(Counter::DiscoveryThrottled);
    Err(Rejection::DiscoveryThrottled {
        service: key.clone(),
        per_second,
    })
}

/// Publishes the services this worker routed to since the last time, at most a few times per
/// `idle_timeout` (a worker's tick).
pub(super) fn publish<H: Host>(w: &mut Worker<H>, now_ms: u64) {
    if now_ms < w.admission.next_publish_ms {
        return;
    }
    let idle_ms = millis(w.config.admission.idle_timeout);
    w.admission.next_publish_ms = now_ms.saturating_add((idle_ms / 4).clamp(100, 30_000));
    let fresh = w.admission.fresh();
    if fresh.is_empty() {
        return;
    }
    let written = store::cas_update(&w.host, shared::SEEN_KEY, |bytes| {
        let mut seen = Seen::decode(bytes);
        let mut changed = false;
        for key in &fresh {
            changed |= seen.touch(key, now_ms);
        }
        if changed {
            Update::Write(seen.encode(), ())
        } else {
            Update::Keep(())
        }
    });
    match written {
        Ok(()) => w.admission.published(),
        // Kept fresh: the next tick tries again.
        Err(e) => log::warn!("cannot record the services in use: {e}"),
    }
}

/// The leader's sweep: services of the watch list no request named for `idle_timeout` leave it,
/// and their shared entries are emptied. A service not yet in the record counts as seen now.
pub(super) fn sweep<H: Host>(w: &mut Worker<H>, now_ms: u64) {
    if now_ms < w.admission.next_sweep_ms {
        return;
    }
    w.admission.next_sweep_ms = now_ms.saturating_add(SWEEP_EVERY_MS);
    let idle_ms = millis(w.config.admission.idle_timeout);
    let keep: Vec<ServiceKey> = w
        .caller_key()
        .into_iter()
        .chain(w.local_service())
        .collect();
    let watched = store::watch_list(&w.host);
    w.counters
        .set(Gauge::WatchedServices, watched.services().len() as u64);
    if now_ms >= w.admission.next_measure_ms {
        w.admission.next_measure_ms = now_ms.saturating_add(MEASURE_EVERY_MS);
        w.counters
            .set(Gauge::SharedDataBytes, shared_bytes(&w.host, &watched));
    }
    let mut idle = Vec::new();
    let seen = store::cas_update(&w.host, shared::SEEN_KEY, |bytes| {
        let mut seen = Seen::decode(bytes);
        let mut changed = seen.retain(|k| watched.contains(k));
        idle.clear();
        for key in watched.services() {
            match seen.get(key) {
                None => changed |= seen.touch(key, now_ms),
                Some(last) if now_ms.saturating_sub(last) >= idle_ms && !keep.contains(key) => {
                    idle.push(key.clone());
                }
                Some(_) => {}
            }
        }
        if changed {
            Update::Write(seen.encode(), ())
        } else {
            Update::Keep(())
        }
    });
    if let Err(e) = seen {
        log::warn!("cannot read the services in use: {e}");
        return;
    }
    if idle.is_empty() {
        return;
    }
    let removed = store::cas_update(&w.host, shared::WATCH_KEY, |bytes| {
        let mut list = WatchList::decode(bytes);
        if list.remove_where(|k| idle.contains(k)) {
            Update::Write(list.encode().into_bytes(), true)
        } else {
            Update::Keep(false)
        }
    });
    match removed {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            log::warn!("cannot drop idle services from the watch list: {e}");
            return;
        }
    }
    for key in &idle {
        for kind in Kind::ALL {
            let slot = shared::resource_key(kind, key);
            if matches!(w.host.get(&slot).0, Some(b) if !b.is_empty()) {
                if let Err(e) = w.host.set(&slot, &[], None) {
                    log::warn!("cannot empty {} of idle {key}: {e:?}", kind.name());
                }
            }
        }
        w.counters.inc(Counter::ServicesDropped);
        log::info!("{key} left the watch list: no request named it for {idle_ms} ms");
    }
    if let Err(e) = store::increment(&w.host, shared::GEN_KEY) {
        log::warn!("cannot bump snapshot generation after dropping idle services: {e}");
    }
}

/// Bytes held by the values of every shared-data key the filter knows of: the fixed records and
/// each watched service's entries (an Envoy keeps a key once written; dropped services' keys
/// hold empty values).
fn shared_bytes<H: Host>(host: &H, watched: &WatchList) -> u64 {
    let len = |key: &str| host.get(key).0.map_or(0, |v| v.len() as u64);
    let fixed: u64 = [
        shared::LEASE_KEY,
        shared::SEQ_KEY,
        shared::WATCH_KEY,
        shared::GEN_KEY,
        shared::BUDGET_KEY,
        shared::SEEN_KEY,
    ]
    .iter()
    .map(|k| len(k))
    .sum();
    let per_service: u64 = watched
        .services()
        .iter()
        .map(|s| {
            Kind::ALL
                .iter()
                .map(|k| len(&shared::resource_key(*k, s)))
                .sum::<u64>()
                + len(&shared::breaker_key(s))
                + len(&shared::window_key(s))
        })
        .sum();
    fixed + per_service
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
