//! Per-VM state: one Envoy thread's configuration, decoded snapshots, compiled rules and plans,
//! shared by its root context (ticks, the leader's refresh) and its HTTP streams.

use std::collections::HashMap;
use std::time::Duration;

use super::discover::Link;
use super::host::{CallResult, Host, Store};
use super::leader::Leader;
use super::metrics::Counters;
use super::node;
use super::provider::Provider;
use super::store;
use crate::config::Config;
use crate::destination::DestinationMemo;
use crate::lb::Rng;
use crate::model::{Kind, Location, ServiceKey};
use crate::routing::{Plan, Rules};
use crate::shared;
use crate::snapshot::{Cache, Known, ServiceCache};

/// Ticks at most this far apart, so workers pick up a new snapshot quickly.
pub const MAX_TICK: Duration = Duration::from_millis(500);

/// A configuration the core cannot run with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unusable(pub String);

pub struct Worker<H> {
    pub(super) host: H,
    pub(super) config: Config,
    pub(super) link: Link,
    pub(super) cache: ServiceCache,
    pub(super) rules: Cache<Rules>,
    /// Routing plans by destination, rebuilt on first use after their instances or rules change.
    pub(super) plans: HashMap<ServiceKey, Plan>,
    pub(super) destinations: DestinationMemo,
    pub(super) rng: Rng,
    pub(super) counters: Counters,
    pub(super) leader: Leader,
    /// The instance this Envoy registers, when configured.
    pub(super) provider: Option<Provider>,
    /// How often the host should call `on_tick`.
    tick: Duration,
    /// No location was configured: Envoy's node locality is read on first use (the node
    /// property is not available during `on_configure`).
    location_pending: bool,
    seen_generation: u64,
}

impl<H: Host> Worker<H> {
    /// A worker for `config`; `seed` makes this VM's random picks its own.
    pub fn new(host: H, config: Config, seed: u64) -> Result<Worker<H>, Unusable> {
        let Some(link) = Link::new(&config) else {
            return Err(Unusable(
                "invalid plugin configuration: field `polaris_cluster`: cannot be encoded".into(),
            ));
        };
        let tick = (config.refresh_interval / 2).clamp(Duration::from_millis(50), MAX_TICK);
        let counters = Counters::define(&host);
        Ok(Worker {
            leader: Leader::new(&config, tick),
            provider: config.provider.clone().map(|p| Provider::new(p, tick)),
            location_pending: !config.nearby.has_location(),
            host,
            config,
            link,
            cache: ServiceCache::default(),
            rules: Cache::default(),
            plans: HashMap::new(),
            destinations: DestinationMemo::default(),
            rng: Rng::new(seed),
            counters,
            tick,
            seen_generation: 0,
        })
    }

    pub fn tick_period(&self) -> Duration {
        self.tick
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The timer: the leader's work when we hold the lease, then resync and metrics.
    pub fn on_tick(&mut self) {
        let now = self.host.now_ms();
        self.settle_location(false);
        let caller = self.caller_key();
        self.leader.tick(
            &self.host,
            &self.link,
            &self.config,
            &self.counters,
            caller,
            now,
        );
        if let Some(p) = &mut self.provider {
            let here = &self.config.nearby.location;
            p.tick(&self.host, &self.link, &self.counters, here, now);
        }
        self.resync();
        self.counters.flush(&self.host);
    }

    /// An answer to a call this VM's root context made.
    pub fn on_call_result(&mut self, token: u32, result: CallResult) {
        if let Some(p) = self.provider.as_mut().filter(|p| p.owns(token)) {
            p.on_call_result(&self.host, &self.link, &self.counters, token, result);
            return;
        }
        self.leader
            .on_call_result(&self.host, &self.counters, token, result);
    }

    /// An answer to an HTTP callout this VM's root context made: the status, or why none came.
    pub fn on_http_result(&mut self, token: u32, status: Result<u32, String>) {
        if let Some(p) = &mut self.provider {
            p.on_http_result(&self.host, &self.link, &self.counters, token, status);
        }
    }

    /// The host is done with this context (Envoy's `on_done`). False while a deregistration is
    /// out: the host should wait for [`Worker::on_call_result`] and then [`Worker::done_leaving`].
    pub fn on_done(&mut self) -> bool {
        let done = match &mut self.provider {
            Some(p) => p.on_done(&self.host, &self.link, &self.counters),
            None => true,
        };
        self.counters.flush(&self.host);
        done
    }

    /// Whether the answer with `token` ended the wait `on_done` asked for.
    pub fn done_leaving(&mut self, token: u32) -> bool {
        let done = self
            .provider
            .as_mut()
            .is_some_and(|p| p.done_leaving(token));
        if done {
            self.counters.flush(&self.host);
        }
        done
    }

    /// Fills an unconfigured location from Envoy's node locality, once. A root context may not
    /// see the node property yet; a request always does, so a request's attempt is the last.
    pub(super) fn settle_location(&mut self, from_request: bool) {
        if !self.location_pending {
            return;
        }
        let Some(here) = node_locality(&self.host) else {
            self.location_pending = !from_request;
            return;
        };
        self.location_pending = false;
        if !here.is_empty() {
            log::info!(
                "location {}/{}/{} from Envoy node locality",
                here.region,
                here.zone,
                here.campus
            );
            self.config.nearby.location = here;
            self.plans.clear();
        }
    }

    /// This Envoy's own service, whose outbound rules apply to every destination.
    pub(super) fn caller_key(&self) -> Option<ServiceKey> {
        let c = &self.config.caller;
        (!c.service.is_empty()).then(|| ServiceKey::new(c.namespace.clone(), c.service.clone()))
    }

    /// Re-decodes every cached service and rule set whose shared entry changed since the last
    /// sync, and drops the plans built from them.
    fn resync(&mut self) {
        let generation = store::generation(&self.host);
        if generation == self.seen_generation {
            return;
        }
        self.seen_generation = generation;
        for key in self.cache.keys() {
            if sync(&self.host, &mut self.cache, Kind::Instances, &key, |b| {
                Known::from_stored(&key, b)
            }) {
                self.plans.remove(&key);
            }
        }
        let caller = self.caller_key();
        let mut keys = self.rules.keys();
        if let Some(c) = &caller {
            if !keys.contains(c) {
                keys.push(c.clone());
            }
        }
        for key in keys {
            let who = &self.config.caller;
            if sync(&self.host, &mut self.rules, Kind::Routing, &key, |b| {
                Rules::compile(&key, b, who)
            }) {
                if Some(&key) == caller.as_ref() {
                    self.plans.clear();
                } else {
                    self.plans.remove(&key);
                }
            }
        }
    }

    /// The cached answer for `key`, filling the cache from shared data on a miss.
    pub(super) fn lookup(&mut self, key: &ServiceKey) -> Option<&Known> {
        let host = &self.host;
        if self.cache.get(key, || host.now_ms()).is_none() {
            sync(host, &mut self.cache, Kind::Instances, key, |b| {
                Known::from_stored(key, b)
            });
        }
        self.cache.get(key, || host.now_ms())
    }

    /// The compiled rules of `key`, filling the cache from shared data on a miss.
    pub(super) fn lookup_rules(&mut self, key: &ServiceKey) -> Option<&Rules> {
        if self.rules.peek(key).is_none() {
            let who = &self.config.caller;
            sync(&self.host, &mut self.rules, Kind::Routing, key, |b| {
                Rules::compile(key, b, who)
            });
        }
        self.rules.peek(key)
    }
}

/// Brings one cached value of `kind` up to date with its shared entry; true when it was replaced.
/// An unusable entry keeps the last good value.
fn sync<S: Store + ?Sized, T, E: std::fmt::Display>(
    store: &S,
    cache: &mut Cache<T>,
    kind: Kind,
    key: &ServiceKey,
    build: impl FnOnce(&[u8]) -> Result<T, E>,
) -> bool {
    let (Some(bytes), cas) = store.get(&shared::resource_key(kind, key)) else {
        return false;
    };
    match cache.install_shared(key, &bytes, cas, build) {
        Ok(replaced) => replaced,
        Err(e) => {
            log::warn!(
                "stored {} of {key} is unusable, keeping the last: {e}",
                kind.name()
            );
            false
        }
    }
}

/// Envoy's node locality, the default location for nearby routing; `None` when the node
/// property cannot be read.
fn node_locality<H: Host>(host: &H) -> Option<Location> {
    node::read(host).map(|n| n.locality)
}
