//! The breaker state of one service's resources, as it lives in shared data (one entry per
//! service, read on every request that a breaker applies to, written by CAS on transitions), and
//! polaris-go's state machine over it (`composite/counter.go`, `trigger/consecutive.go`,
//! `pkg/model/circuitbreaker.go: HalfOpenStatus`):
//!
//! - Closed: CONSECUTIVE_ERROR counts failures in a row; any success resets the count; reaching
//!   the count opens. (ERROR_RATE opens through [`Table::trip`], from the leader.)
//! - Open: nothing passes; outcomes are ignored. `sleep_window` after opening it is half-open.
//! - HalfOpen: `consecutiveSuccess` requests may pass (probes); any failure reopens, that many
//!   successes close. Probes that never report (the client went away) are given up after one
//!   more sleep window, and new ones are admitted.
//!
//! Only resources away from the initial state (closed, no failure counted) have an entry, so the
//! value a healthy service's requests read is empty. Each entry names the rule version it was
//! written under (its tag): when the rule changes or goes, the entry is stale and counts as closed.

use std::fmt;

use super::rule::Rule;

/// Most resources of one service with an entry at once (method paths are client-chosen).
pub const MAX_ENTRIES: usize = 256;

/// A resource a breaker guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    /// An instance, by `ip:port`.
    Instance(&'a str),
    Service,
    /// A method, by request path.
    Method(&'a str),
}

impl Resource<'_> {
    /// The entry key: `i <ip:port>`, `s`, `m <path>`; `None` for a key that cannot be stored.
    pub fn key(&self) -> Option<String> {
        let key = match self {
            Resource::Instance(a) => format!("i {a}"),
            Resource::Service => "s".to_string(),
            Resource::Method(p) => format!("m {p}"),
        };
        (!key.contains(['\t', '\n', '\r'])).then_some(key)
    }

    /// Whether `key` is this resource's entry key (without building it).
    pub fn is(&self, key: &str) -> bool {
        match self {
            Resource::Instance(a) => key.strip_prefix("i ") == Some(a),
            Resource::Service => key == "s",
            Resource::Method(p) => key.strip_prefix("m ") == Some(p),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    key: String,
    tag: String,
    status: Status,
    /// Open: when it opened; HalfOpen: when it became half-open.
    since_ms: u64,
    /// Closed: consecutive failures.
    streak: u32,
    /// HalfOpen: probes admitted, and probes that succeeded.
    given: u32,
    passed: u32,
}

/// What a request or an outcome sees of one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effective {
    Closed {
        streak: u32,
    },
    Open {
        until_ms: u64,
    },
    /// `free`: probes that may still be admitted.
    HalfOpen {
        free: u32,
    },
}

impl Effective {
    pub fn name(&self) -> &'static str {
        match self {
            Effective::Closed { .. } => "closed",
            Effective::Open { .. } => "open",
            Effective::HalfOpen { .. } => "half-open",
        }
    }

    /// Whether an outcome of a request admitted in this state changes the shared state even when
    /// it is a success (a success in the initial state changes nothing).
    pub fn success_matters(&self) -> bool {
        !matches!(self, Effective::Closed { streak: 0 })
    }
}

/// A state change, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Closed -> Open (a trigger fired).
    Opened,
    /// HalfOpen -> Open (a probe failed).
    Reopened,
    /// Open -> HalfOpen (the sleep window is over and a probe was admitted or reported).
    HalfOpened,
    /// HalfOpen -> Closed.
    Closed,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transition::Opened => "closed -> open",
            Transition::Reopened => "half-open -> open",
            Transition::HalfOpened => "open -> half-open",
            Transition::Closed => "half-open -> closed",
        })
    }
}

/// The state of every resource of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    entries: Vec<Entry>,
}

impl Table {
    /// Decodes a stored value; malformed lines are dropped (they count as closed).
    pub fn decode(bytes: Option<&[u8]>) -> Table {
        let text = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default();
        let entries = text.lines().filter_map(parse_line).collect();
        Table { entries }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        for e in &self.entries {
            let status = match e.status {
                Status::Closed => 'c',
                Status::Open => 'o',
                Status::HalfOpen => 'h',
            };
            out.push_str(&format!(
                "{}\t{}\t{status}\t{}\t{}\t{}\t{}\n",
                e.key, e.tag, e.since_ms, e.streak, e.given, e.passed
            ));
        }
        out.into_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, key: &str, tag: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key && e.tag == tag)
    }

    /// What `resource` is under `rule` at `now`.
    pub fn effective(&self, resource: Resource<'_>, rule: &Rule, now_ms: u64) -> Effective {
        let found = self
            .entries
            .iter()
            .find(|e| resource.is(&e.key) && e.tag == rule.tag);
        match found {
            Some(e) => effective(e, rule, now_ms),
            None => Effective::Closed { streak: 0 },
        }
    }

    /// Keys of resources that are open or half-open under the rule whose tag each entry names
    /// (for the open-breakers gauge): `is_current(key, tag)` says whether that rule still applies.
    pub fn not_closed(&self, mut is_current: impl FnMut(&str, &str) -> bool) -> usize {
        self.entries
            .iter()
            .filter(|e| e.status != Status::Closed && is_current(&e.key, &e.tag))
            .count()
    }

    /// A request wants to pass `resource`: admitted unless open, or half-open with every probe
    /// given out. Taking a probe is a change (write the table).
    pub fn admit(
        &mut self,
        resource: Resource<'_>,
        rule: &Rule,
        now_ms: u64,
    ) -> (bool, Option<Transition>, bool) {
        let Some(key) = resource.key() else {
            return (true, None, false);
        };
        let current = self.find(&key, &rule.tag).cloned();
        let Some(e) = current else {
            return (true, None, false);
        };
        match effective(&e, rule, now_ms) {
            Effective::Closed { .. } => (true, None, false),
            Effective::Open { .. } | Effective::HalfOpen { free: 0 } => (false, None, false),
            Effective::HalfOpen { .. } => {
                let (mut next, transition) = half_open_base(&e, rule, now_ms);
                next.given = next.given.saturating_add(1);
                self.put(next);
                (true, transition, true)
            }
        }
    }

    /// Records an outcome of `resource`; `Some` when the state changed. The bool says whether the
    /// table changed (write it).
    pub fn record(
        &mut self,
        resource: Resource<'_>,
        rule: &Rule,
        failed: bool,
        now_ms: u64,
    ) -> (Option<Transition>, bool) {
        let Some(key) = resource.key() else {
            return (None, false);
        };
        let current = self.find(&key, &rule.tag).cloned();
        let state = current
            .as_ref()
            .map_or(Effective::Closed { streak: 0 }, |e| {
                effective(e, rule, now_ms)
            });
        match state {
            Effective::Open { .. } => (None, false),
            Effective::Closed { streak } => {
                if !failed {
                    if current.is_some() {
                        self.remove(&key);
                        return (None, true);
                    }
                    return (None, false);
                }
                let streak = streak.saturating_add(1);
                if rule.consecutive().is_some_and(|n| streak >= n) {
                    self.put(open(key, rule, now_ms));
                    return (Some(Transition::Opened), true);
                }
                let wrote = self.put(Entry {
                    key,
                    tag: rule.tag.clone(),
                    status: Status::Closed,
                    since_ms: 0,
                    streak,
                    given: 0,
                    passed: 0,
                });
                (None, wrote)
            }
            Effective::HalfOpen { .. } => {
                let Some(e) = current else {
                    return (None, false);
                };
                let (mut next, entered) = half_open_base(&e, rule, now_ms);
                if failed {
                    self.put(open(key, rule, now_ms));
                    return (Some(Transition::Reopened), true);
                }
                next.passed = next.passed.saturating_add(1);
                if next.passed >= rule.probes {
                    self.remove(&key);
                    return (Some(Transition::Closed), true);
                }
                self.put(next);
                (entered, true)
            }
        }
    }

    /// ERROR_RATE fired for `resource`: opens it if it is closed.
    pub fn trip(&mut self, resource: Resource<'_>, rule: &Rule, now_ms: u64) -> Option<Transition> {
        let key = resource.key()?;
        if !matches!(
            self.effective(resource, rule, now_ms),
            Effective::Closed { .. }
        ) {
            return None;
        }
        self.put(open(key, rule, now_ms));
        Some(Transition::Opened)
    }

    /// Whether some entry was written under a rule that no longer applies.
    pub fn entries_stale(&self, mut current: impl FnMut(&str, &str) -> bool) -> bool {
        self.entries.iter().any(|e| !current(&e.key, &e.tag))
    }

    /// Drops entries written under rules that no longer apply (`keep(key, tag)` false).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| keep(&e.key, &e.tag));
        before != self.entries.len()
    }

    /// Replaces the entry for `e.key`; false when the table is full and the entry is new.
    fn put(&mut self, e: Entry) -> bool {
        if let Some(slot) = self.entries.iter_mut().find(|x| x.key == e.key) {
            *slot = e;
            return true;
        }
        if self.entries.len() >= MAX_ENTRIES {
            return false;
        }
        self.entries.push(e);
        true
    }

    fn remove(&mut self, key: &str) {
        self.entries.retain(|e| e.key != key);
    }
}

fn open(key: String, rule: &Rule, now_ms: u64) -> Entry {
    Entry {
        key,
        tag: rule.tag.clone(),
        status: Status::Open,
        since_ms: now_ms,
        streak: 0,
        given: 0,
        passed: 0,
    }
}

/// Probes that never reported are given up after this long in half-open.
fn probe_expiry_ms(rule: &Rule) -> u64 {
    rule.sleep_window_ms.max(1000)
}

fn effective(e: &Entry, rule: &Rule, now_ms: u64) -> Effective {
    match e.status {
        Status::Closed => Effective::Closed { streak: e.streak },
        Status::Open => {
            let until_ms = e.since_ms.saturating_add(rule.sleep_window_ms);
            if now_ms >= until_ms {
                Effective::HalfOpen { free: rule.probes }
            } else {
                Effective::Open { until_ms }
            }
        }
        Status::HalfOpen => {
            let lost = now_ms >= e.since_ms.saturating_add(probe_expiry_ms(rule));
            if e.given >= rule.probes && lost {
                Effective::HalfOpen { free: rule.probes }
            } else {
                Effective::HalfOpen {
                    free: rule.probes.saturating_sub(e.given),
                }
            }
        }
    }
}

/// The half-open entry an admission or outcome starts from: a fresh one when the stored entry is
/// still open (its sleep window is over) or its probes were lost.
fn half_open_base(e: &Entry, rule: &Rule, now_ms: u64) -> (Entry, Option<Transition>) {
    let lost = e.status == Status::HalfOpen
        && e.given >= rule.probes
        && now_ms >= e.since_ms.saturating_add(probe_expiry_ms(rule));
    if e.status == Status::HalfOpen && !lost {
        return (e.clone(), None);
    }
    let fresh = Entry {
        key: e.key.clone(),
        tag: e.tag.clone(),
        status: Status::HalfOpen,
        since_ms: now_ms,
        streak: 0,
        given: 0,
        passed: 0,
    };
    let transition = (e.status == Status::Open).then_some(Transition::HalfOpened);
    (fresh, transition)
}

fn parse_line(line: &str) -> Option<Entry> {
    let mut f = line.split('\t');
    let key = f.next()?.to_string();
    let tag = f.next()?.to_string();
    let status = match f.next()? {
        "c" => Status::Closed,
        "o" => Status::Open,
        "h" => Status::HalfOpen,
        _ => return None,
    };
    let mut num = || f.next().and_then(|v| v.parse::<u64>().ok());
    let since_ms = num()?;
    let streak = u32::try_from(num()?).ok()?;
    let given = u32::try_from(num()?).ok()?;
    let passed = u32::try_from(num()?).ok()?;
    Some(Entry {
        key,
        tag,
        status,
        since_ms,
        streak,
        given,
        passed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::rule::{Level, Trigger};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn rule(consecutive: u32, sleep_ms: u64, probes: u32) -> Rule {
        let mut r = Rule::polaris_default();
        r.tag = "t1".into();
        r.level = Level::Instance;
        r.triggers = vec![Trigger::Consecutive(consecutive)];
        r.sleep_window_ms = sleep_ms;
        r.probes = probes;
        r
    }

    const A: Resource<'static> = Resource::Instance("10.0.0.1:80");

    fn fail(t: &mut Table, r: &Rule, now: u64) -> Option<Transition> {
        t.record(A, r, true, now).0
    }

    fn ok(t: &mut Table, r: &Rule, now: u64) -> Option<Transition> {
        t.record(A, r, false, now).0
    }

    #[test]
    fn five_consecutive_failures_open_and_a_success_in_between_resets() {
        let r = rule(5, 3000, 2);
        let mut t = Table::default();
        for _ in 0..4 {
            assert_eq!(fail(&mut t, &r, 10), None);
        }
        assert_eq!(t.effective(A, &r, 10), Effective::Closed { streak: 4 });
        assert_eq!(ok(&mut t, &r, 11), None);
        assert!(t.is_empty(), "a success leaves the initial state: no entry");
        for _ in 0..4 {
            assert_eq!(fail(&mut t, &r, 12), None);
        }
        assert_eq!(fail(&mut t, &r, 12), Some(Transition::Opened));
        assert_eq!(t.effective(A, &r, 13), Effective::Open { until_ms: 3012 });
        assert_eq!(
            fail(&mut t, &r, 14),
            None,
            "outcomes while open are ignored"
        );
    }

    #[test]
    fn after_the_sleep_window_probes_are_admitted_up_to_consecutive_success() {
        let r = rule(1, 3000, 2);
        let mut t = Table::default();
        fail(&mut t, &r, 0);
        assert_eq!(t.admit(A, &r, 2999), (false, None, false));
        assert_eq!(t.effective(A, &r, 3000), Effective::HalfOpen { free: 2 });
        assert_eq!(
            t.admit(A, &r, 3000),
            (true, Some(Transition::HalfOpened), true)
        );
        assert_eq!(t.admit(A, &r, 3001), (true, None, true));
        assert_eq!(
            t.admit(A, &r, 3002),
            (false, None, false),
            "two probes only"
        );
        assert_eq!(ok(&mut t, &r, 3010), None);
        assert_eq!(ok(&mut t, &r, 3011), Some(Transition::Closed));
        assert_eq!(t.effective(A, &r, 3012), Effective::Closed { streak: 0 });
        assert!(t.is_empty());
    }

    #[test]
    fn any_probe_failure_reopens_for_another_sleep_window() {
        let r = rule(1, 1000, 3);
        let mut t = Table::default();
        fail(&mut t, &r, 0);
        t.admit(A, &r, 1000);
        assert_eq!(ok(&mut t, &r, 1001), None);
        assert_eq!(fail(&mut t, &r, 1002), Some(Transition::Reopened));
        assert_eq!(t.effective(A, &r, 1500), Effective::Open { until_ms: 2002 });
    }

    #[test]
    fn an_outcome_without_a_probe_after_the_sleep_window_counts_as_a_probe() {
        // Fault-detection probes and dry-run traffic report without taking a probe.
        let r = rule(1, 1000, 1);
        let mut t = Table::default();
        fail(&mut t, &r, 0);
        assert_eq!(ok(&mut t, &r, 500), None, "still open: ignored");
        assert_eq!(ok(&mut t, &r, 1000), Some(Transition::Closed));
    }

    #[test]
    fn probes_that_never_report_are_given_up_after_another_sleep_window() {
        let r = rule(1, 2000, 1);
        let mut t = Table::default();
        fail(&mut t, &r, 0);
        assert!(t.admit(A, &r, 2000).0);
        assert!(!t.admit(A, &r, 3999).0);
        let (admitted, transition, wrote) = t.admit(A, &r, 4000);
        assert!(admitted && wrote);
        assert_eq!(transition, None, "still half-open, with a fresh probe");
    }

    #[test]
    fn entries_of_another_rule_version_count_as_closed() {
        let r = rule(1, 5000, 1);
        let mut t = Table::default();
        fail(&mut t, &r, 0);
        let mut changed = r.clone();
        changed.tag = "t2".into();
        assert_eq!(t.effective(A, &changed, 1), Effective::Closed { streak: 0 });
        assert!(t.admit(A, &changed, 1).0);
        assert!(t.retain(|_, tag| tag == "t2"));
        assert!(t.is_empty());
    }

    #[test]
    fn error_rate_trips_only_a_closed_resource() {
        let r = rule(100, 1000, 1);
        let mut t = Table::default();
        assert_eq!(t.trip(A, &r, 5), Some(Transition::Opened));
        assert_eq!(t.trip(A, &r, 6), None);
    }

    #[test]
    fn the_table_round_trips_and_junk_counts_as_closed() {
        let r = rule(2, 1000, 1);
        let mut t = Table::default();
        t.record(Resource::Service, &r, true, 1);
        fail(&mut t, &r, 1);
        fail(&mut t, &r, 2);
        t.record(Resource::Method("/pay"), &r, true, 3);
        let back = Table::decode(Some(&t.encode()));
        assert_eq!(back, t);
        assert_eq!(back.effective(A, &r, 3), Effective::Open { until_ms: 1002 });
        assert_eq!(
            Table::decode(Some(b"garbage\nmore\tjunk")),
            Table::default()
        );
        assert_eq!(Table::decode(Some(&[0xff, 0xfe])), Table::default());
        assert_eq!(Resource::Method("/a\tb").key(), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let r = rule(5, 1000, 1);
        let mut t = Table::default();
        let paths: Vec<String> = (0..MAX_ENTRIES + 10).map(|n| format!("/p{n}")).collect();
        for p in &paths {
            t.record(Resource::Method(p), &r, true, 1);
        }
        assert_eq!(t.entries.len(), MAX_ENTRIES);
    }
}
