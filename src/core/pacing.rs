//! The worker's side of unirate queueing: queue a paused request, resume those due on the tick,
//! and keep the timer pointed at the next turn (`Worker::retime`; [`super::queue`] holds the
//! entries).

use super::host::Host;
use super::metrics::Counter;
use super::worker::Worker;

impl<H: Host> Worker<H> {
    /// Resumes the queued requests that are due, counting those whose client left.
    pub(super) fn resume_due(&mut self, now_ms: u64) {
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
}
