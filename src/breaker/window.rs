//! ERROR_RATE sliding windows: polaris-go's 10 buckets over the rule's `interval`
//! (`trigger/err_rate.go`), summed over every worker of the Envoy.
//!
//! Each worker counts requests and failures into its own [`Local`] buckets (no host call per
//! request) and merges them into the service's shared [`Windows`] on its tick. The leader keeps
//! polaris-go's schedule ([`Schedule`]): the first failure schedules a check one `interval` later,
//! over the window that ends then; it opens the breaker when the window holds at least
//! `minimum_request` requests and at least `error_percent` % of them failed. The check runs one
//! tick after its time, when every worker has merged the buckets it needs.

use super::state::Resource;

/// Buckets per interval (polaris-go `bucketCount`).
pub const BUCKETS: u64 = 10;

/// The bucket length for an interval (polaris-go rounds up).
pub fn bucket_ms(interval_ms: u64) -> u64 {
    interval_ms.div_ceil(BUCKETS).max(1)
}

/// Counts of one resource under one rule version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Series {
    pub tag: String,
    pub bucket_ms: u64,
    /// (bucket index = time / bucket_ms, requests, failures), ascending.
    pub buckets: Vec<(u64, u32, u32)>,
}

impl Series {
    fn add(&mut self, index: u64, requests: u32, failures: u32) {
        match self.buckets.iter_mut().find(|b| b.0 == index) {
            Some(b) => {
                b.1 = b.1.saturating_add(requests);
                b.2 = b.2.saturating_add(failures);
            }
            None => {
                self.buckets.push((index, requests, failures));
                self.buckets.sort_unstable_by_key(|b| b.0);
            }
        }
    }

    /// Drops buckets that can no longer be inside a window ending at or after `now_ms`.
    fn prune(&mut self, now_ms: u64) {
        let oldest = (now_ms / self.bucket_ms).saturating_sub(2 * BUCKETS + 1);
        self.buckets.retain(|b| b.0 >= oldest);
    }

    /// Requests and failures in buckets overlapping `[from_ms, to_ms)`.
    pub fn sum(&self, from_ms: u64, to_ms: u64) -> (u64, u64) {
        let lo = from_ms / self.bucket_ms;
        let hi = to_ms.saturating_sub(1) / self.bucket_ms;
        self.buckets
            .iter()
            .filter(|b| b.0 >= lo && b.0 <= hi)
            .fold((0, 0), |(r, f), b| (r + u64::from(b.1), f + u64::from(b.2)))
    }

    /// Start of the first bucket holding a failure at or after `after_ms`.
    pub fn first_failure(&self, after_ms: u64) -> Option<u64> {
        self.buckets
            .iter()
            .filter(|b| b.2 > 0)
            .map(|b| b.0.saturating_mul(self.bucket_ms))
            .find(|start| start.saturating_add(self.bucket_ms) > after_ms)
            .map(|start| start.max(after_ms))
    }
}

/// One worker's counts since its last merge, by resource key.
///
/// A success in the initial state is counted without reading the clock (the success path makes
/// no clock call): such successes are stamped when the worker merges, at the midpoint between its
/// last merge and this one, so each lands at most half a tick away from its time.
#[derive(Clone, Debug, Default)]
pub struct Local {
    series: Vec<(String, Series)>,
    /// Successes not stamped yet: (entry key, tag, bucket length, count).
    unstamped: Vec<(String, String, u64, u32)>,
    last_merge_ms: Option<u64>,
}

impl Local {
    /// An outcome at `now_ms`.
    pub fn add(
        &mut self,
        resource: Resource<'_>,
        tag: &str,
        interval_ms: u64,
        failed: bool,
        now_ms: u64,
    ) {
        let Some(series) = self.series_of(resource, tag, bucket_ms(interval_ms)) else {
            return;
        };
        series.add(now_ms / series.bucket_ms, 1, u32::from(failed));
    }

    /// A success whose time is stamped at the next merge.
    pub fn add_success(&mut self, resource: Resource<'_>, tag: &str, interval_ms: u64) {
        let b = bucket_ms(interval_ms);
        let found = self
            .unstamped
            .iter_mut()
            .find(|(k, t, bm, _)| resource.is(k) && t == tag && *bm == b);
        match found {
            Some(entry) => entry.3 = entry.3.saturating_add(1),
            None => {
                if let Some(key) = resource.key() {
                    self.unstamped.push((key, tag.to_string(), b, 1));
                }
            }
        }
    }

    fn series_of(&mut self, resource: Resource<'_>, tag: &str, b: u64) -> Option<&mut Series> {
        let pos = match self.series.iter().position(|(k, _)| resource.is(k)) {
            Some(pos) => pos,
            None => {
                self.series.push((resource.key()?, Series::default()));
                self.series.len() - 1
            }
        };
        let (_, series) = self.series.get_mut(pos)?;
        if series.tag != tag || series.bucket_ms != b {
            *series = Series {
                tag: tag.to_string(),
                bucket_ms: b,
                buckets: Vec::new(),
            };
        }
        Some(series)
    }

    /// Stamps the unstamped successes for a merge at `now_ms` (called on every tick, merge or
    /// not, so they land midway between two ticks).
    pub fn stamp(&mut self, now_ms: u64) {
        let at = self
            .last_merge_ms
            .map_or(now_ms, |last| last + now_ms.saturating_sub(last) / 2);
        self.last_merge_ms = Some(now_ms);
        for (key, tag, b, count) in std::mem::take(&mut self.unstamped) {
            let pos = match self.series.iter().position(|(k, _)| *k == key) {
                Some(pos) => pos,
                None => {
                    self.series.push((key, Series::default()));
                    self.series.len() - 1
                }
            };
            if let Some((_, series)) = self.series.get_mut(pos) {
                if series.tag != tag || series.bucket_ms != b {
                    *series = Series {
                        tag,
                        bucket_ms: b,
                        buckets: Vec::new(),
                    };
                }
                series.add(at / b, count, 0);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty() && self.unstamped.is_empty()
    }

    /// Forgets the merged counts (the merge time stays).
    pub fn clear(&mut self) {
        self.series.clear();
        self.unstamped.clear();
    }
}

/// A service's windows in shared data, by resource key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Windows {
    pub series: Vec<(String, Series)>,
}

impl Windows {
    pub fn get(&self, key: &str) -> Option<&Series> {
        self.series.iter().find(|(k, _)| k == key).map(|(_, s)| s)
    }

    /// Adds a worker's counts; series of another rule version are replaced, old buckets dropped.
    pub fn merge(&mut self, local: &Local, now_ms: u64) {
        for (key, mine) in &local.series {
            let pos = self.series.iter().position(|(k, _)| k == key);
            let target = match pos.and_then(|p| self.series.get_mut(p)) {
                Some((_, s)) if s.tag == mine.tag && s.bucket_ms == mine.bucket_ms => s,
                Some((_, s)) => {
                    *s = Series {
                        tag: mine.tag.clone(),
                        bucket_ms: mine.bucket_ms,
                        buckets: Vec::new(),
                    };
                    s
                }
                None => {
                    self.series.push((
                        key.clone(),
                        Series {
                            tag: mine.tag.clone(),
                            bucket_ms: mine.bucket_ms,
                            buckets: Vec::new(),
                        },
                    ));
                    match self.series.last_mut() {
                        Some((_, s)) => s,
                        None => continue,
                    }
                }
            };
            for (index, requests, failures) in &mine.buckets {
                target.add(*index, *requests, *failures);
            }
        }
        for (_, s) in &mut self.series {
            s.prune(now_ms);
        }
        self.series.retain(|(_, s)| !s.buckets.is_empty());
    }

    pub fn decode(bytes: Option<&[u8]>) -> Windows {
        let text = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default();
        let series = text.lines().filter_map(parse_line).collect();
        Windows { series }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        for (key, s) in &self.series {
            let buckets: Vec<String> = s
                .buckets
                .iter()
                .map(|(i, r, f)| format!("{i}:{r}:{f}"))
                .collect();
            out.push_str(&format!(
                "{key}\t{}\t{}\t{}\n",
                s.tag,
                s.bucket_ms,
                buckets.join(",")
            ));
        }
        out.into_bytes()
    }
}

fn parse_line(line: &str) -> Option<(String, Series)> {
    let mut f = line.split('\t');
    let key = f.next()?.to_string();
    let tag = f.next()?.to_string();
    let bucket_ms = f.next()?.parse::<u64>().ok().filter(|b| *b > 0)?;
    let mut buckets = Vec::new();
    for b in f.next()?.split(',').filter(|b| !b.is_empty()) {
        let mut n = b.split(':');
        let index = n.next()?.parse().ok()?;
        let requests = n.next()?.parse().ok()?;
        let failures = n.next()?.parse().ok()?;
        buckets.push((index, requests, failures));
    }
    Some((
        key,
        Series {
            tag,
            bucket_ms,
            buckets,
        },
    ))
}

/// The leader's ERROR_RATE schedule of one resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// A check is due at this time (one interval after a failure).
    pub check_at_ms: Option<u64>,
    /// Failures before this time were covered by a check.
    pub checked_until_ms: u64,
}

/// What a schedule step decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    /// The check ran: open, with the counts that decided it.
    Open {
        requests: u64,
        failures: u64,
    },
    Pass,
}

impl Schedule {
    /// One leader tick: schedule a check after the first unchecked failure, and run a due check
    /// once `settle_ms` has passed since its time (so every worker has merged).
    pub fn step(
        &mut self,
        series: &Series,
        (percent, interval_ms, minimum): (u32, u64, u32),
        now_ms: u64,
        settle_ms: u64,
    ) -> Verdict {
        if self.check_at_ms.is_none() {
            let Some(first) = series.first_failure(self.checked_until_ms) else {
                return Verdict::Wait;
            };
            self.check_at_ms = Some(first.saturating_add(interval_ms));
        }
        let Some(at) = self.check_at_ms else {
            return Verdict::Wait;
        };
        if now_ms < at.saturating_add(settle_ms) {
            return Verdict::Wait;
        }
        self.check_at_ms = None;
        self.checked_until_ms = at;
        let (requests, failures) = series.sum(at.saturating_sub(interval_ms), at);
        let rate_reached =
            failures.saturating_mul(100) >= u64::from(percent).saturating_mul(requests);
        if requests >= u64::from(minimum) && requests > 0 && rate_reached {
            Verdict::Open { requests, failures }
        } else {
            Verdict::Pass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const RULE: (u32, u64, u32) = (50, 10_000, 10);

    const A: Resource<'static> = Resource::Instance("a");

    /// `n` requests at `at`, every `every`-th a failure (0: none).
    fn traffic(local: &mut Local, n: u32, every: u32, at: u64) {
        for i in 0..n {
            let failed = every > 0 && i % every == 0;
            local.add(A, "t", 10_000, failed, at);
        }
    }

    fn shared(local: &Local, now: u64) -> Windows {
        let mut w = Windows::default();
        w.merge(local, now);
        Windows::decode(Some(&w.encode()))
    }

    fn run(w: &Windows, s: &mut Schedule, now: u64) -> Verdict {
        s.step(w.get("i a").unwrap(), RULE, now, 500)
    }

    #[test]
    fn below_the_minimum_nothing_opens() {
        let mut l = Local::default();
        traffic(&mut l, 9, 1, 1_000);
        let w = shared(&l, 1_000);
        let mut s = Schedule::default();
        assert_eq!(run(&w, &mut s, 1_000), Verdict::Wait);
        assert_eq!(
            s.check_at_ms,
            Some(11_000),
            "one interval after the first failure"
        );
        assert_eq!(run(&w, &mut s, 11_499), Verdict::Wait, "settling");
        assert_eq!(run(&w, &mut s, 11_500), Verdict::Pass);
    }

    #[test]
    fn thirty_percent_under_a_fifty_percent_rule_passes_and_eighty_opens() {
        let mut l = Local::default();
        // 30 % failures: 3 of every 10.
        for i in 0..100 {
            l.add(A, "t", 10_000, i % 10 < 3, 1_000 + i * 50);
        }
        let w = shared(&l, 6_000);
        let mut s = Schedule::default();
        assert_eq!(run(&w, &mut s, 6_000), Verdict::Wait);
        assert_eq!(run(&w, &mut s, 12_000), Verdict::Pass);

        let mut l = Local::default();
        for i in 0..100 {
            l.add(A, "t", 10_000, i % 10 < 8, 1_000 + i * 50);
        }
        let w = shared(&l, 6_000);
        let mut s = Schedule::default();
        run(&w, &mut s, 6_000);
        assert_eq!(
            run(&w, &mut s, 12_000),
            Verdict::Open {
                requests: 100,
                failures: 80
            }
        );
    }

    #[test]
    fn workers_counts_add_up_in_the_shared_window() {
        let mut a = Local::default();
        let mut b = Local::default();
        traffic(&mut a, 6, 1, 1_000);
        traffic(&mut b, 6, 0, 1_200);
        let mut w = Windows::default();
        w.merge(&a, 1_000);
        w.merge(&b, 1_200);
        assert_eq!(w.get("i a").unwrap().sum(0, 11_000), (12, 6));
        let mut s = Schedule::default();
        run(&w, &mut s, 1_300);
        assert_eq!(
            run(&w, &mut s, 11_500),
            Verdict::Open {
                requests: 12,
                failures: 6
            },
            "exactly 50 %"
        );
    }

    #[test]
    fn after_a_check_the_next_failure_schedules_the_next_one() {
        let mut l = Local::default();
        traffic(&mut l, 2, 1, 1_000);
        let mut w = shared(&l, 1_000);
        let mut s = Schedule::default();
        run(&w, &mut s, 1_000);
        assert_eq!(run(&w, &mut s, 12_000), Verdict::Pass);
        assert_eq!(run(&w, &mut s, 13_000), Verdict::Wait);
        assert_eq!(s.check_at_ms, None, "old failures were covered");
        let mut later = Local::default();
        traffic(&mut later, 1, 1, 15_000);
        w.merge(&later, 15_000);
        run(&w, &mut s, 15_100);
        assert_eq!(s.check_at_ms, Some(25_000));
    }

    #[test]
    fn old_buckets_are_dropped_and_a_new_rule_version_starts_over() {
        let mut l = Local::default();
        traffic(&mut l, 3, 1, 1_000);
        let mut w = Windows::default();
        w.merge(&l, 1_000);
        w.merge(&Local::default(), 100_000);
        assert!(w.series.is_empty());
        w.merge(&l, 1_000);
        let mut other = Local::default();
        other.add(A, "t2", 10_000, false, 1_000);
        w.merge(&other, 1_000);
        assert_eq!(w.get("i a").unwrap().tag, "t2");
        assert_eq!(w.get("i a").unwrap().sum(0, 10_000), (1, 0));
        assert_eq!(Windows::decode(Some(b"x\ty\t0\t1:1:1")), Windows::default());
    }

    #[test]
    fn unstamped_successes_land_midway_between_merges() {
        let mut l = Local::default();
        l.stamp(1_000);
        l.clear();
        for _ in 0..4 {
            l.add_success(A, "t", 10_000);
        }
        l.add(A, "t", 10_000, true, 1_500);
        l.stamp(3_000);
        let mut w = Windows::default();
        w.merge(&l, 3_000);
        let s = w.get("i a").unwrap();
        assert_eq!(s.sum(2_000, 3_000), (4, 0), "stamped at 2 000, midway");
        assert_eq!(s.sum(1_000, 2_000), (1, 1), "a failure keeps its own time");
    }
}
