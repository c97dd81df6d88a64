//! The leader's work: one root context per Envoy (of one VM per worker plus the main thread's)
//! holds a lease in shared data and is the only one that refreshes from Polaris; it stores each
//! changed answer, and every worker resyncs from the store.

use std::collections::HashMap;
use std::time::Duration;

use super::host::{CallResult, Host};
use super::metrics::Counter;
use super::store::{self, Update};
use super::worker::Worker;
use crate::config::Config;
use crate::shared::{self, lease};
use crate::snapshot::{Outcome, Refresher, Resource};

/// A lease outlives this many ticks of its owner.
const LEASE_TICKS: u32 = 4;

/// The leader's bookkeeping in one VM (whether or not it holds the lease now).
pub struct Leader {
    /// Unique among every VM of this `vm_id` (from the shared `seq` counter).
    me: Option<u64>,
    refresher: Refresher,
    lease_ttl_ms: u64,
    holding: bool,
    /// Refresh calls in flight: token -> what was asked.
    pending: HashMap<u32, Resource>,
}

impl Leader {
    pub fn new(config: &Config, tick: Duration) -> Leader {
        Leader {
            me: None,
            refresher: Refresher::new(
                millis(config.refresh_interval),
                millis(config.discover_timeout),
            ),
            lease_ttl_ms: millis(tick * LEASE_TICKS),
            holding: false,
            pending: HashMap::new(),
        }
    }

    /// Whether this VM held the lease at its last tick.
    pub fn holds_lease(&self) -> bool {
        self.holding
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Claims or renews the lease, then refreshes what is due while we hold it.
pub(super) fn tick<H: Host>(w: &mut Worker<H>, now: u64) {
    let holding = hold_lease(w, now);
    if holding != w.leader.holding {
        log::info!(
            "{} the Polaris refresh lease",
            if holding { "now holding" } else { "released" }
        );
        w.leader.holding = holding;
    }
    if holding {
        refresh(w, now);
    }
}

/// True while we hold the lease.
fn hold_lease<H: Host>(w: &mut Worker<H>, now: u64) -> bool {
    if w.leader.me.is_none() {
        w.leader.me = store::increment(&w.host, shared::SEQ_KEY).ok();
    }
    let Some(me) = w.leader.me else {
        return false;
    };
    let ttl = w.leader.lease_ttl_ms;
    let claimed = store::cas_update(&w.host, shared::LEASE_KEY, |current| {
        if lease::step(current, me, now) == lease::LeaseStep::Follow {
            return Update::Keep(false);
        }
        let value = lease::Lease {
            owner: me,
            expires_ms: now.saturating_add(ttl),
        };
        Update::Write(value.encode().into_bytes(), true)
    });
    // Losing a CAS race means another VM just claimed or renewed: follow until the next tick.
    claimed.unwrap_or(false)
}

/// Every watched service's kinds, and the caller's own (outbound) rules.
fn refresh<H: Host>(w: &mut Worker<H>, now: u64) {
    let watched = store::watch_list(&w.host);
    let kinds = w.config.kinds();
    let mut resources: Vec<Resource> = watched
        .services()
        .iter()
        .flat_map(|s| kinds.iter().map(|k| (*k, s.clone())))
        .collect();
    if let Some(caller) = w.caller_key() {
        let own = (crate::snapshot::Kind::Routing, caller);
        if !resources.contains(&own) {
            resources.push(own);
        }
    }
    for (resource, revision) in w.leader.refresher.due(&resources, now) {
        let (kind, key) = &resource;
        match w.dispatch_discover(*kind, key, &revision, w.config.discover_timeout) {
            Ok(token) => {
                w.leader.pending.insert(token, resource);
            }
            Err(cause) => {
                w.counters.inc(Counter::RefreshErrors);
                log::warn!("refresh of {} of {key} not sent: {cause}", kind.name());
                w.leader
                    .refresher
                    .on_answer(&resource, Err(cause.to_string()));
            }
        }
    }
}

/// An answer to one of the leader's calls; false if the token was not ours.
pub(super) fn on_call_result<H: Host>(w: &mut Worker<H>, token: u32, result: CallResult) -> bool {
    let Some(resource) = w.leader.pending.remove(&token) else {
        return false;
    };
    let (kind, key) = &resource;
    w.counters.inc(Counter::Refreshes);
    let answer = result.as_deref().map_err(ToString::to_string);
    match w.leader.refresher.on_answer(&resource, answer) {
        Outcome::Store => {
            if let Ok(bytes) = &result {
                if store::store_answer(&w.host, *kind, key, bytes) {
                    w.counters.inc(Counter::SnapshotUpdates);
                    log::info!("{} of {key} updated", kind.name());
                }
            }
        }
        Outcome::Unchanged => w.counters.inc(Counter::RefreshUnchanged),
        Outcome::Keep(e) => {
            w.counters.inc(Counter::RefreshErrors);
            log::warn!(
                "refresh of {} of {key} failed, keeping the last good snapshot: {e}",
                kind.name()
            );
        }
    }
    true
}

impl<H: Host> Worker<H> {
    /// An answer to a call this VM's root context made.
    pub fn on_call_result(&mut self, token: u32, result: CallResult) {
        on_call_result(self, token, result);
    }
}
