//! Per-VM state shared by the root context and the HTTP contexts of one Envoy thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;

use super::metrics::{Counter, Metrics};
use super::store;
use crate::config::Config;
use crate::destination::DestinationMemo;
use crate::lb::Rng;
use crate::polaris::client;
use crate::routing::{Plan, RuleCache};
use crate::shared;
use crate::snapshot::{Kind, Known, Location, ServiceCache, ServiceKey};

pub type SharedWorker = Rc<RefCell<Worker>>;

pub struct Worker {
    pub config: Config,
    /// Encoded `GrpcService` for `proxy_grpc_call`.
    pub grpc_upstream: String,
    pub cache: ServiceCache,
    pub rules: RuleCache,
    /// Routing plans by destination, rebuilt on first use after their instances or rules change.
    pub plans: HashMap<ServiceKey, Plan>,
    pub destinations: DestinationMemo,
    pub rng: Rng,
    pub metrics: Metrics,
    /// Host time as of the last tick: the request path needs no finer clock than that.
    pub now_ms: u64,
    /// No location was configured: Envoy's node locality is read on first use (the node
    /// property is not available during `on_configure`).
    location_pending: bool,
    seen_generation: u64,
}

impl Worker {
    pub fn new(config: Config, grpc_upstream: String, seed: u64, now_ms: u64) -> Worker {
        let config_has_location = config.nearby.has_location();
        Worker {
            config,
            grpc_upstream,
            cache: ServiceCache::default(),
            rules: RuleCache::default(),
            plans: HashMap::new(),
            destinations: DestinationMemo::default(),
            rng: Rng::new(seed),
            metrics: Metrics::define(),
            location_pending: !config_has_location,
            now_ms,
            seen_generation: 0,
        }
    }

    /// Fills an unconfigured location from Envoy's node locality, once. A root context may not
    /// see the node property yet; a request always does, so a request's attempt is the last.
    pub fn settle_location(&mut self, from_request: bool) {
        if !self.location_pending {
            return;
        }
        let Some(here) = node_locality() else {
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

    pub fn caller_key(&self) -> Option<ServiceKey> {
        caller_key(&self.config)
    }

    /// Re-decodes every cached service and rule set whose shared entry changed since the last
    /// sync, and drops the plans built from them.
    pub fn resync(&mut self) {
        let generation = store::generation();
        if generation == self.seen_generation {
            return;
        }
        self.seen_generation = generation;
        for key in self.cache.keys() {
            let (bytes, cas) = store::get(&shared::resource_key(Kind::Instances, &key));
            let Some(bytes) = bytes else { continue };
            if cas.is_some() && cas == self.cache.cas(&key) {
                continue;
            }
            match self.cache.install_shared(&key, &bytes, cas) {
                Ok(()) => {
                    self.plans.remove(&key);
                }
                Err(e) => log::warn!("stored snapshot of {key} is unusable, keeping the last: {e}"),
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
            let (bytes, cas) = store::get(&shared::resource_key(Kind::Routing, &key));
            let Some(bytes) = bytes else { continue };
            if cas.is_some() && cas == self.rules.cas(&key) {
                continue;
            }
            if install_rules(&mut self.rules, &key, &bytes, cas, &self.config.caller) {
                if Some(&key) == caller.as_ref() {
                    self.plans.clear();
                } else {
                    self.plans.remove(&key);
                }
            }
        }
    }

    /// Sends `Discover` (INSTANCE) for `key` from the current context; the answer arrives in
    /// that context's `on_grpc_call_response`.
    pub fn dispatch_discover(
        &self,
        kind: Kind,
        key: &ServiceKey,
        revision: &str,
        timeout: Duration,
    ) -> Result<u32, String> {
        let message = client::discover_request(kind, key, revision);
        let metadata: Vec<(&str, &[u8])> = match &self.config.token {
            Some(token) => vec![(client::TOKEN_METADATA, token.as_bytes())],
            None => Vec::new(),
        };
        self.metrics.inc(Counter::DiscoverRequests);
        hostcalls::dispatch_grpc_call(
            &self.grpc_upstream,
            client::GRPC_SERVICE,
            client::DISCOVER_METHOD,
            metadata,
            Some(&message),
            timeout,
        )
        .map_err(|e| {
            format!(
                "cannot call Polaris through cluster {}: {e:?}",
                self.config.polaris_cluster
            )
        })
    }
}

/// This Envoy's own service, whose outbound rules apply to every destination.
pub fn caller_key(config: &Config) -> Option<ServiceKey> {
    let c = &config.caller;
    (!c.service.is_empty()).then(|| ServiceKey::new(c.namespace.clone(), c.service.clone()))
}

/// Compiles stored rules, logging the ones skipped; false if the answer was unusable.
pub fn install_rules(
    rules: &mut RuleCache,
    key: &ServiceKey,
    bytes: &[u8],
    cas: Option<u32>,
    caller: &crate::routing::Caller,
) -> bool {
    match rules.install(key, bytes, cas, caller) {
        Ok(skipped) => {
            for e in skipped {
                log::warn!("routing of {key}: {e}");
            }
            true
        }
        Err(e) => {
            log::warn!("stored routing of {key} is unusable, keeping the last: {e}");
            false
        }
    }
}

/// The compiled rules of `key`, filling the cache from shared data on a miss.
pub fn lookup_rules<'a>(
    rules: &'a mut RuleCache,
    key: &ServiceKey,
    caller: &crate::routing::Caller,
) -> Option<&'a crate::routing::Rules> {
    if rules.get(key).is_none() {
        if let (Some(bytes), cas) = store::get(&shared::resource_key(Kind::Routing, key)) {
            install_rules(rules, key, &bytes, cas, caller);
        }
    }
    rules.get(key)
}

/// The cached answer for `key`, filling the cache from shared data on a miss.
pub fn lookup<'a>(cache: &'a mut ServiceCache, key: &ServiceKey, now_ms: u64) -> Option<&'a Known> {
    if cache.get(key, now_ms).is_none() {
        if let (Some(bytes), cas) = store::get(&shared::resource_key(Kind::Instances, key)) {
            if let Err(e) = cache.install_shared(key, &bytes, cas) {
                log::warn!("stored snapshot of {key} is unusable: {e}");
            }
        }
    }
    cache.get(key, now_ms)
}

/// The failure text of the last gRPC answer, for logs and 503 bodies.
pub fn grpc_failure(status: u32) -> String {
    let message = hostcalls::get_grpc_status()
        .ok()
        .and_then(|(_, m)| m)
        .filter(|m| !m.is_empty());
    match message {
        Some(m) => format!("Polaris unreachable (gRPC status {status}: {m})"),
        None => format!("Polaris unreachable (gRPC status {status})"),
    }
}

/// The part of `envoy.config.core.v3.Node` we read: `locality` (field 4).
#[derive(Clone, PartialEq, prost::Message)]
struct EnvoyNode {
    #[prost(message, optional, tag = "4")]
    locality: Option<EnvoyLocality>,
}

/// `envoy.config.core.v3.Locality`.
#[derive(Clone, PartialEq, prost::Message)]
struct EnvoyLocality {
    #[prost(string, tag = "1")]
    region: String,
    #[prost(string, tag = "2")]
    zone: String,
    #[prost(string, tag = "3")]
    sub_zone: String,
}

/// Envoy's node locality, the default location for nearby routing; `None` when the node
/// property cannot be read. The property is the serialized Node message (Envoy does not walk into
/// its fields by path): `xds.node` in current Envoy, `node` in older ones.
fn node_locality() -> Option<Location> {
    use prost::Message;
    let node = [vec!["xds", "node"], vec!["node"]]
        .into_iter()
        .find_map(|path| {
            hostcalls::get_property(path)
                .ok()
                .flatten()
                .and_then(|bytes| EnvoyNode::decode(bytes.as_slice()).ok())
        })?;
    let locality = node.locality.unwrap_or_default();
    Some(Location {
        region: locality.region,
        zone: locality.zone,
        campus: locality.sub_zone,
    })
}
