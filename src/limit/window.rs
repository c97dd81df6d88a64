//! One QPS window as polaris-go's `reject` plugin keeps it (`bucket_qps.go`): fixed windows aligned
//! to the epoch (start = now - now % duration), the full amount at each start. The record is what
//! the filter stores in shared data per (rule, amount, window key): the window's start and how
//! many requests it has admitted, so every worker of an Envoy counts against one total.

/// The start of the window `now_ms` falls in.
pub fn window_start(now_ms: u64, window_ms: u64) -> u64 {
    now_ms - now_ms % window_ms.max(1)
}

/// A stored window: its start and the requests admitted in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub used: u32,
}

impl Window {
    /// 12 bytes: start (u64 LE), used (u32 LE). Anything else reads as an empty, expired window.
    pub fn decode(bytes: Option<&[u8]>) -> Window {
        let Some(b) = bytes else {
            return Window::default();
        };
        let (Some(start), Some(used)) = (b.get(..8), b.get(8..12)) else {
            return Window::default();
        };
        match (<[u8; 8]>::try_from(start), <[u8; 4]>::try_from(used)) {
            (Ok(s), Ok(u)) => Window {
                start: u64::from_le_bytes(s),
                used: u32::from_le_bytes(u),
            },
            _ => Window::default(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12);
        out.extend_from_slice(&self.start.to_le_bytes());
        out.extend_from_slice(&self.used.to_le_bytes());
        out
    }

    /// Takes up to `want` of `max` for the window starting at `start` (a new window starts with
    /// the full amount). Returns the updated window and how many were granted.
    pub fn take(self, start: u64, max: u32, want: u32) -> (Window, u32) {
        let used = if self.start == start { self.used } else { 0 };
        let granted = want.min(max.saturating_sub(used));
        (
            Window {
                start,
                used: used.saturating_add(granted),
            },
            granted,
        )
    }
}

/// How many tokens a worker takes from the shared window at once: 1 for small amounts (exact),
/// about 1 % of the amount for large ones (at most 32), so a busy worker touches shared data once
/// per grant instead of once per request. Tokens a worker holds when its window ends are lost:
/// the Envoy admits at most the amount, and at least the amount minus (workers × (grant − 1)).
pub fn grant_size(max: u32) -> u32 {
    (max / 100).clamp(1, 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        assert_eq!(window_start(12_345, 1000), 12_000);
        assert_eq!(window_start(59_999, 60_000), 0);
        assert_eq!(window_start(60_000, 60_000), 60_000);
    }

    #[test]
    fn a_window_admits_its_amount_then_nothing_until_the_next_start() {
        let mut w = Window::default();
        let mut admitted = 0;
        for _ in 0..15 {
            let (next, granted) = w.take(1000, 10, 1);
            w = next;
            admitted += granted;
        }
        assert_eq!(admitted, 10);
        let (w, granted) = w.take(2000, 10, 1);
        assert_eq!(
            (granted, w.used),
            (1, 1),
            "the full amount again at the next start"
        );
    }

    #[test]
    fn a_grant_never_exceeds_what_is_left() {
        let (w, granted) = Window::default().take(0, 10, 4);
        assert_eq!(granted, 4);
        let (w, granted) = w.take(0, 10, 8);
        assert_eq!((granted, w.used), (6, 10));
    }

    #[test]
    fn records_round_trip_and_junk_is_an_expired_window() {
        let w = Window {
            start: 42_000,
            used: 7,
        };
        assert_eq!(Window::decode(Some(&w.encode())), w);
        assert_eq!(Window::decode(Some(b"short")), Window::default());
        assert_eq!(Window::decode(None), Window::default());
    }

    #[test]
    fn grants_are_exact_for_small_amounts() {
        assert_eq!(grant_size(10), 1);
        assert_eq!(grant_size(1000), 10);
        assert_eq!(grant_size(1_000_000), 32);
    }
}
