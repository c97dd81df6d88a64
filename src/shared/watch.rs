//! The watch list: services the leader keeps refreshed. Workers add a service the first time a
//! request for it is answered by Polaris; the list is bounded by `max_services`.

use std::collections::HashSet;

use crate::destination::valid_name;
use crate::model::ServiceKey;

/// Services as `namespace/name` lines (names never contain `/` or newlines; see `destination`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchList {
    services: Vec<ServiceKey>,
}

/// Result of adding a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    New,
    AlreadyWatched,
    Full,
}

impl WatchList {
    /// The services of a stored list, each once. Only lines naming a service a request could
    /// have named are kept (see `destination::valid_name`): anything else in shared data (a torn
    /// or foreign write) would have the leader ask Polaris about junk, and would not survive
    /// `encode`; a service listed twice would be refreshed twice.
    pub fn decode(bytes: Option<&[u8]>) -> WatchList {
        let text = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("");
        let mut seen = HashSet::new();
        let services = text
            .lines()
            .filter_map(|l| l.split_once('/'))
            .filter(|(ns, name)| valid_name(ns) && valid_name(name))
            .filter(|entry| seen.insert(*entry))
            .map(|(ns, name)| ServiceKey::new(ns, name))
            .collect();
        WatchList { services }
    }

    pub fn encode(&self) -> String {
        self.services
            .iter()
            .map(|k| format!("{}/{}\n", k.namespace, k.name))
            .collect()
    }

    pub fn services(&self) -> &[ServiceKey] {
        &self.services
    }

    pub fn contains(&self, key: &ServiceKey) -> bool {
        self.services.contains(key)
    }

    /// Drops every service `drop` says yes to; true when any went.
    pub fn remove_where(&mut self, mut drop: impl FnMut(&ServiceKey) -> bool) -> bool {
        let before = self.services.len();
        self.services.retain(|k| !drop(k));
        self.services.len() != before
    }

    pub fn add(&mut self, key: &ServiceKey, limit: usize) -> Added {
        if self.contains(key) {
            Added::AlreadyWatched
        } else if self.services.len() >= limit {
            Added::Full
        } else {
            self.services.push(key.clone());
            Added::New
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn round_trips_and_dedupes() {
        let mut w = WatchList::default();
        let a = ServiceKey::new("default", "a");
        assert_eq!(w.add(&a, 10), Added::New);
        assert_eq!(w.add(&a, 10), Added::AlreadyWatched);
        assert_eq!(
            w.add(&ServiceKey::new("p", "polaris.checker"), 10),
            Added::New
        );
        let decoded = WatchList::decode(Some(w.encode().as_bytes()));
        assert_eq!(decoded, w);
    }

    #[test]
    fn limit_is_enforced() {
        let mut w = WatchList::default();
        assert_eq!(w.add(&ServiceKey::new("d", "a"), 1), Added::New);
        assert_eq!(w.add(&ServiceKey::new("d", "b"), 1), Added::Full);
    }

    #[test]
    fn lines_that_name_no_valid_service_are_dropped_so_what_decodes_round_trips() {
        // Found by the shared_records fuzz target: a control character in a namespace, and a
        // name ending in a bare CR (which `lines` strips once a line feed follows it, so the
        // re-encoded list decoded differently).
        let w = WatchList::decode(Some(b"\x02/*\nd/b\r\nd/a b\nd/x/y\nd/ok"));
        assert_eq!(
            w.services(),
            &[ServiceKey::new("d", "b"), ServiceKey::new("d", "ok")]
        );
        let w = WatchList::decode(Some(b"d/b\r"));
        assert_eq!(w.services().len(), 0);
        assert_eq!(WatchList::decode(Some(w.encode().as_bytes())), w);
    }

    #[test]
    fn a_service_listed_twice_is_watched_once() {
        // Found by the shared_records fuzz target.
        let w = WatchList::decode(Some(b"d/a\nd/b\nd/a\n"));
        assert_eq!(
            w.services(),
            &[ServiceKey::new("d", "a"), ServiceKey::new("d", "b")]
        );
    }

    #[test]
    fn junk_decodes_to_what_is_readable() {
        let w = WatchList::decode(Some(b"nonsense\n/x\nd/ok\n"));
        assert_eq!(w.services(), &[ServiceKey::new("d", "ok")]);
        assert_eq!(WatchList::decode(Some(b"\xff\xfe")).services().len(), 0);
    }
}
