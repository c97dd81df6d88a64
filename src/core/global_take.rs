//! The request path of GLOBAL rate limits: a take from this Envoy's record of a global window in
//! shared data ([`GlobalWindow`]), by CAS, never waiting on the network. The first take of a new
//! window key adds it to the registry the leader syncs with polaris-limiter
//! (`core::global_limit`).

use serde::{Deserialize, Serialize};

use super::host::Store;
use super::store::{self, CasError, Update};
use crate::limit::global::{self, Global, GlobalWindow, Take};
use crate::model::ServiceKey;

/// Window keys of GLOBAL rules the leader keeps in sync.
pub const LIST_KEY: &str = "polaris-wasm/grl/list";
/// At most this many window keys are synced; beyond, new keys stay in failover.
pub const MAX_KEYS: usize = 512;

/// When the limiter last answered this Envoy's leader (local ms, u64 LE).
pub const ANSWERED_KEY: &str = "polaris-wasm/grl/answered";

/// Whether the limiter answered within [`global::STALE_MS`].
fn answered_recently<S: Store + ?Sized>(store: &S, now_local: u64) -> bool {
    let at = store
        .get(ANSWERED_KEY)
        .0
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_le_bytes);
    at != 0 && now_local.saturating_sub(at) <= global::STALE_MS
}

/// Where the request path is in time for one global counter.
#[derive(Clone, Copy, Debug)]
pub struct At {
    /// Window start, limiter clock.
    pub start: u64,
    pub local_now: u64,
}

/// One window key of a GLOBAL rule: what the leader INITs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub namespace: String,
    pub service: String,
    pub rule: String,
    pub label: String,
}

impl Entry {
    pub fn service_key(&self) -> ServiceKey {
        ServiceKey::new(self.namespace.clone(), self.service.clone())
    }
}

/// Shared-data key of this Envoy's record of one global window.
pub fn record_key(service: &ServiceKey, rule: &str, window_ms: u64, label_hash: u64) -> String {
    format!(
        "polaris-wasm/grl/w/{}/{}/{}/{}/{:016x}",
        service.namespace, service.name, rule, window_ms, label_hash
    )
}

pub fn read_list<S: Store + ?Sized>(store: &S) -> Vec<Entry> {
    store
        .get(LIST_KEY)
        .0
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Changes the registry by CAS; `change` returns false to leave it as it is.
pub fn update_list<S: Store + ?Sized>(
    store: &S,
    mut change: impl FnMut(&mut Vec<Entry>) -> bool,
) -> Result<bool, CasError> {
    store::cas_update(store, LIST_KEY, |bytes| {
        let mut list: Vec<Entry> = bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        if !change(&mut list) {
            return Update::Keep(false);
        }
        match serde_json::to_vec(&list) {
            Ok(v) => Update::Write(v, true),
            Err(_) => Update::Keep(false),
        }
    })
}

/// Takes up to `want` tokens (`max` the amount) from the record at `key`: `Some(granted)`, or
/// `None` when failover PASS admits without counting. A new record is registered for the leader
/// (a full or contended registry leaves the key in failover).
#[allow(clippy::too_many_arguments)]
pub fn take<S: Store + ?Sized>(
    store: &S,
    key: &str,
    at: At,
    want: u32,
    max: u32,
    g: &Global,
    entry: impl FnOnce() -> Entry,
) -> Result<Option<u32>, CasError> {
    let (granted, created) = store::cas_update(store, key, |bytes| {
        // Absent, or reset by the leader when it went idle.
        let record = GlobalWindow::decode(bytes);
        let created = record.created_ms == 0;
        let answering = || answered_recently(store, at.local_now);
        match record.take(at.start, at.local_now, want, max, g, &answering) {
            // Created even in failover PASS, so the leader learns of the key.
            Take::Pass if created => {
                let mut fresh = record;
                fresh.created_ms = at.local_now.max(1);
                Update::Write(fresh.encode(), (None, true))
            }
            Take::Pass => Update::Keep((None, false)),
            Take::Write { window, granted } => {
                Update::Write(window.encode(), (Some(granted), created))
            }
        }
    })?;
    if created {
        let entry = entry();
        let added = update_list(store, |list| {
            if list.contains(&entry) || list.len() >= MAX_KEYS {
                return false;
            }
            list.push(entry.clone());
            true
        });
        if let Err(e) = added {
            log::warn!("global rate-limit key not registered: {e}");
        }
    }
    Ok(granted)
}
