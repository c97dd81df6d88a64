//! The root context: configuration, the leader lease, timer-driven refreshes, worker resync.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use super::http::Http;
use super::metrics::Counter;
use super::worker::{grpc_failure, SharedWorker, Worker};
use super::{now_ms, store};
use crate::config::Config;
use crate::polaris::client;
use crate::shared::{self, lease};
use crate::snapshot::{Kind, Outcome, Refresher, Resource};

/// Ticks at most this far apart, so workers pick up a new snapshot quickly.
const MAX_TICK: Duration = Duration::from_millis(500);
/// A lease outlives this many ticks of its owner.
const LEASE_TICKS: u32 = 4;

pub struct Root {
    context_id: u32,
    /// Unique among every VM of this `vm_id` (from the shared `seq` counter).
    me: Option<u64>,
    worker: Option<SharedWorker>,
    refresher: Refresher,
    tick: Duration,
    leader: bool,
    /// Refresh calls in flight: token -> what was asked.
    pending: HashMap<u32, Resource>,
}

impl Root {
    pub fn new(context_id: u32) -> Root {
        Root {
            context_id,
            me: None,
            worker: None,
            refresher: Refresher::new(2000, 2000),
            tick: MAX_TICK,
            leader: false,
            pending: HashMap::new(),
        }
    }

    fn identity(&mut self) -> Option<u64> {
        if self.me.is_none() {
            self.me = store::increment(shared::SEQ_KEY);
        }
        self.me
    }

    /// Claims or renews the lease; true while we hold it.
    fn hold_lease(&mut self, now: u64) -> bool {
        let Some(me) = self.identity() else {
            return false;
        };
        let (current, cas) = store::get(shared::LEASE_KEY);
        if lease::step(current.as_deref(), me, now) == lease::LeaseStep::Follow {
            return false;
        }
        let ttl = u64::try_from((self.tick * LEASE_TICKS).as_millis()).unwrap_or(u64::MAX);
        let value = lease::Lease {
            owner: me,
            expires_ms: now.saturating_add(ttl),
        };
        store::set(shared::LEASE_KEY, value.encode().as_bytes(), cas).is_ok()
    }

    /// Every watched service's instances and rules, and the caller's own (outbound) rules.
    fn refresh(&mut self, worker: &Worker, now: u64) {
        let watched = store::watch_list();
        let mut resources: Vec<Resource> = watched
            .services()
            .iter()
            .flat_map(|s| Kind::ALL.map(|k| (k, s.clone())))
            .collect();
        if let Some(caller) = worker.caller_key() {
            let own = (Kind::Routing, caller);
            if !resources.contains(&own) {
                resources.push(own);
            }
        }
        for (resource, revision) in self.refresher.due(&resources, now) {
            let (kind, key) = &resource;
            match worker.dispatch_discover(*kind, key, &revision, worker.config.discover_timeout) {
                Ok(token) => {
                    self.pending.insert(token, resource);
                }
                Err(cause) => {
                    worker.metrics.inc(Counter::RefreshErrors);
                    log::warn!("refresh of {} of {key} not sent: {cause}", kind.name());
                    self.refresher.on_answer(&resource, Err(cause));
                }
            }
        }
    }
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(resource) = self.pending.remove(&token_id) else {
            return;
        };
        let (kind, key) = &resource;
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let worker = worker.borrow();
        worker.metrics.inc(Counter::Refreshes);
        let body = if status_code == 0 {
            hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size)
                .ok()
                .flatten()
                .ok_or_else(|| "empty gRPC answer".to_string())
        } else {
            Err(grpc_failure(status_code))
        };
        match self
            .refresher
            .on_answer(&resource, body.as_deref().map_err(Clone::clone))
        {
            Outcome::Store => {
                if let Ok(bytes) = &body {
                    if store::store_answer(*kind, key, bytes) {
                        worker.metrics.inc(Counter::SnapshotUpdates);
                        log::info!("{} of {key} updated", kind.name());
                    }
                }
            }
            Outcome::Unchanged => worker.metrics.inc(Counter::RefreshUnchanged),
            Outcome::Keep(e) => {
                worker.metrics.inc(Counter::RefreshErrors);
                log::warn!(
                    "refresh of {} of {key} failed, keeping the last good snapshot: {e}",
                    kind.name()
                );
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("{e}");
                return false;
            }
        };
        let Some(upstream) = client::envoy_grpc_service(&config.polaris_cluster) else {
            log::error!("invalid plugin configuration: field `polaris_cluster`: cannot be encoded");
            return false;
        };
        self.tick = (config.refresh_interval / 2).clamp(Duration::from_millis(50), MAX_TICK);
        self.refresher = Refresher::new(
            u64::try_from(config.refresh_interval.as_millis()).unwrap_or(u64::MAX),
            u64::try_from(config.discover_timeout.as_millis()).unwrap_or(u64::MAX),
        );
        let seed = now_ms() ^ (u64::from(self.context_id) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        let here = &config.nearby.location;
        log::info!(
            "configured: Polaris cluster {}, namespace {}, refresh every {:?}, location {}/{}/{}",
            config.polaris_cluster,
            config.namespace,
            config.refresh_interval,
            here.region,
            here.zone,
            here.campus
        );
        self.worker = Some(Rc::new(RefCell::new(Worker::new(
            config,
            upstream,
            seed,
            now_ms(),
        ))));
        if let Err(e) = hostcalls::set_tick_period(self.tick) {
            log::error!("cannot start the refresh timer: {e:?}");
            return false;
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now = now_ms();
        worker.borrow_mut().now_ms = now;
        worker.borrow_mut().settle_location(false);
        let leader = self.hold_lease(now);
        if leader != self.leader {
            log::info!(
                "root context {} {} the Polaris refresh lease",
                self.context_id,
                if leader { "holds" } else { "released" }
            );
            self.leader = leader;
        }
        if leader {
            self.refresh(&worker.borrow(), now);
        }
        let mut w = worker.borrow_mut();
        w.resync();
        w.metrics.flush();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(Http::new(context_id, worker)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
