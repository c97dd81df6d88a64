//! The native build's own upstream cluster (`envoy.clusters.dynamic_modules`, `cluster_name:
//! polaris`): Polaris's instances as Envoy hosts, so the filter hands each pick over as
//! Envoy's upstream override host instead of writing the upstream header for an ORIGINAL_DST
//! cluster to parse (`make bench`: setup `dyncluster`).
//!
//! - The host set is every instance of every watched service, read from the process-wide store
//!   the filter's workers fill ([`crate::store`]), synced on the main thread (Envoy adds hosts
//!   there only): at init, then whenever the store's snapshot generation or watch list moves
//!   (a small thread of ours polls them and wakes the main thread through the cluster's
//!   scheduler).
//! - Each Envoy worker learns the cluster's hosts a little after the store has them (Envoy posts
//!   host updates to its workers): the first requests of a service just discovered on a worker,
//!   or to an instance registered a moment ago, can name a host that worker does not hold yet.
//!   Envoy then asks the cluster's load balancer ([`WorkerLb`]), which asks for a sync at once
//!   and answers "pending" (Envoy's asynchronous host selection); the worker's next host update
//!   ends the selection with the host. One still waiting after [`PENDING_TTL`] (its instance
//!   left Polaris meanwhile) gets no host (503) at the worker's next host update or next wait,
//!   or Envoy's route timeout ends it first.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use polaris_wasm::model::{Kind, ServiceKey};
use polaris_wasm::shared::{self, WatchList};
use polaris_wasm::snapshot::{decode_instances, Discovered};

use crate::balancer::{self, Decided};
use crate::ffi::cluster::{
    ClusterHandle, ClusterScheduler, HostPtr, LbContext, LbHandle, WorkerHost,
};
use crate::store;

/// The `cluster_name` this module answers to.
pub const CLUSTER_NAME: &str = "polaris";

/// How often the thread looks at the store for changes to sync.
const POLL: Duration = Duration::from_millis(50);

/// How long a host stays after its instance left Polaris: workers pick from their own snapshot
/// copy, resynced at their next tick (at most `core::worker::MAX_TICK`, 500 ms, before a pick),
/// so a pick may name it a little longer, and reaches it, as the header build's would.
const GRACE: Duration = Duration::from_secs(5);

/// How long a request waits for its pick to reach its worker's hosts before it gets no host.
pub const PENDING_TTL: Duration = Duration::from_secs(3);

/// The cluster's config: nothing to configure but the name.
#[derive(Debug)]
pub struct ClusterConfig;

impl ClusterConfig {
    /// Rejects (logged naming the field) any name but [`CLUSTER_NAME`] and any config.
    pub fn new(name: &[u8], config: &[u8]) -> Option<ClusterConfig> {
        let name = String::from_utf8_lossy(name);
        if name != CLUSTER_NAME {
            log::error!(
                "cluster_name: unknown cluster {name:?} (this module's cluster is {CLUSTER_NAME:?})"
            );
            return None;
        }
        let config = String::from_utf8_lossy(config);
        if !matches!(config.trim(), "" | "{}") {
            log::error!(
                "cluster_config: the {CLUSTER_NAME} cluster takes no config, got {config:?}"
            );
            return None;
        }
        Some(ClusterConfig)
    }
}

/// One cluster: the hosts it holds, and the thread that tells the main thread to sync them.
pub struct Cluster {
    hosts: Mutex<HostSet<HostPtr>>,
    wake: Arc<Wake>,
    watcher: Mutex<Option<Watcher>>,
}

/// The way to the main thread's [`Cluster::sync`] from any thread, while the cluster lives
/// (workers' load balancers may outlive it: then it does nothing).
#[derive(Default)]
struct Wake(Mutex<Option<ClusterScheduler>>);

impl Wake {
    fn scheduler(&self) -> MutexGuard<'_, Option<ClusterScheduler>> {
        // Only ever replaced whole.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sync_soon(&self) {
        if let Some(s) = self.scheduler().as_ref() {
            s.commit(0);
        }
    }
}

struct Watcher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster {
            hosts: Mutex::new(HostSet::default()),
            wake: Arc::new(Wake::default()),
            watcher: Mutex::new(None),
        }
    }

    fn hosts(&self) -> MutexGuard<'_, HostSet<HostPtr>> {
        // Main thread only; a panic mid-sync leaves a map that the next sync corrects.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Main thread, after the first sync: starts the thread that wakes [`Cluster::sync`].
    pub fn watch(&self, handle: ClusterHandle) {
        let Some(scheduler) = handle.scheduler() else {
            log::error!("cluster {CLUSTER_NAME}: Envoy gave no scheduler; hosts stay as at start");
            return;
        };
        *self.wake.scheduler() = Some(scheduler);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("polaris-hosts".into())
            .spawn(move || watch(&wake, &flag));
        match spawned {
            Ok(thread) => {
                let mut w = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
                *w = Some(Watcher { stop, thread });
            }
            Err(e) => log::error!("cluster {CLUSTER_NAME}: cannot start its thread: {e}"),
        }
    }

    /// Main thread: makes the cluster's hosts the instances the store holds (those that left
    /// it stay for [`GRACE`]).
    pub fn sync(&self, handle: ClusterHandle) {
        let mut hosts = self.hosts();
        let (new, gone) = hosts.diff(&instances_in_store(), Instant::now());
        if !gone.is_empty() {
            let removed = handle.remove_hosts(&gone);
            log::debug!(
                "cluster {CLUSTER_NAME}: removed {removed} of {} hosts",
                gone.len()
            );
        }
        if !new.is_empty() {
            match handle.add_hosts(&new) {
                Some(ptrs) => {
                    log::debug!("cluster {CLUSTER_NAME}: added {}", new.join(", "));
                    hosts.added(new, ptrs);
                }
                None => log::warn!(
                    "cluster {CLUSTER_NAME}: Envoy refused hosts {}; requests picking them get no host",
                    new.join(", ")
                ),
            }
        }
    }

    /// A worker's load balancer (`lb_new`, on that worker).
    pub fn worker_lb(&self, lb: LbHandle) -> WorkerLb {
        WorkerLb {
            lb,
            wake: self.wake.clone(),
            pending: RefCell::new(Vec::new()),
            next_id: Cell::new(1),
        }
    }

    /// Destroy hook: the thread is stopped and joined, then Envoy's scheduler is let go.
    pub fn shutdown(self) {
        let watcher = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(w) = watcher {
            w.stop.store(true, Ordering::Relaxed);
            w.thread.thread().unpark();
            if w.thread.join().is_err() {
                log::warn!("cluster {CLUSTER_NAME}: its thread panicked");
            }
        }
        // Envoy's scheduler goes with the cluster, whoever still holds the wake.
        *self.wake.scheduler() = None;
    }
}

/// Envoy's details for a request whose pick never reached its worker's hosts.
const NOT_IN_CLUSTER: &str = "polaris: instance not in the cluster";
/// Envoy's details for a request the load balancer's decision found no host for.
const NO_PICK: &str = "polaris: no instance for this request";
/// Envoy's details for a request whose service was not discovered within [`PENDING_TTL`].
const NOT_DISCOVERED: &str = "polaris: service not discovered in time";

/// What the load balancer answers Envoy for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    Host(WorkerHost),
    NoHost,
    /// Ended later by [`WorkerLb::hosts_changed`]; the id is Envoy's handle to cancel it.
    Pending(u64),
}

/// One worker's load balancer: waits for picks this worker does not hold yet.
pub struct WorkerLb {
    lb: LbHandle,
    wake: Arc<Wake>,
    pending: RefCell<Vec<Pending>>,
    next_id: Cell<u64>,
}

struct Pending {
    id: u64,
    context: LbContext,
    want: Want,
    since: Instant,
}

/// What a pending selection waits for.
enum Want {
    /// The pick (`ip:port`) to reach this worker's hosts.
    Host(String),
    /// Its service to be discovered (`upstream_handover: load_balancer`): decided again then.
    Decision,
}

impl Want {
    /// Envoy's details when the selection ends with no host after waiting too long.
    fn expired(&self) -> &'static str {
        match self {
            Want::Host(_) => NOT_IN_CLUSTER,
            Want::Decision => NOT_DISCOVERED,
        }
    }
}

impl WorkerLb {
    /// A request for which Envoy found no override host on this worker: the filter's pick this
    /// worker does not hold yet, or (no filter ran) the decision here.
    pub fn choose(&self, context: LbContext) -> Choice {
        let address = match context.override_host() {
            Some(address) => address,
            None => {
                self.retry_decisions();
                match balancer::decide(context) {
                    Decided::Host(address) => address,
                    Decided::NoHost => return Choice::NoHost,
                    Decided::Wait => return self.wait(context, Want::Decision),
                }
            }
        };
        if let Some(host) = self.lb.find_host(&address) {
            return Choice::Host(host);
        }
        if address.parse::<SocketAddr>().is_err() {
            return Choice::NoHost;
        }
        self.wait(context, Want::Host(address))
    }

    fn wait(&self, context: LbContext, want: Want) -> Choice {
        self.expire();
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1).max(1));
        let host = matches!(want, Want::Host(_));
        self.pending.borrow_mut().push(Pending {
            id,
            context,
            want,
            since: Instant::now(),
        });
        if host {
            self.wake.sync_soon();
        }
        Choice::Pending(id)
    }

    /// Envoy gave up on a pending selection (the request went away): never complete it.
    pub fn cancel(&self, id: u64) {
        self.pending.borrow_mut().retain(|p| p.id != id);
    }

    /// Ends the selections waiting longer than [`PENDING_TTL`] with no host.
    fn expire(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        self.pending.borrow_mut().retain(|p| {
            let keep = now.duration_since(p.since) < PENDING_TTL;
            if !keep {
                expired.push((p.context, p.want.expired()));
            }
            keep
        });
        for (context, details) in expired {
            self.lb.complete(context, None, details);
        }
    }

    /// This worker's hosts changed: pending picks that arrived get their host, those waiting
    /// longer than [`PENDING_TTL`] get none, and requests waiting for their service are decided
    /// again. Envoy is called after our state is settled (it may choose again from inside a
    /// completion).
    pub fn hosts_changed(&self) {
        self.settle(true);
    }

    /// Requests waiting for their service are decided again (each new request of this worker
    /// asks: the store may have it by now, with no host change to say so).
    fn retry_decisions(&self) {
        let waiting = self
            .pending
            .borrow()
            .iter()
            .any(|p| matches!(p.want, Want::Decision));
        if waiting {
            self.settle(false);
        }
    }

    fn settle(&self, hosts_moved: bool) {
        let now = Instant::now();
        let mut waiting = std::mem::take(&mut *self.pending.borrow_mut());
        let mut done = Vec::new();
        waiting.retain_mut(|p| {
            let expired = now.duration_since(p.since) >= PENDING_TTL;
            if let Want::Decision = p.want {
                match balancer::decide(p.context) {
                    Decided::Host(address) => p.want = Want::Host(address),
                    Decided::NoHost => {
                        done.push((p.context, None, NO_PICK));
                        return false;
                    }
                    Decided::Wait if expired => {
                        done.push((p.context, None, NOT_DISCOVERED));
                        return false;
                    }
                    Decided::Wait => return true,
                }
            } else if !hosts_moved && !expired {
                return true;
            }
            let Want::Host(address) = &p.want else {
                return true;
            };
            match self.lb.find_host(address) {
                Some(h) => done.push((p.context, Some(h), "")),
                None if expired => done.push((p.context, None, NOT_IN_CLUSTER)),
                None => return true,
            }
            false
        });
        // Deciding calls no Envoy selection; put back what waits, before Envoy hears of the rest.
        let mut pending = self.pending.borrow_mut();
        waiting.append(&mut pending);
        *pending = waiting;
        drop(pending);
        for (context, host, details) in done {
            self.lb.complete(context, host, details);
        }
    }
}

/// The hosts a cluster holds by address, with when each left the wanted set.
#[derive(Debug)]
struct HostSet<H> {
    held: HashMap<String, (H, Option<Instant>)>,
}

impl<H> Default for HostSet<H> {
    fn default() -> Self {
        HostSet {
            held: HashMap::new(),
        }
    }
}

impl<H: Copy> HostSet<H> {
    /// What to add (wanted, not held) and what to remove (left the wanted set [`GRACE`] ago or
    /// more; those are forgotten here). A held host wanted again is kept.
    fn diff(&mut self, wanted: &HashSet<String>, now: Instant) -> (Vec<String>, Vec<H>) {
        let new = wanted
            .iter()
            .filter(|a| !self.held.contains_key(*a))
            .cloned()
            .collect();
        let mut gone = Vec::new();
        self.held.retain(|address, (host, left)| {
            if wanted.contains(address) {
                *left = None;
                return true;
            }
            let since = *left.get_or_insert(now);
            let keep = now.duration_since(since) < GRACE;
            if !keep {
                gone.push(*host);
            }
            keep
        });
        (new, gone)
    }

    fn added(&mut self, addresses: Vec<String>, hosts: Vec<H>) {
        self.held.extend(
            addresses
                .into_iter()
                .zip(hosts.into_iter().map(|h| (h, None))),
        );
    }
}

/// The watching thread: wakes the main thread when the store's generation or watch list moved,
/// and every [`GRACE`] / 2 (hosts past their grace leave then).
fn watch(wake: &Wake, stop: &AtomicBool) {
    let mut seen = fingerprint();
    let mut synced = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(POLL);
        let now = fingerprint();
        if now != seen || synced.elapsed() >= GRACE / 2 {
            seen = now;
            synced = Instant::now();
            wake.sync_soon();
        }
    }
}

fn fingerprint() -> (u64, Option<Vec<u8>>) {
    let generation = shared::decode_counter(store::get(shared::GEN_KEY).0.as_deref());
    (generation, store::get(shared::WATCH_KEY).0)
}

/// Every instance (`ip:port`) of every watched service the store has an answer for.
fn instances_in_store() -> HashSet<String> {
    let watched = WatchList::decode(store::get(shared::WATCH_KEY).0.as_deref());
    watched.services().iter().flat_map(instances_of).collect()
}

fn instances_of(key: &ServiceKey) -> Vec<String> {
    let Some(bytes) = store::get(&shared::resource_key(Kind::Instances, key)).0 else {
        return Vec::new();
    };
    match decode_instances(key, &bytes) {
        // Envoy's hosts are IP addresses: an instance named otherwise goes by the header
        // (where ORIGINAL_DST refuses it alike).
        Ok(Discovered::Changed(snapshot)) => snapshot
            .instances
            .into_iter()
            .map(|i| i.upstream)
            .filter(|u| u.parse::<SocketAddr>().is_ok())
            .collect(),
        Ok(_) => Vec::new(),
        Err(e) => {
            log::debug!("cluster {CLUSTER_NAME}: stored instances of {key} unreadable: {e:?}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addresses: &[&str]) -> HashSet<String> {
        addresses.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn an_instance_that_left_polaris_stays_a_host_for_the_grace_then_goes() {
        let t0 = Instant::now();
        let mut hosts = HostSet::default();
        let (mut new, gone) = hosts.diff(&set(&["a:1", "b:2"]), t0);
        assert!(gone.is_empty());
        new.sort();
        assert_eq!(new, vec!["a:1".to_string(), "b:2".to_string()]);
        hosts.added(new, vec![1, 2]);

        let (new, gone) = hosts.diff(&set(&["a:1"]), t0 + Duration::from_secs(1));
        assert!(
            new.is_empty() && gone.is_empty(),
            "b stays within its grace"
        );
        let (_, gone) = hosts.diff(&set(&["a:1"]), t0 + Duration::from_secs(1) + GRACE);
        assert_eq!(gone, vec![2]);
        let (new, gone) = hosts.diff(&set(&["a:1", "b:2"]), t0 + GRACE * 3);
        assert_eq!(
            (new, gone),
            (vec!["b:2".to_string()], vec![]),
            "b comes back as new"
        );
    }

    #[test]
    fn an_instance_back_within_the_grace_is_kept_not_re_added() {
        let t0 = Instant::now();
        let mut hosts = HostSet::default();
        let (new, _) = hosts.diff(&set(&["a:1"]), t0);
        hosts.added(new, vec![7]);
        hosts.diff(&set(&[]), t0 + Duration::from_secs(1));
        let (new, gone) = hosts.diff(&set(&["a:1"]), t0 + Duration::from_secs(2));
        assert!(new.is_empty() && gone.is_empty());
        let (_, gone) = hosts.diff(&set(&["a:1"]), t0 + GRACE * 2);
        assert!(gone.is_empty(), "wanted again: its grace was reset");
    }

    #[test]
    fn a_cluster_name_other_than_polaris_is_rejected() {
        assert!(ClusterConfig::new(b"polaris", b"").is_some());
        assert!(ClusterConfig::new(b"polaris", b"{}").is_some());
        assert!(ClusterConfig::new(b"other", b"").is_none());
        assert!(ClusterConfig::new(b"polaris", b"{\"x\":1}").is_none());
    }
}
