//! Counters Envoy shows as `wasmcustom.polaris_wasm.*` stats, summed over every worker's VM.
//!
//! Increments are counted in the VM and handed to the host on the next tick (at most 500 ms
//! later), so the request path makes no host call for metrics.

use std::cell::Cell;

use super::host::Metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Requests answered 429 by a rate-limit rule.
    RateLimited,
    /// Rate-limit counters whose CAS retries ran out (the request was admitted).
    RateLimitContended,
    /// Requests a dry-run rate-limit rule would have answered 429.
    RateLimitDryRun,
    /// REGEX tests that ran out of backtracking steps and counted as no match.
    RegexBacktrackLimit,
}

const ALL: [(Counter, &str); 13] = [
    (Counter::DiscoverRequests, "polaris_wasm.discover_requests"),
    (Counter::Refreshes, "polaris_wasm.refreshes"),
    (Counter::RefreshErrors, "polaris_wasm.refresh_errors"),
    (Counter::RefreshUnchanged, "polaris_wasm.refresh_unchanged"),
    (Counter::SnapshotUpdates, "polaris_wasm.snapshot_updates"),
    (Counter::Picks, "polaris_wasm.picks"),
    (Counter::RecoverAll, "polaris_wasm.recover_all"),
    (Counter::NoInstance, "polaris_wasm.no_instance"),
    (Counter::LocalReplies, "polaris_wasm.local_replies"),
    (Counter::RateLimited, "polaris_wasm.rate_limited"),
    (
        Counter::RateLimitContended,
        "polaris_wasm.rate_limit_contended",
    ),
    (Counter::RateLimitDryRun, "polaris_wasm.rate_limit_dry_run"),
    (
        Counter::RegexBacktrackLimit,
        "polaris_wasm.regex_backtrack_limit",
    ),
];

/// The VM's counters; a metric the host refused to define is skipped, never fatal.
#[derive(Debug, Default)]
pub struct Counters {
    ids: [Option<u32>; ALL.len()],
    pending: [Cell<u64>; ALL.len()],
}

impl Counters {
    pub fn define<M: Metrics + ?Sized>(host: &M) -> Counters {
        let mut c = Counters::default();
        for (slot, (_, name)) in c.ids.iter_mut().zip(ALL.iter()) {
            match host.define_counter(name) {
                Ok(id) => *slot = Some(id),
                Err(e) => log::warn!("cannot define metric {name}: {e}"),
            }
        }
        c
    }

    pub fn inc(&self, counter: Counter) {
        if let Some(pending) = self.pending.get(counter as usize) {
            pending.set(pending.get().wrapping_add(1));
        }
    }

    /// Increments counted since the last flush (for tests and the trace).
    pub fn pending(&self, counter: Counter) -> u64 {
        self.pending.get(counter as usize).map_or(0, Cell::get)
    }

    pub fn add(&self, counter: Counter, n: u64) {
        if let Some(pending) = self.pending.get(counter as usize) {
            pending.set(pending.get().wrapping_add(n));
        }
    }

    /// Hands the counted increments to the host.
    pub fn flush<M: Metrics + ?Sized>(&self, host: &M) {
        // Counted where the regex runs, which knows no host.
        self.add(
            Counter::RegexBacktrackLimit,
            crate::matching::take_backtrack_limit_hits(),
        );
        for (id, pending) in self.ids.iter().zip(self.pending.iter()) {
            let n = pending.take();
            if let (Some(id), true) = (id, n > 0) {
                host.add(*id, n);
            }
        }
    }
}
