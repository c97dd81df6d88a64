//! The leader's polaris-limiter connections, as state: one `Link` (stream) per limiter
//! endpoint, the counters it answered for, and the TimeAdjust calls in flight. What is done with
//! them is `core::global_limit`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::host::Host;
use crate::limit::global::{self, Global};
use crate::model::ServiceKey;

/// A limiter no window key has gone to for this long gets its stream closed. Kept open until
/// then, so a key that idles and comes back finds the stream (and this Envoy still counted among
/// the limiter's clients).
pub const LINK_IDLE_MS: u64 = 60_000;

/// Ticks are at most this far apart when a limiter is configured (the report cadence).
pub const SYNC_TICK: Duration = Duration::from_millis(40);

/// How the leader reaches one limiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Encoded `GrpcService` naming the Envoy cluster.
    pub(super) upstream: String,
    /// `(header, ip:port)` for an ORIGINAL_DST cluster.
    pub(super) address: Option<(String, String)>,
    /// For logs.
    pub(super) name: String,
}

/// One record a counter key of the server stands for.
#[derive(Clone, Debug)]
pub(super) struct Bound {
    pub(super) record: String,
    pub(super) window_ms: u64,
    pub(super) max: u32,
    pub(super) global: Global,
}

pub(super) type Target = (ServiceKey, String);

/// The leader's stream to one limiter.
pub(super) struct Link {
    pub(super) endpoint: Endpoint,
    pub(super) token: Option<u32>,
    pub(super) client_key: u32,
    pub(super) last_recv_ms: u64,
    pub(super) opened_ms: u64,
    pub(super) retry_at_ms: u64,
    pub(super) last_adjust_ms: u64,
    /// INITs sent and when.
    pub(super) inits: HashMap<Target, u64>,
    /// Targets whose INIT was answered.
    pub(super) ready: HashSet<Target>,
    /// Records by server counter key.
    pub(super) counters: HashMap<u32, Vec<Bound>>,
    /// What each target's INIT would bind: records by amount window.
    pub(super) wanted: HashMap<Target, Vec<Bound>>,
    /// Last tick some window key went to this limiter; unused for [`LINK_IDLE_MS`], it is closed.
    pub(super) used_ms: u64,
    /// The first message sent since the last answer (an answer is awaited since then).
    pub(super) unanswered_since: Option<u64>,
}

impl Link {
    pub(super) fn new(endpoint: Endpoint) -> Link {
        Link {
            endpoint,
            token: None,
            client_key: 0,
            last_recv_ms: 0,
            opened_ms: 0,
            retry_at_ms: 0,
            last_adjust_ms: 0,
            inits: HashMap::new(),
            ready: HashSet::new(),
            counters: HashMap::new(),
            wanted: HashMap::new(),
            used_ms: 0,
            unanswered_since: None,
        }
    }

    /// Forgets every counter (the stream ended or the server no longer knows them): INIT again.
    pub(super) fn forget(&mut self) {
        self.client_key = 0;
        self.unanswered_since = None;
        self.inits.clear();
        self.ready.clear();
        self.counters.clear();
    }

    /// Whether the limiter answers on this stream: it has answered, and nothing sent since has
    /// waited longer than [`global::STALE_MS`] (a stream with nothing to report stays answering).
    pub(super) fn answering(&self, now: u64) -> bool {
        self.token.is_some()
            && self.last_recv_ms != 0
            && self
                .unanswered_since
                .is_none_or(|since| now.saturating_sub(since) <= global::STALE_MS)
    }

    pub(super) fn up(&self, now: u64) -> bool {
        self.client_key != 0 && self.answering(now)
    }
}

/// The leader's side of global limits (kept by every VM, used while it holds the lease).
#[derive(Default)]
pub struct GlobalSync {
    pub(super) links: Vec<Link>,
    /// TimeAdjust calls in flight: token -> sent at (local ms).
    pub(super) adjusts: HashMap<u32, u64>,
    pub(super) client_id: Option<String>,
}

impl GlobalSync {
    pub fn owns_call(&self, token: u32) -> bool {
        self.adjusts.contains_key(&token)
    }

    pub fn owns_stream(&self, token: u32) -> bool {
        self.links.iter().any(|l| l.token == Some(token))
    }

    pub(super) fn close_all<H: Host>(&mut self, host: &H) {
        for link in &mut self.links {
            if let Some(t) = link.token.take() {
                let _ = host.grpc_stream_close(t);
            }
        }
        self.links.clear();
    }
}
