//! Leader lease: one root context (of the N+1 Envoy runs, one per worker plus the main thread)
//! talks to Polaris; the others read what it stores.
//!
//! The lease is `owner:expires_ms` in shared data, renewed by its owner on every tick and taken
//! over by CAS once it has expired, so a stalled or reloaded VM loses it within one TTL.

/// A lease value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub owner: u64,
    pub expires_ms: u64,
}

/// What a root context should do about the lease on this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// Write (by CAS) a lease for us: we hold it and renew, or it is free or expired.
    Claim,
    /// Someone else holds a live lease.
    Follow,
}

impl Lease {
    pub fn encode(&self) -> String {
        format!("{}:{}", self.owner, self.expires_ms)
    }

    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (owner, expires) = text.split_once(':')?;
        Some(Lease {
            owner: owner.parse().ok()?,
            expires_ms: expires.parse().ok()?,
        })
    }
}

/// Decides from the current lease (unreadable counts as free).
pub fn step(current: Option<&[u8]>, me: u64, now_ms: u64) -> LeaseStep {
    match current.and_then(Lease::decode) {
        Some(lease) if lease.owner != me && lease.expires_ms > now_ms => LeaseStep::Follow,
        _ => LeaseStep::Claim,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn free_lease_is_claimed() {
        assert_eq!(step(None, 1, 100), LeaseStep::Claim);
    }

    #[test]
    fn live_lease_of_another_is_followed() {
        let l = Lease {
            owner: 2,
            expires_ms: 200,
        }
        .encode();
        assert_eq!(step(Some(l.as_bytes()), 1, 100), LeaseStep::Follow);
    }

    #[test]
    fn own_lease_is_renewed() {
        let l = Lease {
            owner: 1,
            expires_ms: 200,
        }
        .encode();
        assert_eq!(step(Some(l.as_bytes()), 1, 100), LeaseStep::Claim);
    }

    #[test]
    fn expired_lease_is_taken_over() {
        let l = Lease {
            owner: 2,
            expires_ms: 99,
        }
        .encode();
        assert_eq!(step(Some(l.as_bytes()), 1, 100), LeaseStep::Claim);
    }

    #[test]
    fn junk_lease_is_free() {
        assert_eq!(step(Some(b"\xff:zz"), 1, 100), LeaseStep::Claim);
        assert_eq!(Lease::decode(b"12"), None);
    }
}
