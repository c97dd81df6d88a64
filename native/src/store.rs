//! Shared data as plain Rust: one process-wide map (like proxy-wasm's per-`vm_id` shared data,
//! every plugin of this Envoy sees it), values with a CAS version that conditional writes must
//! name. The core's leases, watch list, snapshots and breaker state run on it unchanged.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};

use polaris_wasm::core::host::StoreError;

type Map = HashMap<String, (Vec<u8>, u32)>;

static DATA: LazyLock<Mutex<Map>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn data() -> MutexGuard<'static, Map> {
    // A panic while holding the lock left the map consistent (every write is one insert).
    DATA.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn get(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    match data().get(key) {
        Some((v, cas)) => (Some(v.clone()), Some(*cas)),
        None => (None, None),
    }
}

/// Envoy's semantics: a CAS is checked only against an existing key, and 0 means no check.
pub fn set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
    let mut map = data();
    let current = map.get(key).map(|(_, c)| *c);
    if let (Some(want), Some(have)) = (cas.filter(|c| *c != 0), current) {
        if want != have {
            return Err(StoreError::CasMismatch);
        }
    }
    let next = current.map_or(1, |c| c.wrapping_add(1).max(1));
    map.insert(key.to_owned(), (value.to_vec(), next));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_naming_a_stale_cas_is_refused() {
        let key = "test/store/stale";
        set(key, b"a", None).ok();
        let (_, cas) = get(key);
        assert!(set(key, b"b", cas).is_ok());
        assert_eq!(set(key, b"c", cas), Err(StoreError::CasMismatch));
        assert_eq!(get(key).0.as_deref(), Some(&b"b"[..]));
    }
}
