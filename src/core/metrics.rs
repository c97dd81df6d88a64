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
    /// Requests a unirate rule paused for their turn, and the milliseconds they were given.
    RateLimitQueued,
    RateLimitQueueWaitMs,
    /// Queued requests resumed at their turn, and those whose client had left.
    RateLimitResumed,
    RateLimitQueueDropped,
    /// REGEX tests that ran out of backtracking steps and counted as no match.
    RegexBacktrackLimit,
    /// Circuit-breaker transitions into open (closed -> open and half-open -> open), per level.
    BreakerInstanceOpen,
    BreakerServiceOpen,
    BreakerMethodOpen,
    /// Transitions open -> half-open, per level.
    BreakerInstanceHalfOpen,
    BreakerServiceHalfOpen,
    BreakerMethodHalfOpen,
    /// Transitions half-open -> closed, per level.
    BreakerInstanceClose,
    BreakerServiceClose,
    BreakerMethodClose,
    /// Opens of dry-run rules (any level): what they would have ejected or rejected.
    BreakerDryRunOpen,
    /// Replies given because a SERVICE or METHOD breaker was open (fallback or 503).
    BreakerFallbacks,
    /// Breaker state updates lost to shared-data contention.
    BreakerContended,
    /// Fault-detection probes sent, and those that failed.
    ProbesSent,
    ProbesFailed,
    /// `RegisterInstance` calls Polaris accepted.
    ProviderRegistrations,
    /// `RegisterInstance` calls that failed (retried with backoff).
    ProviderRegisterErrors,
    /// Heartbeats Polaris accepted.
    ProviderHeartbeats,
    /// Heartbeats that failed (retried within the TTL).
    ProviderHeartbeatErrors,
    /// Heartbeats answered "unknown instance": registered again.
    ProviderReregistrations,
    /// `DeregisterInstance` calls Polaris accepted (offline trigger, configuration removed).
    ProviderDeregistrations,
    /// `DeregisterInstance` calls that failed.
    ProviderDeregisterErrors,
    /// `ReportClient` calls Polaris accepted.
    ClientReports,
    /// `ReportClient` calls that failed.
    ClientReportErrors,
    /// Requests for the offline or status path refused because they were not local.
    ProviderAdminRefused,
    /// polaris-limiter streams opened by the leader.
    LimiterStreamOpens,
    /// INIT requests sent to polaris-limiter.
    LimiterInits,
    /// ACQUIRE reports sent to polaris-limiter.
    LimiterReports,
    /// Limiter sync failures: streams that failed or closed, error codes, TimeAdjust failures.
    LimiterSyncErrors,
    /// Requests naming a service outside `admission.allowed_services` (answered 403).
    NotAllowed,
    /// First discoveries refused because this second's budget was used up (answered 503).
    DiscoveryThrottled,
    /// Services dropped from the watch list and shared data after `admission.idle_timeout`.
    ServicesDropped,
}

/// Gauges the leader sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gauge {
    /// Breakers of enforcing rules now open or half-open, all levels.
    BreakersOpen,
    /// polaris-limiter streams up (open, initialized, answered within a second): the leader's.
    LimiterStreamsUp,
    /// Services on the watch list (the leader's view).
    WatchedServices,
    /// Bytes of shared data the filter's records hold (values of every key it knows of).
    SharedDataBytes,
}

const GAUGES: [(Gauge, &str); 4] = [
    (Gauge::BreakersOpen, "polaris_wasm.breakers_open"),
    (Gauge::LimiterStreamsUp, "polaris_wasm.limiter_streams_up"),
    (Gauge::WatchedServices, "polaris_wasm.watched_services"),
    (Gauge::SharedDataBytes, "polaris_wasm.shared_data_bytes"),
];

const ALL: [(Counter, &str); 48] = [
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
    (Counter::RateLimitQueued, "polaris_wasm.rate_limit_queued"),
    (
        Counter::RateLimitQueueWaitMs,
        "polaris_wasm.rate_limit_queue_wait_ms",
    ),
    (Counter::RateLimitResumed, "polaris_wasm.rate_limit_resumed"),
    (
        Counter::RateLimitQueueDropped,
        "polaris_wasm.rate_limit_queue_dropped",
    ),
    (
        Counter::RegexBacktrackLimit,
        "polaris_wasm.regex_backtrack_limit",
    ),
    (
        Counter::BreakerInstanceOpen,
        "polaris_wasm.breaker_instance_open",
    ),
    (
        Counter::BreakerServiceOpen,
        "polaris_wasm.breaker_service_open",
    ),
    (
        Counter::BreakerMethodOpen,
        "polaris_wasm.breaker_method_open",
    ),
    (
        Counter::BreakerInstanceHalfOpen,
        "polaris_wasm.breaker_instance_half_open",
    ),
    (
        Counter::BreakerServiceHalfOpen,
        "polaris_wasm.breaker_service_half_open",
    ),
    (
        Counter::BreakerMethodHalfOpen,
        "polaris_wasm.breaker_method_half_open",
    ),
    (
        Counter::BreakerInstanceClose,
        "polaris_wasm.breaker_instance_close",
    ),
    (
        Counter::BreakerServiceClose,
        "polaris_wasm.breaker_service_close",
    ),
    (
        Counter::BreakerMethodClose,
        "polaris_wasm.breaker_method_close",
    ),
    (
        Counter::BreakerDryRunOpen,
        "polaris_wasm.breaker_dry_run_open",
    ),
    (Counter::BreakerFallbacks, "polaris_wasm.breaker_fallbacks"),
    (Counter::BreakerContended, "polaris_wasm.breaker_contended"),
    (Counter::ProbesSent, "polaris_wasm.probes_sent"),
    (Counter::ProbesFailed, "polaris_wasm.probes_failed"),
    (
        Counter::ProviderRegistrations,
        "polaris_wasm.provider_registrations",
    ),
    (
        Counter::ProviderRegisterErrors,
        "polaris_wasm.provider_register_errors",
    ),
    (
        Counter::ProviderHeartbeats,
        "polaris_wasm.provider_heartbeats",
    ),
    (
        Counter::ProviderHeartbeatErrors,
        "polaris_wasm.provider_heartbeat_errors",
    ),
    (
        Counter::ProviderReregistrations,
        "polaris_wasm.provider_reregistrations",
    ),
    (
        Counter::ProviderDeregistrations,
        "polaris_wasm.provider_deregistrations",
    ),
    (
        Counter::ProviderDeregisterErrors,
        "polaris_wasm.provider_deregister_errors",
    ),
    (Counter::ClientReports, "polaris_wasm.client_reports"),
    (
        Counter::ClientReportErrors,
        "polaris_wasm.client_report_errors",
    ),
    (
        Counter::ProviderAdminRefused,
        "polaris_wasm.provider_admin_refused",
    ),
    (
        Counter::LimiterStreamOpens,
        "polaris_wasm.limiter_stream_opens",
    ),
    (Counter::LimiterInits, "polaris_wasm.limiter_inits"),
    (Counter::LimiterReports, "polaris_wasm.limiter_reports"),
    (
        Counter::LimiterSyncErrors,
        "polaris_wasm.limiter_sync_errors",
    ),
    (Counter::NotAllowed, "polaris_wasm.not_allowed"),
    (
        Counter::DiscoveryThrottled,
        "polaris_wasm.discovery_throttled",
    ),
    (Counter::ServicesDropped, "polaris_wasm.services_dropped"),
];

/// The VM's counters; a metric the host refused to define is skipped, never fatal.
#[derive(Debug)]
pub struct Counters {
    ids: [Option<u32>; ALL.len()],
    pending: [Cell<u64>; ALL.len()],
    /// Which counters have pending increments (bit = index), so a flush after every request
    /// (the native build's) visits only those.
    touched: Cell<u128>,
    gauge_ids: [Option<u32>; GAUGES.len()],
    gauges: [Cell<Option<u64>>; GAUGES.len()],
    gauges_set: Cell<bool>,
}

const _: () = assert!(ALL.len() <= 128, "Counters::touched has a bit per counter");

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            ids: [None; ALL.len()],
            pending: std::array::from_fn(|_| Cell::new(0)),
            touched: Cell::new(0),
            gauge_ids: [None; GAUGES.len()],
            gauges: std::array::from_fn(|_| Cell::new(None)),
            gauges_set: Cell::new(false),
        }
    }
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
        for (slot, (_, name)) in c.gauge_ids.iter_mut().zip(GAUGES.iter()) {
            match host.define_gauge(name) {
                Ok(id) => *slot = Some(id),
                Err(e) => log::warn!("cannot define metric {name}: {e}"),
            }
        }
        c
    }

    /// Sets a gauge (handed to the host on the next flush).
    pub fn set(&self, gauge: Gauge, value: u64) {
        if let Some(slot) = self.gauges.get(gauge as usize) {
            slot.set(Some(value));
            self.gauges_set.set(true);
        }
    }

    pub fn inc(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Increments counted since the last flush (for tests and the trace).
    pub fn pending(&self, counter: Counter) -> u64 {
        self.pending.get(counter as usize).map_or(0, Cell::get)
    }

    pub fn add(&self, counter: Counter, n: u64) {
        let i = counter as usize;
        if let (Some(pending), true) = (self.pending.get(i), n > 0) {
            pending.set(pending.get().wrapping_add(n));
            self.touched
                .set(self.touched.get() | 1u128.wrapping_shl(i as u32));
        }
    }

    /// Hands the counted increments to the host.
    pub fn flush<M: Metrics + ?Sized>(&self, host: &M) {
        // Counted where the regex runs, which knows no host.
        self.add(
            Counter::RegexBacktrackLimit,
            crate::matching::take_backtrack_limit_hits(),
        );
        let mut touched = self.touched.take();
        while touched != 0 {
            let i = touched.trailing_zeros() as usize;
            touched &= touched - 1;
            let n = self.pending.get(i).map_or(0, Cell::take);
            if let (Some(Some(id)), true) = (self.ids.get(i), n > 0) {
                host.add(*id, n);
            }
        }
        if !self.gauges_set.take() {
            return;
        }
        for (id, value) in self.gauge_ids.iter().zip(self.gauges.iter()) {
            if let (Some(id), Some(v)) = (id, value.take()) {
                host.set_gauge(*id, v);
            }
        }
    }
}
