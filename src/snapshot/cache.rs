//! A worker's decoded discovery data, one cache per kind. Each Envoy worker has its own VM, so
//! each keeps its own caches, filled from shared data and decoded (and compiled) only when a
//! service's shared entry changes (its CAS).

use rustc_hash::FxHashMap;

use super::decode::{decode_instances, DecodeError, Discovered};
use crate::model::{ServiceKey, ServiceSnapshot};

/// What a worker knows about a service's instances.
#[derive(Clone, Debug, PartialEq)]
pub enum Known {
    Ready(Box<ServiceSnapshot>),
    NotFound,
}

impl Known {
    /// Decodes a stored INSTANCE answer.
    pub fn from_stored(key: &ServiceKey, bytes: &[u8]) -> Result<Known, DecodeError> {
        match decode_instances(key, bytes)? {
            Discovered::Changed(snapshot) => Ok(Known::Ready(snapshot)),
            Discovered::NotFound => Ok(Known::NotFound),
            Discovered::Unchanged => {
                Err(DecodeError::Mismatch("stored answer says no-change".into()))
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Entry<T> {
    value: T,
    /// CAS of the shared entry this came from; `None` for answers not (yet) seen in shared data.
    cas: Option<u32>,
    /// Answers that did not come through shared data expire, so they are looked up again.
    expires_ms: Option<u64>,
}

/// Decoded values of one kind by service.
#[derive(Clone, Debug)]
pub struct Cache<T> {
    entries: FxHashMap<ServiceKey, Entry<T>>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            entries: FxHashMap::default(),
        }
    }
}

/// The instances of every service a worker has asked about.
pub type ServiceCache = Cache<Known>;

impl<T> Cache<T> {
    /// The value of `key`, unless it was a transient answer that has expired. The clock is read
    /// only for transient answers, so the common case makes no host call.
    pub fn get(&self, key: &ServiceKey, now_ms: impl FnOnce() -> u64) -> Option<&T> {
        let entry = self.entries.get(key)?;
        match entry.expires_ms {
            Some(t) if t <= now_ms() => None,
            _ => Some(&entry.value),
        }
    }

    /// The value of `key`, expired or not (for a caller that just checked with `get`).
    pub fn peek(&self, key: &ServiceKey) -> Option<&T> {
        self.entries.get(key).map(|e| &e.value)
    }

    /// The CAS a cached value was decoded from.
    pub fn cas(&self, key: &ServiceKey) -> Option<u32> {
        self.entries.get(key).and_then(|e| e.cas)
    }

    /// Services this worker has asked about, for resync.
    pub fn keys(&self) -> Vec<ServiceKey> {
        self.entries.keys().cloned().collect()
    }

    /// Builds a value from a shared entry unless it is the one already held; true when a new
    /// value was installed. A failed build keeps the last good value.
    pub fn install_shared<E>(
        &mut self,
        key: &ServiceKey,
        bytes: &[u8],
        cas: Option<u32>,
        build: impl FnOnce(&[u8]) -> Result<T, E>,
    ) -> Result<bool, E> {
        if cas.is_some() && self.cas(key) == cas {
            return Ok(false);
        }
        let value = build(bytes)?;
        self.entries.insert(
            key.clone(),
            Entry {
                value,
                cas,
                expires_ms: None,
            },
        );
        Ok(true)
    }

    /// Records a value that did not come through shared data (`expires_ms: None`: until the
    /// shared entry replaces it).
    pub fn install_transient(&mut self, key: &ServiceKey, value: T, expires_ms: Option<u64>) {
        self.entries.insert(
            key.clone(),
            Entry {
                value,
                cas: None,
                expires_ms,
            },
        );
    }

    pub fn remove(&mut self, key: &ServiceKey) {
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::polaris::proto;
    use prost::Message;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn stored(rev: &str, ports: &[u32]) -> Vec<u8> {
        proto::DiscoverResponse {
            code: Some(200000),
            r#type: proto::discover_response::DiscoverResponseType::Instance as i32,
            service: Some(proto::Service {
                name: Some("echo".into()),
                namespace: Some("default".into()),
                revision: Some(rev.into()),
                ..Default::default()
            }),
            instances: ports
                .iter()
                .map(|&p| proto::Instance {
                    host: Some("127.0.0.1".into()),
                    port: Some(p),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn install(c: &mut ServiceCache, bytes: &[u8], cas: Option<u32>) -> Result<bool, DecodeError> {
        c.install_shared(&key(), bytes, cas, |b| Known::from_stored(&key(), b))
    }

    #[test]
    fn the_same_cas_is_not_decoded_again() {
        let mut c = ServiceCache::default();
        assert_eq!(install(&mut c, &stored("1", &[1]), Some(5)), Ok(true));
        assert_eq!(install(&mut c, b"never decoded", Some(5)), Ok(false));
    }

    fn key() -> ServiceKey {
        ServiceKey::new("default", "echo")
    }

    fn ports(c: &ServiceCache) -> Vec<u32> {
        match c.get(&key(), || 0) {
            Some(Known::Ready(s)) => s.instances.iter().map(|i| i.port).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shared_entry_is_decoded_and_replaced_when_its_cas_changes() {
        let mut c = ServiceCache::default();
        install(&mut c, &stored("1", &[1]), Some(5)).unwrap();
        assert_eq!(ports(&c), vec![1]);
        install(&mut c, &stored("2", &[1, 2]), Some(6)).unwrap();
        assert_eq!(ports(&c), vec![1, 2]);
    }

    #[test]
    fn malformed_shared_entry_keeps_the_last_good_one() {
        let mut c = ServiceCache::default();
        install(&mut c, &stored("1", &[1]), Some(5)).unwrap();
        assert!(install(&mut c, b"\xff\xff", Some(6)).is_err());
        assert_eq!(ports(&c), vec![1]);
    }

    #[test]
    fn transient_answers_expire() {
        let mut c = ServiceCache::default();
        c.install_transient(&key(), Known::NotFound, Some(100));
        assert_eq!(c.get(&key(), || 99), Some(&Known::NotFound));
        assert_eq!(c.get(&key(), || 100), None);
    }
}
