//! Shared-data reads and CAS writes (layout in `crate::shared`).

use proxy_wasm::hostcalls;
use proxy_wasm::types::{Bytes, Status};

use crate::shared::{self, watch, WatchList};
use crate::snapshot::{Kind, ServiceKey};

/// Bounded retries for CAS loops: contention is between a handful of VMs.
const CAS_TRIES: usize = 8;

pub fn get(key: &str) -> (Option<Bytes>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or_else(|e| {
        log::warn!("shared data read of {key} failed: {e:?}");
        (None, None)
    })
}

pub fn set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    hostcalls::set_shared_data(key, Some(value), cas)
}

/// Adds one to a counter key and returns the new value.
pub fn increment(key: &str) -> Option<u64> {
    for _ in 0..CAS_TRIES {
        let (bytes, cas) = get(key);
        let next = shared::decode_counter(bytes.as_deref()).wrapping_add(1);
        if set(key, &shared::encode_counter(next), cas).is_ok() {
            return Some(next);
        }
    }
    None
}

pub fn generation() -> u64 {
    shared::decode_counter(get(shared::GEN_KEY).0.as_deref())
}

pub fn watch_list() -> WatchList {
    WatchList::decode(get(shared::WATCH_KEY).0.as_deref())
}

/// Adds a service to the watch list.
pub fn watch(key: &ServiceKey, limit: usize) -> watch::Added {
    for _ in 0..CAS_TRIES {
        let (bytes, cas) = get(shared::WATCH_KEY);
        let mut list = WatchList::decode(bytes.as_deref());
        let added = list.add(key, limit);
        if added != watch::Added::New {
            return added;
        }
        if set(shared::WATCH_KEY, list.encode().as_bytes(), cas).is_ok() {
            return added;
        }
    }
    log::warn!("could not add {key} to the watch list: shared data contended");
    watch::Added::Full
}

/// Stores an answer about a service and tells every worker to resync.
pub fn store_answer(kind: Kind, key: &ServiceKey, answer: &[u8]) -> bool {
    if let Err(e) = set(&shared::resource_key(kind, key), answer, None) {
        log::warn!("cannot store snapshot of {key}: {e:?}");
        return false;
    }
    if increment(shared::GEN_KEY).is_none() {
        log::warn!("cannot bump snapshot generation after storing {key}");
    }
    true
}
