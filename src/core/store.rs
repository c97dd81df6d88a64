//! Shared-data operations over the [`Store`] trait (the layout itself is in `crate::shared`).

use std::fmt;

use super::host::{Store, StoreError};
use crate::model::{Kind, ServiceKey};
use crate::shared::{self, watch, WatchList};

/// Bounded retries for CAS loops: contention is between a handful of VMs.
pub const CAS_TRIES: usize = 8;

/// What an update function wants done with the value it was shown.
pub enum Update<T> {
    /// Write this value (by CAS against what was read), then return the result.
    Write(Vec<u8>, T),
    /// Leave the value as it is.
    Keep(T),
}

/// A CAS loop gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasError {
    /// Every one of [`CAS_TRIES`] writes lost to another VM.
    Contended,
    /// The host refused the write.
    Host(String),
}

impl fmt::Display for CasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CasError::Contended => write!(f, "shared data contended ({CAS_TRIES} CAS tries lost)"),
            CasError::Host(e) => write!(f, "shared data write refused: {e}"),
        }
    }
}

/// Reads `key`, lets `update` decide, and writes by CAS; retried up to [`CAS_TRIES`] times when
/// another VM wrote in between. Out of tries, nothing is written and `Contended` is returned:
/// callers decide what that means for them.
pub fn cas_update<S: Store + ?Sized, T>(
    store: &S,
    key: &str,
    mut update: impl FnMut(Option<&[u8]>) -> Update<T>,
) -> Result<T, CasError> {
    for _ in 0..CAS_TRIES {
        let (bytes, cas) = store.get(key);
        match update(bytes.as_deref()) {
            Update::Keep(out) => return Ok(out),
            Update::Write(value, out) => match store.set(key, &value, cas) {
                Ok(()) => return Ok(out),
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Host(e)) => return Err(CasError::Host(e.0)),
            },
        }
    }
    Err(CasError::Contended)
}

/// Adds one to a counter key and returns the new value.
pub fn increment<S: Store + ?Sized>(store: &S, key: &str) -> Result<u64, CasError> {
    cas_update(store, key, |bytes| {
        let next = shared::decode_counter(bytes).wrapping_add(1);
        Update::Write(shared::encode_counter(next).to_vec(), next)
    })
}

pub fn generation<S: Store + ?Sized>(store: &S) -> u64 {
    shared::decode_counter(store.get(shared::GEN_KEY).0.as_deref())
}

pub fn watch_list<S: Store + ?Sized>(store: &S) -> WatchList {
    WatchList::decode(store.get(shared::WATCH_KEY).0.as_deref())
}

/// Adds a service to the watch list; a contended list counts as full (the request is answered,
/// and the next one tries again).
pub fn watch<S: Store + ?Sized>(store: &S, key: &ServiceKey, limit: usize) -> watch::Added {
    let added = cas_update(store, shared::WATCH_KEY, |bytes| {
        let mut list = WatchList::decode(bytes);
        match list.add(key, limit) {
            watch::Added::New => Update::Write(list.encode().into_bytes(), watch::Added::New),
            other => Update::Keep(other),
        }
    });
    added.unwrap_or_else(|e| {
        log::warn!("could not add {key} to the watch list: {e}");
        watch::Added::Full
    })
}

/// Stores an answer about a service and tells every worker to resync. An answer identical to
/// the stored one is not written: the server answers a service without rules of some kinds
/// (CIRCUIT_BREAKER, FAULT_DETECTOR) in full, without a revision, on every refresh.
pub fn store_answer<S: Store + ?Sized>(
    store: &S,
    kind: Kind,
    key: &ServiceKey,
    answer: &[u8],
) -> bool {
    let slot = shared::resource_key(kind, key);
    if kind_answers_without_revision(kind) && store.get(&slot).0.as_deref() == Some(answer) {
        return false;
    }
    if let Err(e) = store.set(&slot, answer, None) {
        log::warn!("cannot store {} of {key}: {e:?}", kind.name());
        return false;
    }
    if let Err(e) = increment(store, shared::GEN_KEY) {
        log::warn!("cannot bump snapshot generation after storing {key}: {e}");
    }
    true
}

/// Kinds whose "no rules" answer carries no revision, so every refresh of a service without
/// them comes back in full (seen with server v1.18.1).
fn kind_answers_without_revision(kind: Kind) -> bool {
    matches!(kind, Kind::CircuitBreaker | Kind::FaultDetector)
}
