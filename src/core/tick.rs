//! A thread's timer and its root context's call answers: the leader's refresh, breaker state and
//! probes, then resync and metrics.

use std::time::Duration;

use super::admitting;
use super::breaking;
use super::global_limit;
use super::host::{CallResult, Host};
use super::probing;
use super::store;
use super::worker::Worker;
use crate::config::RateLimitSide;
use crate::model::{Kind, ServiceKey};

impl<H: Host> Worker<H> {
    /// The timer: the leader's work when we hold the lease, then resync and metrics; queued
    /// requests that are due are resumed last (the host's later calls of this callback may
    /// act on the last stream resumed). Ticks that come early because requests are queued
    /// only resume them and drop the grants of windows that ended.
    pub fn on_tick(&mut self) {
        let now = self.host.now_ms();
        self.limiter.expire(now);
        if self.fine_tick.is_none() || now >= self.next_full_tick {
            let period = u64::try_from(self.tick_period().as_millis()).unwrap_or(u64::MAX);
            // A quarter early, so timer jitter never skips a full tick.
            self.next_full_tick = now.saturating_add(period - period / 4);
            self.full_tick(now);
        }
        self.resume_due(now);
    }

    fn full_tick(&mut self, now: u64) {
        self.settle_location(false);
        let mut extra: Vec<(Kind, ServiceKey)> = self
            .caller_key()
            .map(|c| (Kind::Routing, c))
            .into_iter()
            .collect();
        if let (Some(RateLimitSide::Local), Some(c)) =
            (self.config.rate_limit, self.local_service())
        {
            extra.push((Kind::RateLimit, c));
        }
        if self.config.breaker.is_some() && self.leader.holds_lease() {
            let watched = store::watch_list(&self.host);
            extra.extend(probing::services(self, watched.services()));
        }
        if self.leader.holds_lease() {
            extra.extend(global_limit::services(self));
        }
        self.leader.tick(
            &self.host,
            &self.link,
            &self.config,
            &self.counters,
            extra,
            now,
        );
        if let Some(p) = &mut self.provider {
            let here = &self.config.nearby.location;
            p.tick(&self.host, &self.link, &self.counters, here, now);
        }
        if self.leader.holds_lease() {
            admitting::sweep(self, now);
        }
        self.resync();
        global_limit::tick(self, now);
        admitting::publish(self, now);
        if self.config.breaker.is_some() {
            breaking::flush_windows(self, now);
            if self.leader.holds_lease() {
                let watched = store::watch_list(&self.host);
                breaking::lead(self, watched.services(), now);
                probing::probe(self, watched.services(), now);
            }
        }
        self.limiter.on_tick(&self.host);
        self.counters.flush(&self.host);
    }

    /// The tick of a worker that never leads: resync, breaker windows, limiter grants and
    /// metrics, the provider's address (for its status and offline paths; registering is the
    /// leader's), and the queued requests that are due. The
    /// native build runs one leading worker per plugin on Envoy's main thread; its request
    /// threads' workers tick this way (no timer of their own, no root context for calls).
    pub fn on_follower_tick(&mut self) {
        let now = self.host.now_ms();
        self.limiter.expire(now);
        if let Some(p) = &mut self.provider {
            p.settle(&self.host, &self.config.nearby.location, now);
        }
        self.resync();
        if self.config.breaker.is_some() {
            breaking::flush_windows(self, now);
        }
        self.limiter.on_tick(&self.host);
        self.counters.flush(&self.host);
        self.resume_due(now);
    }

    /// Points the timer at the next due time (a queued request's turn, the end of a window whose
    /// tokens this worker spends without the clock), or back at the normal period when none is
    /// sooner; `force` re-arms it even when the period stays. A periodic timer fires within one
    /// period of now, so a due time is met once the period is no longer than the wait for it.
    pub(super) fn retime(&mut self, now_ms: u64, force: bool) {
        let normal = self.tick_period();
        let due = match (self.queue.next_due(), self.limiter.next_end()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let wanted = match due {
            Some(due) => Duration::from_millis(due.saturating_sub(now_ms).max(1)).min(normal),
            None => normal,
        };
        let current = self.fine_tick.unwrap_or(normal);
        if wanted == current && !(force && wanted != normal) {
            return;
        }
        match self.host.set_tick_period(wanted) {
            Ok(()) => self.fine_tick = (wanted != normal).then_some(wanted),
            Err(e) => log::warn!("cannot set the tick period to {wanted:?}: {e}"),
        }
    }

    /// An answer to a call this VM's root context made.
    pub fn on_call_result(&mut self, token: u32, result: CallResult) {
        if self.on_time_adjust(token, &result) {
            return;
        }
        if let Some(p) = self.provider.as_mut().filter(|p| p.owns(token)) {
            p.on_call_result(&self.host, &self.link, &self.counters, token, result);
            return;
        }
        self.leader
            .on_call_result(&self.host, &self.counters, token, result);
    }

    /// The answer to an HTTP callout this VM's root context made (the provider's readiness probe
    /// or a fault-detection probe): the `:status` (`None` when the call failed or timed out) and
    /// the body.
    pub fn on_http_call_result(&mut self, token: u32, status: Option<u32>, body: &[u8]) {
        if let Some(p) = &mut self.provider {
            let answer =
                status.ok_or_else(|| "no answer (connection failed or timed out)".to_string());
            if p.on_http_result(&self.host, &self.link, &self.counters, token, answer) {
                return;
            }
        }
        let now = self.host.now_ms();
        if !probing::on_result(self, token, status, body, now) {
            log::debug!("HTTP callout answer {token} matches no probe");
        }
    }
}
