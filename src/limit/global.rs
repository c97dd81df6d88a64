//! GLOBAL rate limits, the pure part: what a GLOBAL rule asks of polaris-limiter, the per-Envoy
//! record every worker counts in, and the protocol messages (INIT, ACQUIRE, TimeAdjust).
//!
//! One record per (rule, amount, window key) in shared data ([`GlobalWindow`]). Workers take from
//! it by CAS as for local windows; the leader reports what was taken (ACQUIRE) and turns the
//! server's `left` into this Envoy's budget. polaris-go's rules apply (`bucket_qps.go`):
//! - a new record is counted locally at `ceil(total / clients)` until its first answer, for at
//!   most [`STALE_MS`], while the limiter answers this Envoy (polaris-go lets a FAILOVER_PASS
//!   window pass everything until then, and here a key comes back after idling, so that would be
//!   a burst every time);
//! - a record the leader has not refreshed for [`STALE_MS`] (or never) is in failover:
//!   FAILOVER_PASS admits everything, FAILOVER_LOCAL admits `ceil(total / clients)` per window
//!   (`total` is the amount, times the client count for SHARE_EQUALLY; `clients` the server's last
//!   count, 1 before any answer);
//! - a new window starts with that same share until the server's first answer in it.
//!
//! Unlike polaris-go, which lets every client spend the whole `left` between two reports, an
//! Envoy spends at most `ceil(left / clients)` of it before its next report, and nothing beyond
//! its starting share in the first [`settle_ms`] of a window (until every client has reported
//! that share): with every client reporting every ~40 ms the total admitted overshoots the amount
//! by about one token per client per window, instead of by every client's traffic of one report
//! interval.

use crate::model::ServiceKey;
use crate::polaris::limiter_proto as pb;
use prost::Message;

/// A record without a server answer for longer than this is in failover (polaris-go's
/// `remoteExpireMilli`).
pub const STALE_MS: u64 = 1000;

/// How long into a window every client's first report is awaited before anyone spends beyond
/// its starting share (a few report intervals; a quarter of short windows).
pub fn settle_ms(window_ms: u64) -> u64 {
    (window_ms / 4).min(300)
}

/// The server's success code.
pub const CODE_OK: u32 = 200_000;
/// "Unknown counter": the server closes the stream after it; the client INITs again.
pub const CODE_UNKNOWN_COUNTER: u32 = 400_214;

/// gRPC service and methods of polaris-limiter.
pub const SERVICE: &str = "polaris.metric.v2.RateLimitGRPCV2";
pub const STREAM_METHOD: &str = "Service";
pub const TIME_ADJUST_METHOD: &str = "TimeAdjust";

/// What a GLOBAL rule adds to a local one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Global {
    /// `amount_mode` SHARE_EQUALLY: the amount is per client, the total is amount × clients.
    pub share_equally: bool,
    /// `failover` FAILOVER_PASS: admit everything while the limiter is unreachable.
    pub pass_on_failure: bool,
    /// The rule's `cluster`: the limiter service to discover (polaris-go's lookup order).
    pub cluster: Option<ServiceKey>,
}

/// Whether `code` is a success (2xxxxx), as polaris-go reads it.
pub fn is_success(code: u32) -> bool {
    code / 100_000 == 2
}

/// This Envoy's share of `total` among `clients`: at least 1, so a tiny amount is never 0.
pub fn share(total: u64, clients: u32) -> u32 {
    let c = u64::from(clients.max(1));
    u32::try_from(total.div_ceil(c).max(1)).unwrap_or(u32::MAX)
}

/// The amount this rule allows all clients together.
pub fn total(max: u32, g: &Global, clients: u32) -> u64 {
    if g.share_equally {
        u64::from(max) * u64::from(clients.max(1))
    } else {
        u64::from(max)
    }
}

/// One Envoy's record of a global window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalWindow {
    /// Window start in server time (ms).
    pub start: u64,
    /// Admitted by this Envoy in the window.
    pub used: u32,
    /// How many of `used` this window may reach while the limiter answers.
    pub budget: u32,
    /// How many of `used` have been reported.
    pub reported: u32,
    /// Local time of the last server answer applied (0: never).
    pub synced_ms: u64,
    /// Clients of the counter, from the last answer (0: unknown).
    pub clients: u32,
    /// Local time the record was made (by a request, or again after the leader emptied it).
    pub created_ms: u64,
}

/// What a request gets from a global window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Write the record back; `granted` tokens were taken (0: the window is used up).
    Write { window: GlobalWindow, granted: u32 },
    /// Failover PASS: admitted without counting.
    Pass,
}

const RECORD_LEN: usize = 40;

impl GlobalWindow {
    /// Anything but a full record reads as a new, never-synced one.
    pub fn decode(bytes: Option<&[u8]>) -> GlobalWindow {
        let Some(b) = bytes.filter(|b| b.len() == RECORD_LEN) else {
            return GlobalWindow::default();
        };
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map_or(0, u64::from_le_bytes)
        };
        let u32_at = |i: usize| {
            b.get(i..i + 4)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .map_or(0, u32::from_le_bytes)
        };
        GlobalWindow {
            start: u64_at(0),
            used: u32_at(8),
            budget: u32_at(12),
            reported: u32_at(16),
            synced_ms: u64_at(20),
            clients: u32_at(28),
            created_ms: u64_at(32),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_LEN);
        out.extend_from_slice(&self.start.to_le_bytes());
        out.extend_from_slice(&self.used.to_le_bytes());
        out.extend_from_slice(&self.budget.to_le_bytes());
        out.extend_from_slice(&self.reported.to_le_bytes());
        out.extend_from_slice(&self.synced_ms.to_le_bytes());
        out.extend_from_slice(&self.clients.to_le_bytes());
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out
    }

    /// Whether the leader refreshed this record recently (else: failover).
    pub fn fresh(&self, now_local: u64) -> bool {
        self.synced_ms != 0 && now_local.saturating_sub(self.synced_ms) <= STALE_MS
    }

    /// Starts the window beginning at `start` (server time) if the record is in an older one.
    fn roll(&mut self, start: u64, max: u32, g: &Global) {
        if self.start != start {
            self.start = start;
            self.used = 0;
            self.reported = 0;
            self.budget = share(total(max, g, self.clients), self.clients);
        }
    }

    /// Whether the record is new and its first answer may still come (the limiter was asked
    /// less than [`STALE_MS`] ago): counted locally at the share, whatever the failover.
    fn initializing(&self, now_local: u64) -> bool {
        self.synced_ms == 0 && now_local.saturating_sub(self.created_ms) <= STALE_MS
    }

    /// Takes up to `want` tokens for the window starting at `start` (server time).
    /// `answering`: whether the limiter answered this Envoy within [`STALE_MS`] (asked only for
    /// a new record of a FAILOVER_PASS rule: while the limiter is down, it passes at once).
    pub fn take(
        mut self,
        start: u64,
        now_local: u64,
        want: u32,
        max: u32,
        g: &Global,
        answering: &dyn Fn() -> bool,
    ) -> Take {
        if self.created_ms == 0 {
            self.created_ms = now_local.max(1);
        }
        let fresh = self.fresh(now_local);
        if !fresh && g.pass_on_failure && !(self.initializing(now_local) && answering()) {
            return Take::Pass;
        }
        if start < self.start {
            // A worker whose clock offset lags the record's: count it in the record's window.
            return self.take(self.start, now_local, want, max, g, answering);
        }
        self.roll(start, max, g);
        let limit = if fresh {
            self.budget
        } else {
            share(total(max, g, self.clients), self.clients)
        };
        let granted = want.min(limit.saturating_sub(self.used));
        self.used = self.used.saturating_add(granted);
        Take::Write {
            window: self,
            granted,
        }
    }

    /// What to report now for the window starting at `start`: the tokens taken since the last
    /// report (0 when the record is still in an older window: that tail is dropped, as polaris-go
    /// drops it). Returns the record with them marked reported.
    pub fn report(mut self, start: u64) -> (GlobalWindow, u32) {
        if self.start != start {
            return (self, 0);
        }
        let delta = self.used.saturating_sub(self.reported);
        self.reported = self.used;
        (self, delta)
    }

    /// Applies a server answer: `left` of the window containing `server_ms` (may be negative),
    /// `clients` sharing it. This Envoy may admit `ceil(left' / clients)` more, where `left'` is
    /// `left` less what it admitted since its last report.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        mut self,
        left: i64,
        clients: u32,
        server_ms: u64,
        window_ms: u64,
        now_local: u64,
        max: u32,
        g: &Global,
    ) -> GlobalWindow {
        if clients > 0 {
            self.clients = clients;
        }
        self.synced_ms = now_local.max(1);
        let server_start = super::window_start(server_ms, window_ms);
        if server_start != self.start {
            // About another window than the one requests last took from: it still proves the
            // limiter is up. A newer window is started by the next request (with its share), so
            // a window nobody uses stays old and the key can go idle.
            return self;
        }
        let unreported = i64::from(self.used.saturating_sub(self.reported));
        let available = left.saturating_sub(unreported);
        let mut more = if available <= 0 {
            0
        } else {
            share(u64::try_from(available).unwrap_or(0), self.clients)
        };
        // Early in a window the other clients may not have reported the share they started it
        // with: `left` does not show it yet, so nobody goes beyond its share until they have.
        if server_ms.saturating_sub(server_start) < settle_ms(window_ms) {
            let start_share = share(total(max, g, self.clients), self.clients);
            more = more.min(start_share.saturating_sub(self.used));
        }
        self.budget = self.used.saturating_add(more);
        self
    }
}

/// The INIT request of one window key of a GLOBAL rule: one total per amount.
pub fn init_request(
    service: &ServiceKey,
    labels: &str,
    client_id: &str,
    amounts: &[(u32, u64)],
    g: &Global,
) -> Vec<u8> {
    let mode = if g.share_equally {
        pb::QuotaMode::Divide
    } else {
        pb::QuotaMode::Whole
    };
    pb::RateLimitRequest {
        cmd: pb::RateLimitCmd::Init as i32,
        rate_limit_init_request: Some(pb::RateLimitInitRequest {
            target: Some(pb::LimitTarget {
                namespace: service.namespace.clone(),
                service: service.name.clone(),
                labels: labels.to_string(),
                labels_list: Vec::new(),
            }),
            client_id: client_id.to_string(),
            totals: amounts
                .iter()
                .map(|&(max, window_ms)| pb::QuotaTotal {
                    mode: mode as i32,
                    duration: u32::try_from(window_ms / 1000).unwrap_or(u32::MAX),
                    max_amount: max,
                })
                .collect(),
            slide_count: 0,
            mode: pb::Mode::Adaptive as i32,
        }),
        rate_limit_report_request: None,
    }
    .encode_to_vec()
}

/// The ACQUIRE request reporting `uses` (counter key, used) at `server_ms`.
pub fn acquire_request(client_key: u32, uses: &[(u32, u32)], server_ms: u64) -> Vec<u8> {
    pb::RateLimitRequest {
        cmd: pb::RateLimitCmd::Acquire as i32,
        rate_limit_init_request: None,
        rate_limit_report_request: Some(pb::RateLimitReportRequest {
            client_key,
            quota_uses: uses
                .iter()
                .map(|&(counter_key, used)| pb::QuotaSum {
                    counter_key,
                    used,
                    limited: 0,
                })
                .collect(),
            timestamp: i64::try_from(server_ms).unwrap_or(i64::MAX),
        }),
    }
    .encode_to_vec()
}

/// The (empty) TimeAdjust request.
pub fn time_adjust_request() -> Vec<u8> {
    pb::TimeAdjustRequest {}.encode_to_vec()
}

/// The clock offset (server − local, ms) from a TimeAdjust answer, as polaris-go computes it:
/// the server's time plus half the round trip, less the local time at receipt.
pub fn clock_offset(answer: &[u8], sent_local: u64, received_local: u64) -> Option<i64> {
    let server = pb::TimeAdjustResponse::decode(answer)
        .ok()?
        .server_timestamp;
    if server <= 0 {
        return None;
    }
    let received = i64::try_from(received_local).ok()?;
    let latency = received.saturating_sub(i64::try_from(sent_local).ok()?);
    Some(server.saturating_add(latency / 2).saturating_sub(received))
}

/// One quota figure of an answer: counter key, its duration in seconds (INIT only), `left` and
/// the client count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Left {
    pub counter_key: u32,
    pub duration_s: Option<u32>,
    pub left: i64,
    pub clients: u32,
}

/// A decoded stream message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Init {
        code: u32,
        target: Option<(ServiceKey, String)>,
        client_key: u32,
        lefts: Vec<Left>,
        server_ms: u64,
    },
    Acquire {
        code: u32,
        lefts: Vec<Left>,
        server_ms: u64,
    },
    /// A command the filter never sends.
    Other,
}

/// Decodes one message of the stream; `None` when it is not a `RateLimitResponse`.
pub fn decode_answer(bytes: &[u8]) -> Option<Answer> {
    let r = pb::RateLimitResponse::decode(bytes).ok()?;
    let ms = |t: i64| u64::try_from(t).unwrap_or(0);
    match pb::RateLimitCmd::try_from(r.cmd) {
        Ok(pb::RateLimitCmd::Init) => {
            let i = r.rate_limit_init_response.unwrap_or_default();
            Some(Answer::Init {
                code: i.code,
                target: i
                    .target
                    .map(|t| (ServiceKey::new(t.namespace, t.service), t.labels)),
                client_key: i.client_key,
                lefts: i
                    .counters
                    .iter()
                    .map(|c| Left {
                        counter_key: c.counter_key,
                        duration_s: Some(c.duration),
                        left: c.left,
                        clients: c.client_count,
                    })
                    .collect(),
                server_ms: ms(i.timestamp),
            })
        }
        Ok(pb::RateLimitCmd::Acquire) => {
            let a = r.rate_limit_report_response.unwrap_or_default();
            Some(Answer::Acquire {
                code: a.code,
                lefts: a
                    .quota_lefts
                    .iter()
                    .map(|l| Left {
                        counter_key: l.counter_key,
                        duration_s: None,
                        left: l.left,
                        clients: l.client_count,
                    })
                    .collect(),
                server_ms: ms(a.timestamp),
            })
        }
        _ => Some(Answer::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn total_mode() -> Global {
        Global {
            share_equally: false,
            pass_on_failure: false,
            cluster: None,
        }
    }

    fn granted(t: Take) -> (GlobalWindow, u32) {
        match t {
            Take::Write { window, granted } => (window, granted),
            Take::Pass => panic!("unexpected pass"),
        }
    }

    #[test]
    fn records_round_trip_and_junk_reads_as_never_synced() {
        let w = GlobalWindow {
            start: 5_000,
            used: 3,
            budget: 7,
            reported: 2,
            synced_ms: 99,
            clients: 2,
            created_ms: 7,
        };
        assert_eq!(GlobalWindow::decode(Some(&w.encode())), w);
        assert_eq!(GlobalWindow::decode(Some(b"junk")), GlobalWindow::default());
    }

    #[test]
    fn a_never_synced_window_limits_locally_at_the_amount() {
        let g = total_mode();
        let mut w = GlobalWindow::default();
        let mut admitted = 0;
        for _ in 0..15 {
            let (next, n) = granted(w.take(1_000, 1_200, 1, 10, &g, &|| true));
            w = next;
            admitted += n;
        }
        assert_eq!(admitted, 10);
    }

    #[test]
    fn failover_pass_admits_without_counting_once_the_first_answer_is_overdue() {
        let g = Global {
            pass_on_failure: true,
            ..total_mode()
        };
        let (w, n) = granted(GlobalWindow::default().take(1_000, 1_200, 1, 10, &g, &|| true));
        assert_eq!(
            (n, w.created_ms),
            (1, 1_200),
            "a new record counts until its first answer"
        );
        assert_eq!(w.take(1_000, 2_300, 1, 10, &g, &|| true), Take::Pass);
        // While the limiter does not answer, a new record passes at once.
        assert_eq!(
            GlobalWindow::default().take(1_000, 1_200, 1, 10, &g, &|| false),
            Take::Pass
        );
    }

    #[test]
    fn the_answer_left_less_unreported_use_is_split_among_clients() {
        let g = total_mode();
        let w = GlobalWindow {
            start: 1_000,
            used: 4,
            reported: 2,
            ..Default::default()
        };
        // 10 left after our report; 2 admitted since: 8, of which half is ours.
        let w = w.apply(10, 2, 1_500, 1000, 1_500, 20, &g);
        assert_eq!((w.budget, w.clients, w.synced_ms), (8, 2, 1_500));
        // Negative left: nothing more.
        let w = w.apply(-3, 2, 1_600, 1000, 1_600, 20, &g);
        assert_eq!(w.budget, w.used);
        let (_, n) = granted(w.take(1_000, 1_650, 1, 20, &g, &|| true));
        assert_eq!(n, 0, "an overdrawn window rejects");
    }

    #[test]
    fn early_in_a_window_nobody_goes_beyond_its_starting_share() {
        let g = total_mode();
        let w = GlobalWindow {
            start: 1_000,
            used: 10,
            budget: 10,
            reported: 10,
            clients: 2,
            ..Default::default()
        };
        // The other client has not reported its starting 10 yet: the server says 10 left.
        assert_eq!(w.apply(10, 2, 1_100, 1000, 1_100, 20, &g).budget, 10);
        // Past the settling time, half of what is left.
        assert_eq!(w.apply(10, 2, 1_400, 1000, 1_400, 20, &g).budget, 15);
    }

    #[test]
    fn a_new_window_starts_with_the_share_and_stale_records_fall_back_to_it() {
        let g = total_mode();
        let w = GlobalWindow {
            start: 1_000,
            used: 9,
            budget: 9,
            reported: 9,
            synced_ms: 1_900,
            clients: 2,
            ..Default::default()
        };
        let (w, n) = granted(w.take(2_000, 2_000, 1, 10, &g, &|| true));
        assert_eq!((w.used, w.budget, n), (1, 5, 1));
        // No answer for over a second: FAILOVER_LOCAL at ceil(10 / 2) per window.
        let mut w = w;
        w.budget = 100;
        let mut admitted = 1;
        for _ in 0..10 {
            let (next, n) = granted(w.take(2_000, 2_950, 1, 10, &g, &|| true));
            w = next;
            admitted += n;
        }
        assert_eq!(admitted, 5);
    }

    #[test]
    fn share_equally_multiplies_the_total_by_the_clients() {
        let g = Global {
            share_equally: true,
            ..total_mode()
        };
        assert_eq!(share(total(10, &g, 3), 3), 10);
        assert_eq!(share(total(10, &total_mode(), 3), 3), 4);
    }

    #[test]
    fn share_equally_inits_in_divide_mode_one_total_per_amount() {
        let g = Global {
            share_equally: true,
            ..total_mode()
        };
        let key = ServiceKey::new("ns", "svc");
        let bytes = init_request(&key, "|HEADER:x:a", "c1", &[(100, 60_000), (10, 1000)], &g);
        let r = pb::RateLimitRequest::decode(bytes.as_slice()).unwrap();
        let init = r.rate_limit_init_request.unwrap();
        let totals: Vec<(i32, u32, u32)> = init
            .totals
            .iter()
            .map(|t| (t.mode, t.duration, t.max_amount))
            .collect();
        let divide = pb::QuotaMode::Divide as i32;
        assert_eq!(totals, vec![(divide, 60, 100), (divide, 1, 10)]);
        assert_eq!(init.target.unwrap().labels, "|HEADER:x:a");
    }

    #[test]
    fn reports_carry_what_was_taken_since_the_last_one() {
        let w = GlobalWindow {
            start: 1_000,
            used: 5,
            reported: 2,
            ..Default::default()
        };
        let (w, delta) = w.report(1_000);
        assert_eq!((delta, w.reported), (3, 5));
        assert_eq!(w.report(2_000).1, 0, "an older window's tail is dropped");
    }

    #[test]
    fn the_clock_offset_counts_half_the_round_trip() {
        let answer = pb::TimeAdjustResponse {
            server_timestamp: 10_050,
        }
        .encode_to_vec();
        assert_eq!(
            clock_offset(&answer, 1_000, 1_100),
            Some(10_050 + 50 - 1_100)
        );
    }

    #[test]
    fn arbitrary_bytes_from_the_limiter_or_shared_data_never_panic() {
        let mut rng = crate::lb::Rng::new(11);
        let g = total_mode();
        for n in 0..3000u64 {
            let len = usize::try_from(rng.below(64)).unwrap();
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let _ = decode_answer(&bytes);
            let _ = clock_offset(&bytes, n, n + rng.below(100));
            let mut padded = bytes.clone();
            padded.resize(RECORD_LEN, 0xff);
            for w in [
                GlobalWindow::decode(Some(&bytes)),
                GlobalWindow::decode(Some(&padded)),
            ] {
                let now = rng.next_u64();
                let _ = w.take(rng.next_u64(), now, 32, u32::MAX, &g, &|| true);
                let _ = w.apply(
                    rng.next_u64() as i64,
                    u32::MAX,
                    now,
                    1000,
                    now,
                    u32::MAX,
                    &g,
                );
                let _ = w.report(w.start);
            }
        }
    }

    #[test]
    fn answers_decode_with_negative_left() {
        let bytes = pb::RateLimitResponse {
            cmd: pb::RateLimitCmd::Acquire as i32,
            rate_limit_init_response: None,
            rate_limit_report_response: Some(pb::RateLimitReportResponse {
                code: CODE_OK,
                quota_lefts: vec![pb::QuotaLeft {
                    counter_key: 7,
                    left: -4,
                    mode: 0,
                    client_count: 2,
                }],
                timestamp: 1_234,
            }),
        }
        .encode_to_vec();
        assert_eq!(
            decode_answer(&bytes),
            Some(Answer::Acquire {
                code: CODE_OK,
                lefts: vec![Left {
                    counter_key: 7,
                    duration_s: None,
                    left: -4,
                    clients: 2
                }],
                server_ms: 1_234
            })
        );
    }
}
