//! What a client naming unknown or many services can make this Envoy do, bounded.
//!
//! Every request naming a service no worker knows would cost a first discovery (a `Discover` per
//! kind); a client sending random `Host` values would have every Envoy of a fleet hammer Polaris.
//! So, in this order, before a first discovery:
//!
//! - the allow-list (`admission.allowed_services`), when configured, refuses other names;
//! - each worker remembers briefly that Polaris does not know a name (`not_found_ttl`) or that
//!   its discovery failed (a second), in a bounded map;
//! - a budget of first discoveries per second (`new_services_per_second`), shared by every worker
//!   through shared data: touched only for names nobody knows.
//!
//! And so that legitimate services are not starved by ones nobody asks for any more, each worker
//! marks the services it routes to (in memory, no host call) and publishes them to a shared
//! record now and then; the leader drops services idle for `idle_timeout` from the watch list and
//! empties their shared entries, and every worker forgets them on its next resync.

use std::collections::HashMap;

use crate::decision::Rejection;
use crate::model::ServiceKey;
use crate::snapshot::DiscoveryError;

/// Names remembered per worker; beyond this, expired ones go, then all (hostile clients choose
/// the names).
const NEGATIVE_CAPACITY: usize = 1024;
/// How long a failed first discovery is remembered, so a down Polaris is not asked per request.
pub const FAILURE_MEMORY_MS: u64 = 1000;

/// Why a name is remembered.
#[derive(Clone, Debug, PartialEq)]
pub enum Negative {
    NotFound,
    Failed(DiscoveryError),
}

/// One worker's admission state.
#[derive(Debug, Default)]
pub struct Admission {
    /// Names answered without a discovery until the time given.
    negative: HashMap<ServiceKey, (Negative, u64)>,
    /// Services routed to: `true` when since the last publish.
    used: HashMap<ServiceKey, bool>,
    pub(super) next_publish_ms: u64,
    pub(super) next_sweep_ms: u64,
    /// When the leader next sums the shared-data bytes (reading every entry: not every sweep).
    pub(super) next_measure_ms: u64,
    /// The second whose shared budget this worker saw used up: the rest of it is refused without
    /// touching shared data.
    pub(super) spent_second: Option<u64>,
}

impl Admission {
    /// The answer remembered for `key`, if any and not expired. The clock is read only when
    /// something is remembered, so a request for a known service makes no host call here.
    pub fn remembered(&mut self, key: &ServiceKey, now: impl FnOnce() -> u64) -> Option<Rejection> {
        let (negative, until) = self.negative.get(key)?;
        if *until <= now() {
            self.negative.remove(key);
            return None;
        }
        Some(match negative {
            Negative::NotFound => Rejection::ServiceNotFound(key.clone()),
            Negative::Failed(cause) => Rejection::DiscoveryFailed {
                service: key.clone(),
                cause: cause.clone(),
            },
        })
    }

    /// Remembers an answer about `key` until `until_ms`.
    pub fn remember(&mut self, key: &ServiceKey, negative: Negative, now_ms: u64, until_ms: u64) {
        if until_ms <= now_ms {
            return;
        }
        if self.negative.len() >= NEGATIVE_CAPACITY && !self.negative.contains_key(key) {
            self.negative.retain(|_, (_, until)| *until > now_ms);
            if self.negative.len() >= NEGATIVE_CAPACITY {
                self.negative.clear();
            }
        }
        self.negative.insert(key.clone(), (negative, until_ms));
    }

    /// A request was routed to `key` (allocates only the first time).
    pub fn touch(&mut self, key: &ServiceKey) {
        match self.used.get_mut(key) {
            Some(fresh) => *fresh = true,
            None => {
                self.used.insert(key.clone(), true);
            }
        }
    }

    /// The service left shared data: nothing of it is kept.
    pub fn forget(&mut self, key: &ServiceKey) {
        self.used.remove(key);
    }

    /// The services routed to since the last publish; marks them published.
    pub(super) fn fresh(&self) -> Vec<ServiceKey> {
        self.used
            .iter()
            .filter(|(_, fresh)| **fresh)
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub(super) fn published(&mut self) {
        self.used.values_mut().for_each(|f| *f = false);
    }

    /// How many names are remembered (bounded by [`NEGATIVE_CAPACITY`]).
    pub fn remembered_names(&self) -> usize {
        self.negative.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn remembered_names_expire_and_stay_bounded() {
        let mut a = Admission::default();
        let k = ServiceKey::new("d", "x");
        a.remember(&k, Negative::NotFound, 0, 100);
        assert!(a.remembered(&k, || 99).is_some());
        assert!(a.remembered(&k, || 100).is_none());
        for i in 0..(NEGATIVE_CAPACITY * 3) {
            a.remember(
                &ServiceKey::new("d", format!("s{i}")),
                Negative::NotFound,
                0,
                100,
            );
        }
        assert!(a.remembered_names() <= NEGATIVE_CAPACITY);
    }
}
