//! A thread's timer and its root context's call answers: the leader's refresh, breaker state and
//! probes, then resync and metrics.

use super::admitting;
use super::breaking;
use super::host::{CallResult, Host};
use super::probing;
use super::store;
use super::worker::Worker;
use crate::config::RateLimitSide;
use crate::model::{Kind, ServiceKey};

impl<H: Host> Worker<H> {
    /// The timer: the leader's work when we hold the lease, then resync and metrics.
    pub fn on_tick(&mut self) {
        let now = self.host.now_ms();
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
        admitting::publish(self, now);
        if self.config.breaker.is_some() {
            breaking::flush_windows(self, now);
            if self.leader.holds_lease() {
                let watched = store::watch_list(&self.host);
                breaking::lead(self, watched.services(), now);
                probing::probe(self, watched.services(), now);
            }
        }
        self.counters.flush(&self.host);
    }

    /// An answer to a call this VM's root context made.
    pub fn on_call_result(&mut self, token: u32, result: CallResult) {
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
