//! Counters defined with `define_metric`; Envoy shows them as `wasmcustom.polaris_wasm.*` stats,
//! summed over every worker's VM.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

#[derive(Clone, Copy, Debug)]
pub enum Counter {
    /// Every `Discover` call sent (leader refreshes and first loads).
    DiscoverRequests,
    /// Leader refresh answers received.
    Refreshes,
    /// Leader refreshes that failed or were unusable (last good snapshot kept).
    RefreshErrors,
    /// Refreshes answered `DataNoChange`.
    RefreshUnchanged,
    /// Snapshot entries written to shared data.
    SnapshotUpdates,
    /// Requests sent to a picked instance.
    Picks,
    /// Picks made from unhealthy instances because none was healthy.
    RecoverAll,
    /// 503s because no instance could take the request.
    NoInstance,
    /// Every local reply (any reason).
    LocalReplies,
}

const ALL: [(Counter, &str); 9] = [
    (Counter::DiscoverRequests, "polaris_wasm.discover_requests"),
    (Counter::Refreshes, "polaris_wasm.refreshes"),
    (Counter::RefreshErrors, "polaris_wasm.refresh_errors"),
    (Counter::RefreshUnchanged, "polaris_wasm.refresh_unchanged"),
    (Counter::SnapshotUpdates, "polaris_wasm.snapshot_updates"),
    (Counter::Picks, "polaris_wasm.picks"),
    (Counter::RecoverAll, "polaris_wasm.recover_all"),
    (Counter::NoInstance, "polaris_wasm.no_instance"),
    (Counter::LocalReplies, "polaris_wasm.local_replies"),
];

/// Metric ids of this VM; a metric the host refused to define is skipped, never fatal.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: [Option<u32>; ALL.len()],
}

impl Metrics {
    pub fn define() -> Metrics {
        let mut m = Metrics::default();
        for (slot, (_, name)) in m.ids.iter_mut().zip(ALL.iter()) {
            match hostcalls::define_metric(MetricType::Counter, name) {
                Ok(id) => *slot = Some(id),
                Err(e) => log::warn!("cannot define metric {name}: {e:?}"),
            }
        }
        m
    }

    pub fn inc(&self, counter: Counter) {
        if let Some(Some(id)) = self.ids.get(counter as usize) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }
}
