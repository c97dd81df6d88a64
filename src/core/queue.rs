//! This thread's requests waiting for their unirate turn: paused, then resumed by the tick that
//! reaches their time. Each entry is (time due, stream id); a stream that ends while queued is
//! dropped from it. While anything is queued the timer fires at the next due time (at least
//! 1 ms apart, [`super::tick`]); idle, it goes back to the worker's normal period, so an Envoy
//! with nothing queued pays nothing for the queue.

/// Requests one worker holds at most; beyond, a request that would wait is answered 429.
pub const MAX_QUEUED: usize = 4096;

#[derive(Debug, Default)]
pub struct Queue {
    /// (due ms, stream id), in no particular order: queues are short.
    entries: Vec<(u64, u32)>,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues stream `id` until `due_ms`; false when the queue is full.
    pub fn push(&mut self, id: u32, due_ms: u64) -> bool {
        if self.entries.len() >= MAX_QUEUED {
            return false;
        }
        self.entries.push((due_ms, id));
        true
    }

    /// Drops stream `id` (its stream ended); true when it was queued.
    pub fn remove(&mut self, id: u32) -> bool {
        let before = self.entries.len();
        self.entries.retain(|&(_, s)| s != id);
        self.entries.len() != before
    }

    /// Takes the streams due at `now_ms`, earliest first.
    pub(super) fn take_due(&mut self, now_ms: u64) -> Vec<u32> {
        let mut due: Vec<(u64, u32)> = Vec::new();
        self.entries.retain(|&e| {
            if e.0 <= now_ms {
                due.push(e);
                false
            } else {
                true
            }
        });
        due.sort_unstable();
        due.into_iter().map(|(_, id)| id).collect()
    }

    pub(super) fn next_due(&self) -> Option<u64> {
        self.entries.iter().map(|&(d, _)| d).min()
    }
}
