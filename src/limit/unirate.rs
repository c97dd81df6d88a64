//! The uniform-rate (unirate) record, as polaris-go's `unirate` plugin keeps its leaky bucket:
//! requests leave `interval` apart, each waiting for its turn up to the rule's queueing bound.
//! The filter stores one record per (rule, window key) in shared data: the earliest time the next
//! request may leave, so every worker of an Envoy takes turns from one schedule.

use super::rule::Pace;

/// What taking a turn came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Turn {
    /// The request may leave after `wait_ms` (0: now); `next` is the record to store.
    Go { wait_ms: u64, next: [u8; 8] },
    /// Its turn would be `wait_ms` away, beyond the queueing bound.
    Over { wait_ms: u64 },
}

/// The stored next-turn time, microseconds since the epoch (0 when absent or unreadable).
pub fn decode(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

/// Takes the next turn at `now_ms`: the earlier of now and the stored next turn, then the
/// schedule moves one interval on. A turn more than `max_delay_ms` away is not taken.
pub fn take(stored: Option<&[u8]>, now_ms: u64, pace: Pace) -> Turn {
    let now_us = now_ms.saturating_mul(1000);
    let slot = decode(stored).max(now_us);
    let wait_ms = (slot - now_us).div_ceil(1000);
    if wait_ms > pace.max_delay_ms {
        return Turn::Over { wait_ms };
    }
    Turn::Go {
        wait_ms,
        next: slot.saturating_add(pace.interval_us).to_le_bytes(),
    }
}

/// Gives back a turn that led to no request (another rule limited it), when no later turn was
/// taken since: `taken` is the record this request stored.
pub fn give_back(stored: Option<&[u8]>, taken: [u8; 8], pace: Pace) -> Option<[u8; 8]> {
    let now = decode(stored);
    (stored == Some(&taken[..])).then(|| now.saturating_sub(pace.interval_us).to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const TEN_PER_SECOND: Pace = Pace {
        interval_us: 100_000,
        max_delay_ms: 1000,
    };

    fn run(stored: &mut Option<[u8; 8]>, now_ms: u64) -> Turn {
        let turn = take(stored.as_ref().map(|b| &b[..]), now_ms, TEN_PER_SECOND);
        if let Turn::Go { next, .. } = &turn {
            *stored = Some(*next);
        }
        turn
    }

    #[test]
    fn requests_arriving_together_leave_one_interval_apart() {
        let mut stored = None;
        let waits: Vec<u64> = (0..5)
            .map(|_| match run(&mut stored, 5_000) {
                Turn::Go { wait_ms, .. } => wait_ms,
                Turn::Over { .. } => u64::MAX,
            })
            .collect();
        assert_eq!(waits, vec![0, 100, 200, 300, 400]);
    }

    #[test]
    fn a_turn_beyond_the_queueing_bound_is_refused_and_not_taken() {
        let mut stored = None;
        for _ in 0..11 {
            assert!(matches!(run(&mut stored, 0), Turn::Go { .. }));
        }
        assert_eq!(run(&mut stored, 0), Turn::Over { wait_ms: 1100 });
        // The refused request took nothing: 50 ms later the next turn is 1050 ms away.
        assert_eq!(run(&mut stored, 50), Turn::Over { wait_ms: 1050 });
        assert!(matches!(
            run(&mut stored, 100),
            Turn::Go { wait_ms: 1000, .. }
        ));
    }

    #[test]
    fn an_idle_schedule_does_not_bank_turns() {
        let mut stored = None;
        run(&mut stored, 0);
        assert!(matches!(
            run(&mut stored, 10_000),
            Turn::Go { wait_ms: 0, .. }
        ));
        assert!(matches!(
            run(&mut stored, 10_000),
            Turn::Go { wait_ms: 100, .. }
        ));
    }

    #[test]
    fn a_turn_is_given_back_only_while_it_is_the_last_taken() {
        let mut stored = None;
        run(&mut stored, 0);
        let Turn::Go { next: mine, .. } = run(&mut stored, 0) else {
            panic!("queued");
        };
        assert_eq!(
            give_back(Some(&mine), mine, TEN_PER_SECOND),
            Some(100_000u64.to_le_bytes())
        );
        run(&mut stored, 0);
        assert_eq!(
            give_back(stored.as_ref().map(|b| &b[..]), mine, TEN_PER_SECOND),
            None
        );
    }
}
