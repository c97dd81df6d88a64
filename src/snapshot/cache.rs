//! A worker's decoded services. Each Envoy worker has its own VM, so each keeps its own cache,
//! filled from shared data and re-decoded only when a service's shared entry changes (its CAS).

use std::collections::HashMap;

use super::decode::{decode_instances, DecodeError, Discovered, DiscoveryError};
use super::model::{ServiceKey, ServiceSnapshot};

/// What a worker knows about a service.
#[derive(Clone, Debug, PartialEq)]
pub enum Known {
    Ready(Box<ServiceSnapshot>),
    NotFound,
    /// The first discovery failed; remembered briefly so a down Polaris is not asked per request.
    Failed(DiscoveryError),
}

#[derive(Clone, Debug)]
struct Entry {
    known: Known,
    /// CAS of the shared entry this came from; `None` for answers not (yet) seen in shared data.
    cas: Option<u32>,
    /// Answers that did not come through shared data expire, so they are looked up again.
    expires_ms: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct ServiceCache {
    entries: HashMap<ServiceKey, Entry>,
}

impl ServiceCache {
    /// What is known of `key`, unless it was a transient answer that has expired. The clock is
    /// read only for transient answers, so the common case makes no host call.
    pub fn get(&self, key: &ServiceKey, now_ms: impl FnOnce() -> u64) -> Option<&Known> {
        let entry = self.entries.get(key)?;
        match entry.expires_ms {
            Some(t) if t <= now_ms() => None,
            _ => Some(&entry.known),
        }
    }

    /// What is known of `key`, expired or not (for a caller that just checked with `get`).
    pub fn peek(&self, key: &ServiceKey) -> Option<&Known> {
        self.entries.get(key).map(|e| &e.known)
    }

    /// The CAS a cached service was decoded from.
    pub fn cas(&self, key: &ServiceKey) -> Option<u32> {
        self.entries.get(key).and_then(|e| e.cas)
    }

    /// Services this worker has asked about, for resync.
    pub fn keys(&self) -> Vec<ServiceKey> {
        self.entries.keys().cloned().collect()
    }

    /// Decodes a shared entry (a stored `DiscoverResponse`) unless it is the one already held.
    pub fn install_shared(
        &mut self,
        key: &ServiceKey,
        bytes: &[u8],
        cas: Option<u32>,
    ) -> Result<(), DecodeError> {
        if cas.is_some() && self.cas(key) == cas {
            return Ok(());
        }
        let known = match decode_instances(key, bytes)? {
            Discovered::Changed(snapshot) => Known::Ready(snapshot),
            Discovered::NotFound => Known::NotFound,
            Discovered::Unchanged => {
                return Err(DecodeError::Mismatch("stored answer says no-change".into()))
            }
        };
        self.entries.insert(
            key.clone(),
            Entry {
                known,
                cas,
                expires_ms: None,
            },
        );
        Ok(())
    }

    /// Records an answer that did not come through shared data, valid until `expires_ms`.
    pub fn install_transient(&mut self, key: &ServiceKey, known: Known, expires_ms: u64) {
        self.entries.insert(
            key.clone(),
            Entry {
                known,
                cas: None,
                expires_ms: Some(expires_ms),
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
        c.install_shared(&key(), &stored("1", &[1]), Some(5))
            .unwrap();
        assert_eq!(ports(&c), vec![1]);
        c.install_shared(&key(), &stored("2", &[1, 2]), Some(6))
            .unwrap();
        assert_eq!(ports(&c), vec![1, 2]);
    }

    #[test]
    fn malformed_shared_entry_keeps_the_last_good_one() {
        let mut c = ServiceCache::default();
        c.install_shared(&key(), &stored("1", &[1]), Some(5))
            .unwrap();
        assert!(c.install_shared(&key(), b"\xff\xff", Some(6)).is_err());
        assert_eq!(ports(&c), vec![1]);
    }

    #[test]
    fn transient_answers_expire() {
        let mut c = ServiceCache::default();
        c.install_transient(&key(), Known::NotFound, 100);
        assert_eq!(c.get(&key(), || 99), Some(&Known::NotFound));
        assert_eq!(c.get(&key(), || 100), None);
    }
}
