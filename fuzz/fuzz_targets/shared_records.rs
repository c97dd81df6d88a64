//! The records workers read back from proxy-wasm shared data, as arbitrary bytes (another VM, an
//! older build or a torn write may have left anything there): the watch list, the leader lease
//! the counters, and the admission records (first-discovery budget, services last asked for).
//!
//! Invariants:
//! - nothing panics;
//! - what the watch list decodes round-trips: `decode(encode(decode(x))) == decode(x)`, and
//!   every service it names has a non-empty namespace and name that the list's own encoding can
//!   carry (no `/` in the namespace, no line break or other control character anywhere);
//! - adding to a decoded list keeps it within its limit and never duplicates a service;
//! - a decoded lease encodes to a value that decodes to it; `step` follows only a readable,
//!   live lease of another owner;
//! - a counter is its 8 little-endian bytes, anything else reads as 0, and encoding round-trips;
//! - a budget decodes from exactly 12 bytes (else reads as unused), round-trips, and `take`
//!   never hands out more than its size in a second;
//! - the services-last-asked-for record round-trips, and `touch` only moves a time forward.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polaris_wasm::model::ServiceKey;
use polaris_wasm::shared::admission::{Budget, Seen};
use polaris_wasm::shared::lease::{step, Lease, LeaseStep};
use polaris_wasm::shared::{decode_counter, encode_counter, Added, WatchList};

fuzz_target!(|data: &[u8]| {
    let list = WatchList::decode(Some(data));
    let encoded = list.encode();
    let again = WatchList::decode(Some(encoded.as_bytes()));
    assert_eq!(again, list, "watch list does not round-trip: {encoded:?}");
    for key in list.services() {
        assert!(!key.namespace.is_empty() && !key.name.is_empty(), "{key:?}");
        assert!(!key.namespace.contains('/'), "{key:?}");
        assert!(
            !key.namespace
                .chars()
                .chain(key.name.chars())
                .any(char::is_control),
            "{key:?}"
        );
    }
    let mut grown = list.clone();
    let limit = list.services().len() + 1;
    let extra = ServiceKey::new("default", "fuzz-extra");
    let first = grown.add(&extra, limit);
    assert!(matches!(first, Added::New | Added::AlreadyWatched));
    assert_eq!(grown.add(&extra, limit), Added::AlreadyWatched);
    assert!(grown.services().len() <= limit);
    assert_eq!(
        grown.services().iter().filter(|k| **k == extra).count(),
        1,
        "duplicate in the watch list"
    );

    let lease = Lease::decode(data);
    if let Some(lease) = lease {
        assert_eq!(Lease::decode(lease.encode().as_bytes()), Some(lease));
    }
    let (me, now) = (7, 1_000_000);
    match step(Some(data), me, now) {
        LeaseStep::Follow => {
            let l = lease.expect("followed an unreadable lease");
            assert!(l.owner != me && l.expires_ms > now);
        }
        LeaseStep::Claim => {
            assert!(lease.is_none_or(|l| l.owner == me || l.expires_ms <= now));
        }
    }

    let n = decode_counter(Some(data));
    match <[u8; 8]>::try_from(data) {
        Ok(bytes) => assert_eq!(encode_counter(n), bytes),
        Err(_) => assert_eq!(n, 0),
    }
    assert_eq!(decode_counter(Some(&encode_counter(n))), n);

    let budget = Budget::decode(Some(data));
    if data.len() != 12 {
        assert_eq!(budget, Budget::default());
    }
    assert_eq!(Budget::decode(Some(&budget.encode())), budget);
    let per_second = u32::from(data.first().copied().unwrap_or(0) % 8);
    let second = budget.second;
    let mut b = Budget { second, used: 0 };
    for _ in 0..per_second {
        b = b.take(second, per_second).expect("within the size");
    }
    assert_eq!(b.take(second, per_second), None, "more than the size in a second");

    let seen = Seen::decode(Some(data));
    assert_eq!(Seen::decode(Some(&seen.encode())), seen, "seen does not round-trip");
    let mut touched = seen.clone();
    let key = ServiceKey::new("default", "fuzz-extra");
    let before = touched.get(&key);
    touched.touch(&key, 5);
    assert_eq!(touched.get(&key), Some(before.map_or(5, |t| t.max(5))));
});
