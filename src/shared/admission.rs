//! Shared records that bound what clients naming unknown or many services cost: the budget of
//! first discoveries (one per Envoy, per second) and when each watched service was last asked
//! for (so idle ones can leave the watch list).

use std::collections::HashMap;

use crate::destination::valid_name;
use crate::model::ServiceKey;

/// The first-discovery budget of the current second: 8 bytes of second, 4 of count, little
/// endian. Anything else reads as an unused budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub second: u64,
    pub used: u32,
}

impl Budget {
    pub fn decode(bytes: Option<&[u8]>) -> Budget {
        let Some(b) = bytes.filter(|b| b.len() == 12) else {
            return Budget::default();
        };
        let second = b.get(..8).and_then(|s| <[u8; 8]>::try_from(s).ok());
        let used = b.get(8..).and_then(|s| <[u8; 4]>::try_from(s).ok());
        match (second, used) {
            (Some(s), Some(u)) => Budget {
                second: u64::from_le_bytes(s),
                used: u32::from_le_bytes(u),
            },
            _ => Budget::default(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.second.to_le_bytes().to_vec();
        out.extend_from_slice(&self.used.to_le_bytes());
        out
    }

    /// The budget after taking one at `second` from `per_second`; `None` when it is used up.
    pub fn take(self, second: u64, per_second: u32) -> Option<Budget> {
        let used = if self.second == second { self.used } else { 0 };
        (used < per_second).then_some(Budget {
            second,
            used: used + 1,
        })
    }
}

/// When each watched service was last asked for: `namespace/name millis` lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    last_ms: HashMap<ServiceKey, u64>,
}

impl Seen {
    /// Lines that name no valid service or carry no number are dropped.
    pub fn decode(bytes: Option<&[u8]>) -> Seen {
        let text = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("");
        let last_ms = text
            .lines()
            .filter_map(|l| {
                let (service, ms) = l.split_once(' ')?;
                let (ns, name) = service.split_once('/')?;
                let ms = ms.parse::<u64>().ok()?;
                (valid_name(ns) && valid_name(name)).then(|| (ServiceKey::new(ns, name), ms))
            })
            .collect();
        Seen { last_ms }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut lines: Vec<String> = self
            .last_ms
            .iter()
            .map(|(k, ms)| format!("{}/{} {ms}\n", k.namespace, k.name))
            .collect();
        lines.sort();
        lines.concat().into_bytes()
    }

    pub fn get(&self, key: &ServiceKey) -> Option<u64> {
        self.last_ms.get(key).copied()
    }

    /// Records a use; true when the record changed.
    pub fn touch(&mut self, key: &ServiceKey, now_ms: u64) -> bool {
        match self.last_ms.get_mut(key) {
            Some(ms) if *ms >= now_ms => false,
            Some(ms) => {
                *ms = now_ms;
                true
            }
            None => {
                self.last_ms.insert(key.clone(), now_ms);
                true
            }
        }
    }

    /// Keeps only the services `keep` says yes to; true when any went.
    pub fn retain(&mut self, mut keep: impl FnMut(&ServiceKey) -> bool) -> bool {
        let before = self.last_ms.len();
        self.last_ms.retain(|k, _| keep(k));
        self.last_ms.len() != before
    }

    pub fn len(&self) -> usize {
        self.last_ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_ms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_budget_refills_each_second_and_stops_at_its_size() {
        let b = Budget::default();
        let b = b.take(10, 2).unwrap();
        let b = b.take(10, 2).unwrap();
        assert_eq!(b.take(10, 2), None);
        assert_eq!(
            b.take(11, 2),
            Some(Budget {
                second: 11,
                used: 1
            })
        );
        assert_eq!(Budget::decode(Some(&b.encode())), b);
        assert_eq!(Budget::decode(Some(b"junk")), Budget::default());
    }

    #[test]
    fn seen_round_trips_and_drops_junk() {
        let mut s = Seen::default();
        assert!(s.touch(&ServiceKey::new("d", "a"), 5));
        assert!(!s.touch(&ServiceKey::new("d", "a"), 5));
        assert!(s.touch(&ServiceKey::new("d", "b"), 7));
        assert_eq!(Seen::decode(Some(&s.encode())), s);
        let junk = Seen::decode(Some(b"d/a 1\nd/b x\nbad 3\nd/a b 4\n"));
        assert_eq!(junk.len(), 1);
        assert_eq!(junk.get(&ServiceKey::new("d", "a")), Some(1));
    }
}
