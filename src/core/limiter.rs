//! Counting rate-limit windows for the whole Envoy: each (rule, amount, window key) is one record
//! in shared data ([`Window`]), taken by CAS. A worker takes a small grant at a time
//! ([`grant_size`]: one token for amounts under 200, so small limits are exact) and spends it
//! locally, so a busy worker touches shared data once per grant, not per request.

use std::collections::HashMap;

use super::global_take::{self, At};
use super::host::Store;
use super::store::{self, CasError, Update};
use crate::lb::murmur3::murmur3_64;
use crate::limit::{grant_size, window_start, Amount, CallerFacts, Global, Limits, Window};
use crate::matching::RequestFacts;
use crate::model::ServiceKey;

/// Grants a worker keeps at most; beyond, they are dropped (their tokens are lost for the rest of
/// their windows, so the Envoy admits a little less, never more).
const MAX_GRANTS: usize = 10_000;

/// What a request may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// The rule whose window is used up, and the seconds until that window ends.
    Limited {
        rule: String,
        retry_after_s: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Grant {
    start: u64,
    left: u32,
}

/// One counter: a (service, rule, amount, window key).
struct Counter<'a> {
    service: &'a ServiceKey,
    rule: &'a str,
    window_ms: u64,
    label_hash: u64,
}

impl Counter<'_> {
    /// This worker's name for the counter (built without allocating).
    fn id(&self) -> u64 {
        let parts = [
            murmur3_64(self.service.namespace.as_bytes(), 0),
            murmur3_64(self.service.name.as_bytes(), 0),
            murmur3_64(self.rule.as_bytes(), 0),
            self.window_ms,
            self.label_hash,
        ];
        let mut bytes = [0u8; 40];
        for (chunk, part) in bytes.chunks_exact_mut(8).zip(parts) {
            chunk.copy_from_slice(&part.to_le_bytes());
        }
        murmur3_64(&bytes, 0)
    }

    /// The shared-data key, built only when the worker needs a new grant.
    fn shared_key(&self) -> String {
        format!(
            "polaris-wasm/rl/{}/{}/{}/{}/{:016x}",
            self.service.namespace, self.service.name, self.rule, self.window_ms, self.label_hash
        )
    }
}

/// Tokens taken by one request: inline for the first few.
#[derive(Default)]
struct Taken {
    inline: [(u64, u64); 4],
    len: usize,
    more: Vec<(u64, u64)>,
}

impl Taken {
    fn push(&mut self, token: (u64, u64)) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = token;
                self.len += 1;
            }
            None => self.more.push(token),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(u64, u64)> {
        self.inline.iter().take(self.len).chain(self.more.iter())
    }
}

/// One worker's grants, by counter id.
#[derive(Debug, Default)]
pub struct Limiter {
    grants: HashMap<u64, Grant>,
    /// GLOBAL rules go through polaris-limiter (`rate_limit.limiter` is configured).
    pub global_on: bool,
    /// Server clock minus ours (ms), for global windows; refreshed on ticks.
    pub offset_ms: i64,
    /// Counters whose CAS retries ran out since the last [`Limiter::take_contended`].
    contended: u64,
    /// Requests a dry-run rule would have limited, since the last [`Limiter::take_dry_run_hits`].
    dry_run_hits: u64,
}

impl Limiter {
    /// Applies every rule of `limits` that counts this request, in order. When one is used up,
    /// the tokens already taken from the others are given back and the request is limited.
    /// `now` is read only when some rule counts the request. CAS retries that run out admit the
    /// request (it is not worth failing traffic over a contended counter); they are counted.
    pub fn check<S: Store + ?Sized>(
        &mut self,
        store: &S,
        service: &ServiceKey,
        limits: &Limits,
        facts: &mut dyn RequestFacts,
        caller: &CallerFacts<'_>,
        now: impl FnOnce() -> u64,
    ) -> Admission {
        let mut now = Some(now);
        let mut now_ms = 0;
        // Tokens taken so far, to give back if a later rule limits; most requests take a few.
        let mut taken = Taken::default();
        for rule in &limits.rules {
            let Some(label) = rule.key(facts, caller) else {
                continue;
            };
            if let Some(read) = now.take() {
                now_ms = read();
            }
            let label_hash = murmur3_64(label.as_bytes(), 0);
            let global = rule.global.as_ref().filter(|_| self.global_on);
            // Global windows follow the limiter's clock.
            let now_ms = match global {
                Some(_) => now_ms.saturating_add_signed(self.offset_ms),
                None => now_ms,
            };
            for amount in &rule.amounts {
                let counter = Counter {
                    service,
                    rule: &rule.id,
                    window_ms: amount.window_ms,
                    label_hash,
                };
                let id = counter.id();
                let start = window_start(now_ms, amount.window_ms);
                let got = match global {
                    Some(g) => {
                        let local_now = now_ms.saturating_add_signed(-self.offset_ms);
                        let at = At { start, local_now };
                        self.acquire_global(store, &counter, id, *amount, at, g, &label)
                    }
                    None => self.acquire(store, &counter, id, *amount, start),
                };
                match got {
                    Ok(true) => taken.push((id, start)),
                    Ok(false) if rule.dry_run => {
                        self.dry_run_hits += 1;
                        break;
                    }
                    Ok(false) => {
                        self.give_back(taken.iter());
                        let end = start.saturating_add(amount.window_ms);
                        return Admission::Limited {
                            rule: rule.name.clone(),
                            retry_after_s: end.saturating_sub(now_ms).div_ceil(1000).max(1),
                        };
                    }
                    Err(_) => self.contended += 1,
                }
            }
        }
        Admission::Allowed
    }

    /// Takes one token of `counter` in the window starting at `start`: from this worker's grant,
    /// else a new grant from shared data. `Ok(false)`: the window is used up.
    fn acquire<S: Store + ?Sized>(
        &mut self,
        store: &S,
        counter: &Counter<'_>,
        id: u64,
        amount: Amount,
        start: u64,
    ) -> Result<bool, CasError> {
        if let Some(g) = self.grants.get_mut(&id) {
            if g.start == start && g.left > 0 {
                g.left -= 1;
                return Ok(true);
            }
        }
        let want = grant_size(amount.max);
        let granted = store::cas_update(store, &counter.shared_key(), |bytes| {
            let (window, granted) = Window::decode(bytes).take(start, amount.max, want);
            if granted == 0 {
                Update::Keep(0)
            } else {
                Update::Write(window.encode(), granted)
            }
        })?;
        if granted == 0 {
            return Ok(false);
        }
        if self.grants.len() >= MAX_GRANTS && !self.grants.contains_key(&id) {
            self.grants.clear();
        }
        self.grants.insert(
            id,
            Grant {
                start,
                left: granted - 1,
            },
        );
        Ok(true)
    }

    /// [`Limiter::acquire`] for a GLOBAL rule: the shared part is this Envoy's record of the
    /// window, synced with polaris-limiter by the leader (`core::global_take`).
    #[allow(clippy::too_many_arguments)]
    fn acquire_global<S: Store + ?Sized>(
        &mut self,
        store: &S,
        counter: &Counter<'_>,
        id: u64,
        amount: Amount,
        at: At,
        g: &Global,
        label: &str,
    ) -> Result<bool, CasError> {
        if let Some(grant) = self.grants.get_mut(&id) {
            if grant.start == at.start && grant.left > 0 {
                grant.left -= 1;
                return Ok(true);
            }
        }
        let (service, rule) = (counter.service, counter.rule);
        let key = global_take::record_key(service, rule, counter.window_ms, counter.label_hash);
        let want = grant_size(amount.max);
        let entry = || global_take::Entry {
            namespace: service.namespace.clone(),
            service: service.name.clone(),
            rule: rule.to_string(),
            label: label.to_string(),
        };
        match global_take::take(store, &key, at, want, amount.max, g, entry)? {
            None => Ok(true),
            Some(0) => Ok(false),
            Some(granted) => {
                self.grants.insert(
                    id,
                    Grant {
                        start: at.start,
                        left: granted - 1,
                    },
                );
                Ok(true)
            }
        }
    }

    /// Requests a dry-run rule would have limited since the last call.
    pub fn take_dry_run_hits(&mut self) -> u64 {
        std::mem::take(&mut self.dry_run_hits)
    }

    /// Counters whose CAS retries ran out since the last call.
    pub fn take_contended(&mut self) -> u64 {
        std::mem::take(&mut self.contended)
    }

    /// Returns tokens taken for a request that another rule limited, to this worker's grants.
    fn give_back<'t>(&mut self, taken: impl Iterator<Item = &'t (u64, u64)>) {
        for &(id, start) in taken {
            let g = self.grants.entry(id).or_insert(Grant { start, left: 0 });
            if g.start == start {
                g.left = g.left.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fake::FakeHost;
    use crate::matching::StaticFacts;
    use crate::polaris::proto;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const CALLER: CallerFacts<'static> = CallerFacts {
        namespace: "default",
        service: "web",
    };

    fn limits(amounts: &[(u32, i64)]) -> Limits {
        let rule = proto::Rule {
            id: Some("r1".into()),
            name: Some("per-second".into()),
            r#type: proto::rule::Type::Local as i32,
            amounts: amounts
                .iter()
                .map(|&(max, secs)| proto::Amount {
                    max_amount: Some(max),
                    valid_duration: Some(prost_types::Duration {
                        seconds: secs,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Limits::compile(&[rule]).0
    }

    fn admitted(workers: &mut [Limiter], host: &FakeHost, l: &Limits, n: usize, now: u64) -> usize {
        let svc = ServiceKey::new("default", "echo");
        (0..n)
            .filter(|i| {
                let w = &mut workers[i % workers.len()];
                w.check(host, &svc, l, &mut StaticFacts::default(), &CALLER, || now)
                    == Admission::Allowed
            })
            .count()
    }

    #[test]
    fn ten_per_second_across_two_workers_admits_ten_per_window() {
        let host = FakeHost::new(0);
        let l = limits(&[(10, 1)]);
        let mut workers = [Limiter::default(), Limiter::default()];
        assert_eq!(admitted(&mut workers, &host, &l, 50, 5_100), 10);
        assert_eq!(admitted(&mut workers, &host, &l, 50, 5_900), 0);
        assert_eq!(
            admitted(&mut workers, &host, &l, 50, 6_000),
            10,
            "a new window"
        );
    }

    #[test]
    fn the_tighter_of_two_amounts_wins() {
        let host = FakeHost::new(0);
        let l = limits(&[(10, 1), (15, 60)]);
        let mut workers = [Limiter::default()];
        let first = admitted(&mut workers, &host, &l, 30, 60_000);
        let second = admitted(&mut workers, &host, &l, 30, 61_000);
        assert_eq!(
            (first, second),
            (10, 5),
            "the minute's 15 run out in its second second"
        );
    }

    #[test]
    fn a_limited_request_names_the_rule_and_when_to_retry() {
        let host = FakeHost::new(0);
        let l = limits(&[(1, 1)]);
        let mut w = Limiter::default();
        let svc = ServiceKey::new("default", "echo");
        let mut f = StaticFacts::default();
        assert_eq!(
            w.check(&host, &svc, &l, &mut f, &CALLER, || 1_200),
            Admission::Allowed
        );
        assert_eq!(
            w.check(&host, &svc, &l, &mut f, &CALLER, || 1_300),
            Admission::Limited {
                rule: "per-second".into(),
                retry_after_s: 1
            }
        );
    }

    #[test]
    fn tokens_taken_by_one_amount_are_given_back_when_another_limits() {
        let host = FakeHost::new(0);
        // 100 per minute with 1-token grants; 2 per second limits first.
        let l = limits(&[(2, 1), (100, 60)]);
        let mut workers = [Limiter::default()];
        assert_eq!(admitted(&mut workers, &host, &l, 10, 60_000), 2);
        assert_eq!(admitted(&mut workers, &host, &l, 10, 61_000), 2);
        let minute_key = format!(
            "polaris-wasm/rl/default/echo/r1/60000/{:016x}",
            murmur3_64(b"", 0)
        );
        let minute = Window::decode(host.stored(&minute_key).as_deref());
        // 4 admitted, plus the one given-back token this worker holds for its next request:
        // limited requests did not eat the minute.
        assert_eq!(minute.used, 5);
    }

    #[test]
    fn a_dry_run_rule_never_limits_but_counts_what_it_would_have_limited() {
        let host = FakeHost::new(0);
        let mut l = limits(&[(2, 1)]);
        l.rules[0].dry_run = true;
        let mut workers = [Limiter::default()];
        assert_eq!(admitted(&mut workers, &host, &l, 5, 1_000), 5);
        assert_eq!(workers[0].take_dry_run_hits(), 3);
    }
}
