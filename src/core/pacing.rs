//! The worker's side of unirate queueing: queue a paused request, resume those due on the tick,
//! and keep the timer pointed at the next turn ([`super::queue`] holds the entries).

use std::time::Duration;

use super::host::Host;
use super::metrics::Counter;
use super::worker::Worker;

impl<H: Host> Worker<H> {
    /// Resumes the queued requests that are due, counting those whose client left.
    pub(super) fn resume_due(&mut self, now_ms: u64) {
        if self.queue.is_empty() && self.queue.fine.is_none() {
            return;
        }
        for id in self.queue.take_due(now_ms) {
            match self.host.resume_request(id) {
                Ok(()) => self.counters.inc(Counter::RateLimitResumed),
                Err(e) => {
                    log::debug!("queued stream {id} is gone: {e}");
                    self.counters.inc(Counter::RateLimitQueueDropped);
                }
            }
        }
        self.retime(now_ms, false);
    }

    /// Queues stream `id` for `wait_ms`; false when the queue is full. The first request queued
    /// re-arms the timer, whose phase is unknown, for its due time.
    pub(super) fn enqueue(&mut self, id: u32, wait_ms: u64) -> bool {
        let now_ms = self.host.now_ms();
        let first = self.queue.is_empty();
        if !self.queue.push(id, now_ms.saturating_add(wait_ms)) {
            return false;
        }
        self.counters.inc(Counter::RateLimitQueued);
        self.counters.add(Counter::RateLimitQueueWaitMs, wait_ms);
        self.retime(now_ms, first);
        true
    }

    /// Points the timer at the next due request, or back at the normal period when none is;
    /// `force` re-arms it even when the period stays.
    fn retime(&mut self, now_ms: u64, force: bool) {
        let normal = self.tick_period();
        let wanted = match self.queue.next_due() {
            Some(due) => Duration::from_millis(due.saturating_sub(now_ms).max(1)).min(normal),
            None => normal,
        };
        let current = self.queue.fine.unwrap_or(normal);
        if wanted == current && !(force && wanted != normal) {
            return;
        }
        match self.host.set_tick_period(wanted) {
            Ok(()) => self.queue.fine = (wanted != normal).then_some(wanted),
            Err(e) => log::warn!("cannot set the tick period to {wanted:?}: {e}"),
        }
    }
}
