//! Counters defined with `define_metric`; Envoy shows them as `wasmcustom.polaris_wasm.*` stats,
//! summed over every worker's VM.
//!
//! Increments are counted in the VM and handed to Envoy on the next tick (at most 500 ms later),
//! so the request path makes no host call for metrics.

use std::cell::Cell;

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
    /// REGEX tests that ran out of backtracking steps and counted as no match.
    RegexBacktrackLimit,
}

const ALL: [(Counter, &str); 10] = [
    (Counter::DiscoverRequests, "polaris_wasm.discover_requests"),
    (Counter::Refreshes, "polaris_wasm.refreshes"),
    (Counter::RefreshErrors, "polaris_wasm.refresh_errors"),
    (Counter::RefreshUnchanged, "polaris_wasm.refresh_unchanged"),
    (Counter::SnapshotUpdates, "polaris_wasm.snapshot_updates"),
    (Counter::Picks, "polaris_wasm.picks"),
    (Counter::RecoverAll, "polaris_wasm.recover_all"),
    (Counter::NoInstance, "polaris_wasm.no_instance"),
    (Counter::LocalReplies, "polaris_wasm.local_replies"),
    (
        Counter::RegexBacktrackLimit,
        "polaris_wasm.regex_backtrack_limit",
    ),
];

/// Metric ids of this VM; a metric the host refused to define is skipped, never fatal.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: [Option<u32>; ALL.len()],
    pending: [Cell<u64>; ALL.len()],
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
        if let Some(pending) = self.pending.get(counter as usize) {
            pending.set(pending.get().wrapping_add(1));
        }
    }

    pub fn add(&self, counter: Counter, n: u64) {
        if let Some(pending) = self.pending.get(counter as usize) {
            pending.set(pending.get().wrapping_add(n));
        }
    }

    /// Hands the counted increments to Envoy.
    pub fn flush(&self) {
        // Counted where the regex runs, which knows no host.
        self.add(
            Counter::RegexBacktrackLimit,
            crate::routing::matcher::take_backtrack_limit_hits(),
        );
        for (id, pending) in self.ids.iter().zip(self.pending.iter()) {
            let n = pending.take();
            if let (Some(id), true) = (id, n > 0) {
                let _ = hostcalls::increment_metric(*id, i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}
