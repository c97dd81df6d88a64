//! Per-VM state: one Envoy thread's configuration, decoded snapshots, compiled rules and plans,
//! shared by its root context (ticks, the leader's refresh) and its HTTP streams.

use std::rc::Rc;
use std::time::Duration;

use rustc_hash::FxHashMap;

use super::admission::Admission;
use super::breakers::Breakers;
use super::discover::Link;
use super::host::{Host, Store};
use super::leader::Leader;
use super::limiter::Limiter;
use super::limiter_link::{self, GlobalSync};
use super::metrics::Counters;
use super::node;
use super::probe_queue::Probing;
use super::provider::Provider;
use super::queue::Queue;
use super::store;
use crate::breaker::probe::{self, Detector};
use crate::breaker::window::Schedule;
use crate::breaker::{self, Table};
use crate::config::Config;
use crate::destination::DestinationMemo;
use crate::lb::Rng;
use crate::limit::Limits;
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
    pub(super) limits: Cache<Limits>,
    pub(super) limiter: Limiter,
    /// The leader's polaris-limiter streams.
    pub(super) global: GlobalSync,
    /// This Envoy's own service (`caller`), when configured.
    pub(super) caller: Option<ServiceKey>,
    /// Routing plans by destination, rebuilt on first use after their instances or rules change.
    pub(super) plans: FxHashMap<ServiceKey, Plan>,
    pub(super) destinations: DestinationMemo,
    pub(super) rng: Rng,
    pub(super) counters: Counters,
    pub(super) leader: Leader,
    /// Compiled circuit-breaker rules by destination.
    pub(super) breakers: Cache<Rc<Breakers>>,
    /// The last decoded breaker state of each service, by the CAS it was read at.
    pub(super) tables: FxHashMap<ServiceKey, (u32, Rc<Table>)>,
    /// The table of a service without breaker state (shared, so reading it allocates nothing).
    pub(super) empty_table: Rc<Table>,
    /// The leader's ERROR_RATE checks in progress.
    pub(super) schedules: FxHashMap<(ServiceKey, String), Schedule>,
    /// Compiled fault-detection rules by service (the leader's).
    pub(super) detectors: Cache<Rc<Vec<Detector>>>,
    /// The leader's probes.
    pub(super) probing: Probing,
    /// The instance this Envoy registers, when configured.
    pub(super) provider: Option<Provider>,
    /// Requests paused for their unirate turn.
    pub(super) queue: Queue,
    /// When the next full tick (lease, refresh, resync, metrics) is due: ticks come faster
    /// while requests are queued or a held window ends sooner, and those in between only
    /// resume requests and drop ended grants.
    pub(super) next_full_tick: u64,
    /// The timer period last asked of the host while shorter than `tick`, for a due time: a
    /// queued request's turn or the end of a window whose tokens this worker holds.
    pub(super) fine_tick: Option<Duration>,
    /// What requests for unknown services may cost; which services requests use.
    pub(super) admission: Admission,
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
        let mut tick = (config.refresh_interval / 2).clamp(Duration::from_millis(50), MAX_TICK);
        if config.limiter.is_some() {
            // The leader reports global-limit usage on ticks.
            tick = tick.min(limiter_link::SYNC_TICK);
        }
        let counters = Counters::define(&host);
        let caller = (!config.caller.service.is_empty()).then(|| {
            ServiceKey::new(
                config.caller.namespace.clone(),
                config.caller.service.clone(),
            )
        });
        let mut worker = Worker {
            leader: Leader::new(&config, tick),
            provider: config.provider.clone().map(|p| Provider::new(p, tick)),
            location_pending: !config.nearby.has_location(),
            host,
            config,
            link,
            cache: ServiceCache::default(),
            rules: Cache::default(),
            limits: Cache::default(),
            limiter: Limiter::default(),
            global: GlobalSync::default(),
            caller,
            plans: FxHashMap::default(),
            destinations: DestinationMemo::default(),
            rng: Rng::new(seed),
            counters,
            breakers: Cache::default(),
            tables: FxHashMap::default(),
            empty_table: Rc::new(Table::default()),
            schedules: FxHashMap::default(),
            detectors: Cache::default(),
            probing: Probing::default(),
            queue: Queue::default(),
            next_full_tick: 0,
            fine_tick: None,
            admission: Admission::default(),
            tick,
            seen_generation: 0,
        };
        worker.limiter.global_on = worker.config.limiter.is_some();
        // Held tokens are then spent without the clock, the timer kept pointed at their windows'
        // ends (`Worker::retime`).
        worker.limiter.clockless = worker.host.reads_are_costly();
        Ok(worker)
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

    /// The host is done with this context (Envoy's `on_done`). False while a deregistration is
    /// out: the host should wait for [`Worker::on_call_result`] and then [`Worker::done_leaving`].
    pub fn on_done(&mut self) -> bool {
        let done = match &mut self.provider {
            Some(p) => p.on_done(&self.host, &self.link, &self.counters),
            None => true,
        };
        self.limiter.on_tick(&self.host);
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
        self.caller.clone()
    }

    /// The service this Envoy fronts, whose rules `rate_limit.rules_of: local` applies: the
    /// provider's service when this listener registers one, else `caller`.
    pub(super) fn local_service(&self) -> Option<ServiceKey> {
        match &self.config.provider {
            Some(p) => Some(p.service.clone()),
            None => self.caller.clone(),
        }
    }

    /// Re-decodes every cached service and rule set whose shared entry changed since the last
    /// sync, and drops the plans built from them.
    pub(super) fn resync(&mut self) {
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
                if self.cache.peek(&key).is_none() {
                    self.admission.forget(&key);
                }
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
        let settings = &self.config.rate_limit_rules;
        for key in self.limits.keys() {
            sync(&self.host, &mut self.limits, Kind::RateLimit, &key, |b| {
                Limits::from_stored(&key, b, settings)
            });
        }
        for key in self.breakers.keys() {
            self.sync_breakers(&key);
        }
        for key in self.detectors.keys() {
            sync(
                &self.host,
                &mut self.detectors,
                Kind::FaultDetector,
                &key,
                |b| probe::compile(&key, b).map(Rc::new),
            );
        }
    }

    /// The compiled fault-detection rules of `key`, from shared data on a miss.
    pub(super) fn lookup_detectors(&mut self, key: &ServiceKey) -> Option<&Rc<Vec<Detector>>> {
        if self.detectors.peek(key).is_none() {
            sync(
                &self.host,
                &mut self.detectors,
                Kind::FaultDetector,
                key,
                |b| probe::compile(key, b).map(Rc::new),
            );
        }
        self.detectors.peek(key)
    }

    /// Recompiles the breaker rules of `key` if its shared entry changed.
    fn sync_breakers(&mut self, key: &ServiceKey) {
        let Some(settings) = self.config.breaker.as_ref().map(|b| &b.settings) else {
            return;
        };
        let who = &self.config.caller;
        sync(
            &self.host,
            &mut self.breakers,
            Kind::CircuitBreaker,
            key,
            |b| {
                breaker::Rules::compile(key, b, who, settings)
                    .map(|rules| Rc::new(Breakers::new(key.clone(), rules)))
            },
        );
    }

    /// The compiled breaker rules of `key`, filling the cache from shared data on a miss; `None`
    /// until the leader has fetched them.
    pub(super) fn lookup_breakers(&mut self, key: &ServiceKey) -> Option<&Rc<Breakers>> {
        if self.breakers.peek(key).is_none() {
            self.sync_breakers(key);
        }
        self.breakers.peek(key)
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

    /// The compiled rate-limit rules of `key`, filling the cache from shared data on a miss.
    pub(super) fn lookup_limits(&mut self, key: &ServiceKey) -> Option<&Limits> {
        if self.limits.peek(key).is_none() {
            let settings = &self.config.rate_limit_rules;
            sync(&self.host, &mut self.limits, Kind::RateLimit, key, |b| {
                Limits::from_stored(key, b, settings)
            });
        }
        self.limits.peek(key)
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

/// Brings one cached value of `kind` up to date with its shared entry; true when it was replaced
/// or dropped. An unusable entry keeps the last good value; an empty one (the leader dropped the
/// service for idleness) drops it.
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
    if bytes.is_empty() {
        let held = cache.peek(key).is_some();
        cache.remove(key);
        return held;
    }
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
