//! The leader's work: one root context per Envoy (of one VM per worker plus the main thread's)
//! holds a lease in shared data and is the only one that refreshes from Polaris; it stores each
//! changed answer, and every worker resyncs from the store.

use std::collections::HashMap;
use std::time::Duration;

use super::discover::Link;
use super::host::{CallResult, Host, Store};
use super::metrics::{Counter, Counters};
use super::store::{self, Update};
use crate::config::Config;
use crate::shared::{self, lease};
use crate::snapshot::{Outcome, Refresher, Resource};

/// A lease outlives this many ticks of its owner.
const LEASE_TICKS: u32 = 4;
/// ... and at least this long (4 default ticks), so short ticks (global-limit reports) do not let a loaded
/// machine's late timer move the lease (and the limiter streams with it).
const MIN_LEASE: Duration = Duration::from_secs(2);

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
            lease_ttl_ms: millis((tick * LEASE_TICKS).max(MIN_LEASE)),
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

impl Leader {
    /// Claims or renews the lease, then refreshes what is due while we hold it. `extra` are
    /// resources refreshed beside every watched service's `config.kinds()`: this Envoy's own
    /// service's routing (its outbound rules), fault-detection rules where breakers want them.
    pub fn tick<H: Host>(
        &mut self,
        host: &H,
        link: &Link,
        config: &Config,
        counters: &Counters,
        extra: Vec<Resource>,
        now: u64,
    ) {
        let holding = self.hold_lease(host, now);
        if holding != self.holding {
            log::info!(
                "{} the Polaris refresh lease",
                if holding { "now holding" } else { "released" }
            );
            self.holding = holding;
        }
        if !holding {
            return;
        }
        let watched = store::watch_list(host);
        let kinds = config.kinds();
        let mut resources: Vec<Resource> = watched
            .services()
            .iter()
            .flat_map(|s| kinds.iter().map(|k| (*k, s.clone())))
            .collect();
        for r in extra {
            if !resources.contains(&r) {
                resources.push(r);
            }
        }
        for (resource, revision) in self.refresher.due(&resources, now) {
            let (kind, key) = &resource;
            match link.discover(
                host,
                counters,
                (*kind, key),
                &revision,
                config.discover_timeout,
            ) {
                Ok(token) => {
                    self.pending.insert(token, resource);
                }
                Err(cause) => {
                    counters.inc(Counter::RefreshErrors);
                    log::warn!("refresh of {} of {key} not sent: {cause}", kind.name());
                    self.refresher.on_answer(&resource, Err(cause.to_string()));
                }
            }
        }
    }

    /// True while we hold the lease.
    fn hold_lease<S: Store + ?Sized>(&mut self, host: &S, now: u64) -> bool {
        if self.me.is_none() {
            self.me = store::increment(host, shared::SEQ_KEY).ok();
        }
        let Some(me) = self.me else {
            return false;
        };
        let ttl = self.lease_ttl_ms;
        let claimed = store::cas_update(host, shared::LEASE_KEY, |current| {
            if lease::step(current, me, now) == lease::LeaseStep::Follow {
                return Update::Keep(false);
            }
            let value = lease::Lease {
                owner: me,
                expires_ms: now.saturating_add(ttl),
            };
            Update::Write(value.encode().into_bytes(), true)
        });
        // Losing every CAS race means other VMs are claiming: follow until the next tick.
        claimed.unwrap_or(false)
    }

    /// An answer to one of the leader's calls; false if the token was not ours.
    pub fn on_call_result<S: Store + ?Sized>(
        &mut self,
        host: &S,
        counters: &Counters,
        token: u32,
        result: CallResult,
    ) -> bool {
        let Some(resource) = self.pending.remove(&token) else {
            return false;
        };
        let (kind, key) = &resource;
        counters.inc(Counter::Refreshes);
        let answer = result.as_deref().map_err(ToString::to_string);
        match self.refresher.on_answer(&resource, answer) {
            Outcome::Store => {
                if let Ok(bytes) = &result {
                    if store::store_answer(host, *kind, key, bytes) {
                        counters.inc(Counter::SnapshotUpdates);
                        log::info!("{} of {key} updated", kind.name());
                    }
                }
            }
            Outcome::Unchanged => counters.inc(Counter::RefreshUnchanged),
            Outcome::Keep(e) => {
                counters.inc(Counter::RefreshErrors);
                log::warn!(
                    "refresh of {} of {key} failed, keeping the last good snapshot: {e}",
                    kind.name()
                );
            }
        }
        true
    }
}
