//! The CONCURRENCY record: how many requests of a (rule, window key) are in flight in the whole
//! Envoy, as polaris-go's `concurrency` plugin counts them per process. A request takes a slot
//! when admitted and gives it back when its stream ends, reset included.

/// The stored count (0 when absent or unreadable).
pub fn decode(bytes: Option<&[u8]>) -> u32 {
    bytes
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes)
}

/// One more in flight, if fewer than `max` are: the record to store.
pub fn acquire(stored: Option<&[u8]>, max: u32) -> Option<[u8; 4]> {
    let n = decode(stored);
    (n < max).then(|| (n + 1).to_le_bytes())
}

/// One fewer in flight (never below zero).
pub fn release(stored: Option<&[u8]>) -> [u8; 4] {
    decode(stored).saturating_sub(1).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn slots_run_out_at_the_threshold_and_come_back_on_release() {
        let mut stored: Option<[u8; 4]> = None;
        for _ in 0..3 {
            stored = Some(acquire(stored.as_ref().map(|b| &b[..]), 3).expect("a free slot"));
        }
        assert_eq!(acquire(stored.as_ref().map(|b| &b[..]), 3), None);
        let released = release(stored.as_ref().map(|b| &b[..]));
        assert_eq!(decode(Some(&released)), 2);
        assert!(acquire(Some(&released), 3).is_some());
    }

    #[test]
    fn a_release_without_a_record_stays_at_zero() {
        assert_eq!(decode(Some(&release(None))), 0);
    }
}
