//! Counting rate-limit windows for the whole Envoy: each (rule, amount, window key) is one record
//! in shared data ([`Window`]), taken by CAS. A worker takes a small grant at a time
//! ([`grant_size`]: one token for amounts under 200, so small limits are exact) and spends it
//! locally, so a busy worker touches shared data once per grant, not per request. With
//! [`Limiter::clockless`] (hosts whose clock reads are costly: wasm) a token the worker holds
//! is spent without reading the clock: the worker's timer is kept to fire by the window's end
//! ([`Limiter::next_end`]), where [`Limiter::expire`] drops the grant, so only a request in the
//! timer's lateness counts in the window that just ended (at most the grant's tokens per
//! worker).
//!
//! Unirate rules take turns from one shared schedule per (rule, window key)
//! ([`crate::limit::unirate`]); CONCURRENCY rules count in-flight requests in one shared record
//! ([`crate::limit::concurrency`]), the slot given back when the stream ends.

use rustc_hash::FxHashMap;

use super::global_take::{self, At};
use super::host::{Metrics, Store};
use super::rule_stats::{Outcome, RuleStats};
use super::store::{self, CasError, Update};
use crate::lb::murmur3::murmur3_64;
use crate::limit::unirate::{self, Turn};
use crate::limit::{
    concurrency, grant_size, window_start, Amount, Behavior, CallerFacts, Global, LimitRule,
};
use crate::limit::{Limits, Pace, Window};
use crate::matching::RequestFacts;
use crate::model::ServiceKey;

/// Grants a worker keeps at most; beyond, they are dropped (their tokens are lost for the rest of
/// their windows, so the Envoy admits a little less, never more).
const MAX_GRANTS: usize = 10_000;

/// What a request may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Allowed once `wait_ms` have passed: its turn under a unirate rule (the longest wait of
    /// those that apply).
    Queued {
        rule: String,
        wait_ms: u64,
    },
    /// The rule whose window is used up, the seconds until a request could pass, and the
    /// rule's own 429 body if it has one.
    Limited {
        rule: String,
        retry_after_s: u64,
        body: Option<String>,
    },
}

#[derive(Clone, Copy, Debug)]
struct Grant {
    start: u64,
    left: u32,
    /// The window's end on this worker's clock, for a local window (a GLOBAL one follows the
    /// limiter's clock and is never spent without reading ours).
    end: Option<u64>,
}

/// One counter: a (service, rule, amount, window key).
struct Counter<'a> {
    service: &'a ServiceKey,
    service_hash: u64,
    rule: &'a str,
    rule_hash: u64,
    window_ms: u64,
    label_hash: u64,
}

impl Counter<'_> {
    /// This worker's name for the counter (from hashes computed with the rules).
    fn id(&self) -> u64 {
        let parts = [
            self.service_hash,
            self.rule_hash,
            self.window_ms,
            self.label_hash,
        ];
        let mut bytes = [0u8; 32];
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

/// Tokens taken by one request (or rules it counted): inline for the first few.
#[derive(Default)]
struct Taken<T = (u64, u64)> {
    inline: [T; 4],
    len: usize,
    more: Vec<T>,
}

impl<T: Copy> Taken<T> {
    fn push(&mut self, token: T) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = token;
                self.len += 1;
            }
            None => self.more.push(token),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.inline.iter().take(self.len).chain(self.more.iter())
    }
}

/// One worker's grants, by counter id.
#[derive(Debug, Default)]
pub struct Limiter {
    grants: FxHashMap<u64, Grant>,
    /// GLOBAL rules go through polaris-limiter (`rate_limit.limiter` is configured).
    pub global_on: bool,
    /// Server clock minus ours (ms), for global windows; refreshed on ticks.
    pub offset_ms: i64,
    /// Counters whose CAS retries ran out since the last [`Limiter::take_contended`].
    contended: u64,
    /// Requests a dry-run rule would have limited, since the last [`Limiter::take_dry_run_hits`].
    dry_run_hits: u64,
    /// Allowed / limited / dry-run-limited per rule.
    stats: RuleStats,
    /// CONCURRENCY slots whose release lost every CAS try: retried on the tick.
    unreleased: Vec<String>,
    /// Spend held tokens of local windows without reading the clock: the worker keeps its timer
    /// firing by [`Limiter::next_end`] and calls [`Limiter::expire`] on every tick.
    pub clockless: bool,
    /// The earliest end of a local window this worker holds a grant of (early, never late:
    /// grants spent or dropped since may have ended later).
    next_end: Option<u64>,
    /// The clock reading of the last request that took a new local grant, until the worker
    /// has pointed its timer at [`Limiter::next_end`] ([`Limiter::take_new_grant`]).
    granted_at: Option<u64>,
}

/// A unirate turn this request took: its key, the record it stored, the rule's pace.
struct TakenTurn {
    key: String,
    stored: [u8; 8],
    pace: Pace,
}

impl Limiter {
    /// Applies every rule of `limits` that counts this request, in order. When one limits, what
    /// the others took is given back (QPS tokens, unirate turns, CONCURRENCY slots) and the
    /// request is limited. `now` is read only when some rule counts the request. CAS retries
    /// that run out admit the request (it is not worth failing traffic over a contended
    /// counter); they are counted. CONCURRENCY slots taken are added to `held`: give them back
    /// with [`Limiter::release`] when the stream ends.
    #[allow(clippy::too_many_arguments)]
    pub fn check<S: Store + Metrics + ?Sized>(
        &mut self,
        store: &S,
        service: &ServiceKey,
        limits: &Limits,
        facts: &mut dyn RequestFacts,
        caller: &CallerFacts<'_>,
        now: impl FnOnce() -> u64,
        held: &mut Vec<String>,
    ) -> Admission {
        let mut read = Some(now);
        let mut at = None;
        // The clock, read at most once and only when a rule needs it.
        let mut now_ms = || *at.get_or_insert_with(|| read.take().map_or(0, |r| r()));
        // Tokens taken so far, to give back if a later rule limits; most requests take a few.
        let mut taken = Taken::default();
        let mut turns: Vec<TakenTurn> = Vec::new();
        let held_before = held.len();
        // Rules that counted the request: (id hash, index), for the allowed metrics.
        let mut counted: Taken<(u64, usize)> = Taken::default();
        let mut queued: Option<(usize, u64)> = None;
        for (index, rule) in limits.rules.iter().enumerate() {
            let Some(label) = rule.key(facts, caller) else {
                continue;
            };
            let label_hash = murmur3_64(label.as_bytes(), 0);
            let rule_hash = rule.id_hash;
            let limited = match rule.behavior {
                Behavior::Reject => self.take_windows(
                    store,
                    (service, limits.service_hash),
                    rule,
                    (&label, label_hash),
                    &mut now_ms,
                    &mut taken,
                ),
                Behavior::Unirate(pace) => {
                    let key = shared_key("ur", service, rule, label_hash);
                    match take_turn(store, key, now_ms(), pace, &mut turns) {
                        Ok(Turn::Go { wait_ms, .. }) => {
                            if wait_ms > 0 && !rule.dry_run && queued.is_none_or(|q| q.1 < wait_ms)
                            {
                                queued = Some((index, wait_ms));
                            }
                            None
                        }
                        Ok(Turn::Over { wait_ms }) => Some(
                            wait_ms
                                .saturating_sub(pace.max_delay_ms)
                                .div_ceil(1000)
                                .max(1),
                        ),
                        Err(_) => {
                            self.contended += 1;
                            None
                        }
                    }
                }
                Behavior::Concurrency { max } => {
                    let key = shared_key("cc", service, rule, label_hash);
                    let got =
                        store::cas_update(store, &key, |b| match concurrency::acquire(b, max) {
                            Some(next) => Update::Write(next.to_vec(), true),
                            None => Update::Keep(false),
                        });
                    match got {
                        Ok(true) => {
                            held.push(key);
                            None
                        }
                        Ok(false) => Some(1),
                        Err(_) => {
                            self.contended += 1;
                            None
                        }
                    }
                }
            };
            match limited {
                None => counted.push((rule_hash, index)),
                Some(_) if rule.dry_run => {
                    self.dry_run_hits += 1;
                    let outcome = Outcome::DryRunLimited;
                    self.stats
                        .note(store, service, rule_hash, &rule.name, outcome);
                }
                Some(retry_after_s) => {
                    self.give_back(taken.iter());
                    for t in turns {
                        give_back_turn(store, &t);
                    }
                    let mine = held.split_off(held_before.min(held.len()));
                    self.release(store, mine);
                    let outcome = Outcome::Limited;
                    self.stats
                        .note(store, service, rule_hash, &rule.name, outcome);
                    return Admission::Limited {
                        rule: rule.name.clone(),
                        retry_after_s,
                        body: rule.body.clone(),
                    };
                }
            }
        }
        for &(rule_hash, index) in counted.iter() {
            if let Some(rule) = limits.rules.get(index) {
                let outcome = Outcome::Allowed;
                self.stats
                    .note(store, service, rule_hash, &rule.name, outcome);
            }
        }
        match queued.and_then(|(i, wait_ms)| Some((limits.rules.get(i)?, wait_ms))) {
            Some((rule, wait_ms)) => Admission::Queued {
                rule: rule.name.clone(),
                wait_ms,
            },
            None => Admission::Allowed,
        }
    }

    /// Takes a token from every QPS window of a `reject` rule; the seconds until the window
    /// that is used up ends, when one is.
    fn take_windows<S: Store + ?Sized>(
        &mut self,
        store: &S,
        (service, service_hash): (&ServiceKey, u64),
        rule: &LimitRule,
        (label, label_hash): (&str, u64),
        now: &mut dyn FnMut() -> u64,
        taken: &mut Taken,
    ) -> Option<u64> {
        let global = rule.global.as_ref().filter(|_| self.global_on);
        for amount in &rule.amounts {
            let counter = Counter {
                service,
                service_hash,
                rule: &rule.id,
                rule_hash: rule.id_hash,
                window_ms: amount.window_ms,
                label_hash,
            };
            let id = counter.id();
            if global.is_none() {
                if let Some(start) = self.spend_held(id) {
                    taken.push((id, start));
                    continue;
                }
            }
            // Global windows follow the limiter's clock.
            let now_ms = match global {
                Some(_) => now().saturating_add_signed(self.offset_ms),
                None => now(),
            };
            let start = window_start(now_ms, amount.window_ms);
            let got = match global {
                Some(g) => {
                    let local_now = now_ms.saturating_add_signed(-self.offset_ms);
                    let at = At { start, local_now };
                    self.acquire_global(store, &counter, id, *amount, at, g, label)
                }
                None => self.acquire(store, &counter, id, *amount, (start, now_ms)),
            };
            match got {
                Ok(true) => taken.push((id, start)),
                Ok(false) => {
                    let end = start.saturating_add(amount.window_ms);
                    return Some(end.saturating_sub(now_ms).div_ceil(1000).max(1));
                }
                Err(_) => self.contended += 1,
            }
        }
        None
    }

    /// Gives CONCURRENCY slots back (a stream ended, or its request was limited). A release
    /// whose CAS tries all lose is kept and retried by [`Limiter::retry_releases`].
    pub fn release<S: Store + ?Sized>(&mut self, store: &S, held: Vec<String>) {
        for key in held {
            let done = store::cas_update(store, &key, |b| {
                Update::Write(concurrency::release(b).to_vec(), ())
            });
            if done.is_err() {
                self.unreleased.push(key);
            }
        }
    }

    /// Retries the releases that were contended, and hands the per-rule counts to the host.
    pub fn on_tick<S: Store + Metrics + ?Sized>(&mut self, host: &S) {
        if !self.unreleased.is_empty() {
            let pending = std::mem::take(&mut self.unreleased);
            self.release(host, pending);
        }
        self.stats.flush(host);
    }

    /// Spends a token of a local window this worker holds, without the clock (when
    /// [`Limiter::clockless`]); the window's start.
    fn spend_held(&mut self, id: u64) -> Option<u64> {
        if !self.clockless {
            return None;
        }
        let g = self.grants.get_mut(&id)?;
        if g.end.is_none() || g.left == 0 {
            return None;
        }
        g.left -= 1;
        Some(g.start)
    }

    /// Drops the grants of local windows that ended by `now_ms` (their tokens are lost).
    pub fn expire(&mut self, now_ms: u64) {
        if self.next_end.is_none_or(|end| end > now_ms) {
            return;
        }
        self.grants
            .retain(|_, g| g.end.is_none_or(|end| end > now_ms));
        self.next_end = self.grants.values().filter_map(|g| g.end).min();
    }

    /// The earliest end of a local window this worker holds tokens of, while spending them
    /// without the clock: the worker's timer must fire by then.
    pub fn next_end(&self) -> Option<u64> {
        self.next_end.filter(|_| self.clockless)
    }

    /// The clock reading of a request that took a new local grant since the last call: the
    /// worker then points its timer at [`Limiter::next_end`].
    pub fn take_new_grant(&mut self) -> Option<u64> {
        self.granted_at.take()
    }

    /// Takes one token of `counter` in the window starting at `start` (read at `now_ms`): from
    /// this worker's grant, else a new grant from shared data. `Ok(false)`: the window is used
    /// up.
    fn acquire<S: Store + ?Sized>(
        &mut self,
        store: &S,
        counter: &Counter<'_>,
        id: u64,
        amount: Amount,
        (start, now_ms): (u64, u64),
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
        let end = start.saturating_add(counter.window_ms);
        self.grants.insert(
            id,
            Grant {
                start,
                left: granted - 1,
                end: Some(end),
            },
        );
        self.next_end = Some(self.next_end.map_or(end, |e| e.min(end)));
        if self.clockless {
            self.granted_at = Some(now_ms);
        }
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
                        end: None,
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
            let g = self.grants.entry(id).or_insert(Grant {
                start,
                left: 0,
                end: None,
            });
            if g.start == start {
                g.left = g.left.saturating_add(1);
            }
        }
    }
}

/// The shared-data key of a unirate schedule (`ur`) or CONCURRENCY count (`cc`).
fn shared_key(kind: &str, service: &ServiceKey, rule: &LimitRule, label_hash: u64) -> String {
    format!(
        "polaris-wasm/{kind}/{}/{}/{}/{label_hash:016x}",
        service.namespace, service.name, rule.id
    )
}

/// Takes a unirate turn by CAS; a turn taken is remembered in `turns` for giving back.
fn take_turn<S: Store + ?Sized>(
    store: &S,
    key: String,
    now_ms: u64,
    pace: Pace,
    turns: &mut Vec<TakenTurn>,
) -> Result<Turn, CasError> {
    let turn = store::cas_update(store, &key, |b| match unirate::take(b, now_ms, pace) {
        go @ Turn::Go { next, .. } => Update::Write(next.to_vec(), go),
        over => Update::Keep(over),
    })?;
    if let Turn::Go { next, .. } = turn {
        turns.push(TakenTurn {
            key,
            stored: next,
            pace,
        });
    }
    Ok(turn)
}

/// Gives a unirate turn back when no later turn was taken since (best effort).
fn give_back_turn<S: Store + ?Sized>(store: &S, t: &TakenTurn) {
    let _ = store::cas_update(store, &t.key, |b| {
        match unirate::give_back(b, t.stored, t.pace) {
            Some(back) => Update::Write(back.to_vec(), ()),
            None => Update::Keep(()),
        }
    });
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
                let mut held = Vec::new();
                w.check(
                    host,
                    &svc,
                    l,
                    &mut StaticFacts::default(),
                    &CALLER,
                    || now,
                    &mut held,
                ) == Admission::Allowed
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
        let mut held = Vec::new();
        assert_eq!(
            w.check(&host, &svc, &l, &mut f, &CALLER, || 1_200, &mut held),
            Admission::Allowed
        );
        assert_eq!(
            w.check(&host, &svc, &l, &mut f, &CALLER, || 1_300, &mut held),
            Admission::Limited {
                rule: "per-second".into(),
                retry_after_s: 1,
                body: None,
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
