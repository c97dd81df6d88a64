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
use crate::snapshot::{Kind, Known, ServiceCache, ServiceKey};

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
    seen_generation: u64,
}

impl Worker {
    pub fn new(config: Config, grpc_upstream: String, seed: u64, now_ms: u64) -> Worker {
        Worker {
            config,
            grpc_upstream,
            cache: ServiceCache::default(),
            rules: RuleCache::default(),
            plans: HashMap::new(),
            destinations: DestinationMemo::default(),
            rng: Rng::new(seed),
            metrics: Metrics::define(),
            now_ms,
            seen_generation: 0,
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
