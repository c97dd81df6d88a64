//! GLOBAL rate limits against the fake host: the leader's stream calls (INIT, ACQUIRE, re-INIT on
//! 400214 and on a closed stream, TimeAdjust) and failover on the request path.

use prost::Message;

use super::fake::{Call, FakeHost, FakeStream};
use super::global_limit;
use super::global_take::{self, record_key};
use super::{Exchange, Verdict, Worker};
use crate::config::Config;
use crate::lb::murmur3::murmur3_64;
use crate::limit::GlobalWindow;
use crate::model::{Kind, ServiceKey};
use crate::polaris::limiter_proto as pb;
use crate::polaris::proto;
use crate::shared;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const START: u64 = 1_000_000;
const STREAM: &str = "polaris.metric.v2.RateLimitGRPCV2/Service";
const TIME_ADJUST: &str = "polaris.metric.v2.RateLimitGRPCV2/TimeAdjust";
const LIMITER: &str =
    r#","rate_limit":{"rules_of":"destination","limiter":{"cluster":"polaris_limiter"}}"#;

fn echo() -> ServiceKey {
    ServiceKey::new("default", "echo")
}

fn worker(host: &FakeHost, extra: &str) -> Worker<FakeHost> {
    let json = format!(r#"{{"polaris_cluster":"polaris_grpc","refresh_interval":"1s"{extra}}}"#);
    let w = Worker::new(host.clone(), Config::parse(json.as_bytes()).unwrap(), 7).unwrap();
    host.take_calls();
    w
}

fn answer(kind: Kind) -> proto::DiscoverResponse {
    proto::DiscoverResponse {
        code: Some(200_000),
        r#type: crate::polaris::client::request_type(kind) as i32,
        service: Some(proto::Service {
            name: Some("echo".into()),
            namespace: Some("default".into()),
            revision: Some("r1".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// echo with one instance, no routing rules and one GLOBAL rule of `max` per second.
fn seed(host: &FakeHost, max: u32, failover: proto::rule::FailoverType) {
    let mut i = answer(Kind::Instances);
    i.instances = vec![proto::Instance {
        id: Some("i1".into()),
        host: Some("127.0.0.1".into()),
        port: Some(8080),
        ..Default::default()
    }];
    host.put(
        &shared::resource_key(Kind::Instances, &echo()),
        &i.encode_to_vec(),
    );
    host.put(
        &shared::resource_key(Kind::Routing, &echo()),
        &answer(Kind::Routing).encode_to_vec(),
    );
    let mut r = answer(Kind::RateLimit);
    r.rate_limit = Some(proto::RateLimit {
        rules: vec![proto::Rule {
            id: Some("g1".into()),
            name: Some("global-ten".into()),
            r#type: proto::rule::Type::Global as i32,
            failover: failover as i32,
            amounts: vec![proto::Amount {
                max_amount: Some(max),
                valid_duration: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        revision: Some("rl1".into()),
    });
    host.put(
        &shared::resource_key(Kind::RateLimit, &echo()),
        &r.encode_to_vec(),
    );
    host.put(shared::WATCH_KEY, b"default/echo\n");
}

fn admitted(w: &mut Worker<FakeHost>, n: usize) -> usize {
    (0..n)
        .filter(|_| {
            let mut stream = FakeStream::with(&[(":authority", "echo")]);
            Exchange::default().on_request(w, &mut stream) == Verdict::Forward
        })
        .count()
}

/// The limiter requests sent on streams, decoded.
fn sent(calls: &[Call]) -> Vec<(u32, pb::RateLimitRequest)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::StreamSend { token, message } => Some((
                *token,
                pb::RateLimitRequest::decode(message.as_slice()).unwrap(),
            )),
            _ => None,
        })
        .collect()
}

fn opened(calls: &[Call]) -> usize {
    calls
        .iter()
        .filter(|c| matches!(c, Call::StreamOpen { method, .. } if method == STREAM))
        .count()
}

fn init_answer(counter_key: u32, left: i64, clients: u32, now: u64) -> Vec<u8> {
    pb::RateLimitResponse {
        cmd: pb::RateLimitCmd::Init as i32,
        rate_limit_init_response: Some(pb::RateLimitInitResponse {
            code: 200_000,
            target: Some(pb::LimitTarget {
                namespace: "default".into(),
                service: "echo".into(),
                labels: String::new(),
                labels_list: vec![],
            }),
            client_key: 42,
            counters: vec![pb::QuotaCounter {
                duration: 1,
                counter_key,
                left,
                mode: 0,
                client_count: clients,
            }],
            slide_count: 1,
            timestamp: i64::try_from(now).unwrap(),
        }),
        rate_limit_report_response: None,
    }
    .encode_to_vec()
}

fn acquire_answer(code: u32, counter_key: u32, left: i64, now: u64) -> Vec<u8> {
    pb::RateLimitResponse {
        cmd: pb::RateLimitCmd::Acquire as i32,
        rate_limit_init_response: None,
        rate_limit_report_response: Some(pb::RateLimitReportResponse {
            code,
            quota_lefts: vec![pb::QuotaLeft {
                counter_key,
                left,
                mode: 0,
                client_count: 2,
            }],
            timestamp: i64::try_from(now).unwrap(),
        }),
    }
    .encode_to_vec()
}

fn record(host: &FakeHost) -> GlobalWindow {
    let key = record_key(&echo(), "g1", 1000, murmur3_64(b"", 0));
    GlobalWindow::decode(host.stored(&key).as_deref())
}

/// A worker that took the lease, saw one request, and whose leader sent the INIT: the stream's
/// token.
fn initialized(host: &FakeHost, w: &mut Worker<FakeHost>) -> u32 {
    assert_eq!(admitted(w, 1), 1);
    w.on_tick();
    let calls = host.take_calls();
    let (token, _) = sent(&calls)[0];
    token
}

#[test]
fn the_leader_opens_one_stream_adjusts_the_clock_and_inits_each_window_key() {
    let host = FakeHost::new(START + 100);
    seed(&host, 10, proto::rule::FailoverType::FailoverLocal);
    let mut w = worker(&host, LIMITER);
    assert_eq!(w.tick_period(), super::limiter_link::SYNC_TICK);
    assert_eq!(admitted(&mut w, 1), 1, "before any answer: failover, local");
    assert_eq!(
        global_take::read_list(&host).len(),
        1,
        "the key is registered"
    );
    w.on_tick();
    let calls = host.take_calls();
    assert_eq!(opened(&calls), 1);
    assert!(calls
        .iter()
        .any(|c| matches!(c, Call::Grpc { method, .. } if method == TIME_ADJUST)));
    let sent = sent(&calls);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (_, req) = &sent[0];
    assert_eq!(req.cmd, pb::RateLimitCmd::Init as i32);
    let init = req.rate_limit_init_request.clone().unwrap();
    let target = init.target.unwrap();
    assert_eq!(
        (target.namespace.as_str(), target.service.as_str()),
        ("default", "echo")
    );
    assert!(init.client_id.starts_with("polaris-wasm-"));
    assert_eq!(init.totals.len(), 1);
    assert_eq!(
        (init.totals[0].duration, init.totals[0].max_amount),
        (1, 10)
    );
    assert_eq!(init.totals[0].mode, pb::QuotaMode::Whole as i32);
    // The next tick neither reopens nor re-INITs while the INIT is fresh.
    w.on_tick();
    let calls = host.take_calls();
    assert_eq!((opened(&calls), self::sent(&calls).len()), (0, 0));
}

#[test]
fn answers_set_the_budget_and_ticks_report_what_was_taken() {
    let host = FakeHost::new(START + 100);
    seed(&host, 10, proto::rule::FailoverType::FailoverLocal);
    let mut w = worker(&host, LIMITER);
    let token = initialized(&host, &mut w);
    // 10 left, 2 clients, 1 taken and not reported: this Envoy may reach 1 + ceil(9 / 2)
    // (the answer is past the window's settling time).
    host.set_now(START + 400);
    w.on_stream_message(token, &init_answer(7, 10, 2, START + 400));
    assert_eq!(record(&host).budget, 6);
    assert_eq!(admitted(&mut w, 10), 5);
    w.on_tick();
    let sent = sent(&host.take_calls());
    assert_eq!(sent.len(), 1);
    let report = sent[0].1.rate_limit_report_request.clone().unwrap();
    assert_eq!(sent[0].1.cmd, pb::RateLimitCmd::Acquire as i32);
    assert_eq!(report.client_key, 42);
    assert_eq!(report.quota_uses.len(), 1);
    assert_eq!(
        (report.quota_uses[0].counter_key, report.quota_uses[0].used),
        (7, 6)
    );
    // The server says the window is overdrawn: nothing more in it.
    w.on_stream_message(token, &acquire_answer(200_000, 7, -2, START + 450));
    assert_eq!(admitted(&mut w, 5), 0);
    // The next window starts with this Envoy's share of the amount.
    host.set_now(START + 1_010);
    w.on_stream_message(token, &acquire_answer(200_000, 7, 10, START + 1_010));
    assert_eq!(admitted(&mut w, 10), 5);
}

#[test]
fn an_unknown_counter_answer_and_the_closed_stream_make_the_leader_init_again() {
    let host = FakeHost::new(START + 100);
    seed(&host, 10, proto::rule::FailoverType::FailoverLocal);
    let mut w = worker(&host, LIMITER);
    let token = initialized(&host, &mut w);
    w.on_stream_message(token, &init_answer(7, 10, 1, START + 110));
    w.on_stream_message(token, &acquire_answer(400_214, 7, 0, START + 120));
    assert!(w.counters().pending(super::Counter::LimiterSyncErrors) >= 1);
    // The server closes the stream after 400214 (status OK): reopened at once, INIT again.
    w.on_stream_close(token, 0, None);
    w.on_tick();
    let calls = host.take_calls();
    assert_eq!(opened(&calls), 1);
    let sent = sent(&calls);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.cmd, pb::RateLimitCmd::Init as i32);
    assert_ne!(sent[0].0, token, "on the new stream");
}

#[test]
fn a_failed_stream_is_reopened_after_a_second() {
    let host = FakeHost::new(START + 100);
    seed(&host, 10, proto::rule::FailoverType::FailoverLocal);
    let mut w = worker(&host, LIMITER);
    let token = initialized(&host, &mut w);
    w.on_stream_close(token, 14, Some("upstream connect error".into()));
    w.on_tick();
    assert_eq!(opened(&host.take_calls()), 0, "not at once");
    host.set_now(START + 1_200);
    w.on_tick();
    assert_eq!(opened(&host.take_calls()), 1);
}

#[test]
fn without_answers_failover_local_limits_at_the_share_and_failover_pass_admits_all() {
    for (failover, expected) in [
        (proto::rule::FailoverType::FailoverLocal, 5),
        (proto::rule::FailoverType::FailoverPass, 20),
    ] {
        let host = FakeHost::new(START + 100);
        seed(&host, 10, failover);
        let mut w = worker(&host, LIMITER);
        let token = initialized(&host, &mut w);
        w.on_stream_message(token, &init_answer(7, 10, 2, START + 110));
        // The limiter goes silent: two seconds later the record is stale.
        host.set_now(START + 2_100);
        assert_eq!(admitted(&mut w, 20), expected, "{failover:?}");
        // It answers again: global again (this Envoy's starting share of the window until an
        // answer about the window, then what the server says).
        w.on_stream_message(token, &acquire_answer(200_000, 7, 0, START + 2_110));
        assert!(admitted(&mut w, 20) <= 5, "{failover:?}");
        w.on_stream_message(token, &acquire_answer(200_000, 7, 0, START + 2_150));
        assert_eq!(
            admitted(&mut w, 5),
            0,
            "{failover:?}: the server says none left"
        );
    }
}

#[test]
fn without_a_limiter_configured_global_rules_count_locally_and_nothing_is_streamed() {
    let host = FakeHost::new(START + 100);
    seed(&host, 3, proto::rule::FailoverType::FailoverLocal);
    let mut w = worker(&host, r#","rate_limit":{"rules_of":"destination"}"#);
    assert_eq!(admitted(&mut w, 10), 3);
    w.on_tick();
    let calls = host.take_calls();
    assert_eq!((opened(&calls), sent(&calls).len()), (0, 0));
}

#[test]
fn a_discovered_limiter_is_reached_through_the_address_cluster_with_its_address() {
    let host = FakeHost::new(START + 100);
    seed(&host, 10, proto::rule::FailoverType::FailoverLocal);
    let limiter = ServiceKey::new("Polaris", "polaris.limiter");
    let mut i = answer(Kind::Instances);
    i.service = Some(proto::Service {
        name: Some("polaris.limiter".into()),
        namespace: Some("Polaris".into()),
        revision: Some("l1".into()),
        ..Default::default()
    });
    i.instances = vec![proto::Instance {
        id: Some("l1".into()),
        host: Some("127.0.0.1".into()),
        port: Some(8101),
        healthy: Some(true),
        ..Default::default()
    }];
    host.put(
        &shared::resource_key(Kind::Instances, &limiter),
        &i.encode_to_vec(),
    );
    let mut w = worker(
        &host,
        r#","rate_limit":{"limiter":{"address_cluster":"limiter_dst","address_header":"x-limiter"}}"#,
    );
    assert_eq!(admitted(&mut w, 1), 1);
    w.on_tick();
    let calls = host.take_calls();
    let open = calls
        .iter()
        .find_map(|c| match c {
            Call::StreamOpen { metadata, .. } => Some(metadata.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        open,
        vec![("x-limiter".to_string(), "127.0.0.1:8101".to_string())]
    );
}

#[test]
fn a_key_idle_for_two_windows_is_no_longer_reported_and_a_new_request_inits_it_again() {
    let host = FakeHost::new(START + 100);
    seed(&host, 10, proto::rule::FailoverType::FailoverLocal);
    let mut w = worker(&host, LIMITER);
    let token = initialized(&host, &mut w);
    host.set_now(START + 400);
    w.on_stream_message(token, &init_answer(7, 10, 1, START + 400));
    host.set_now(START + 3_100);
    w.on_stream_message(token, &acquire_answer(200_000, 7, 10, START + 3_100));
    w.on_tick();
    let calls = host.take_calls();
    assert!(
        sent(&calls).is_empty(),
        "idle: nothing reported: {:?}",
        sent(&calls)
    );
    assert!(global_take::read_list(&host).is_empty());
    let reset = record(&host);
    assert_eq!(
        (reset.clients, reset.created_ms, reset.used),
        (2, 0, 0),
        "reset, remembering the client count"
    );
    assert!(
        !calls.iter().any(|c| matches!(c, Call::StreamClose(_))),
        "the stream stays open for the key's return"
    );
    assert_eq!(admitted(&mut w, 1), 1);
    assert_eq!(global_take::read_list(&host).len(), 1, "registered again");
    w.on_tick();
    let calls = host.take_calls();
    assert_eq!(opened(&calls), 0, "on the same stream");
    let sent = sent(&calls);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.cmd, pb::RateLimitCmd::Init as i32);
}

#[test]
fn a_failover_pass_key_back_after_idling_on_a_quiet_open_stream_counts_its_share_not_passes() {
    let host = FakeHost::new(START + 100);
    seed(&host, 10, proto::rule::FailoverType::FailoverPass);
    let mut w = worker(&host, LIMITER);
    let token = initialized(&host, &mut w);
    host.set_now(START + 400);
    w.on_stream_message(token, &init_answer(7, 10, 2, START + 400));
    assert_eq!(admitted(&mut w, 1), 1);
    host.set_now(START + 3_100);
    w.on_stream_message(token, &acquire_answer(200_000, 7, 10, START + 3_100));
    w.on_tick();
    assert!(global_take::read_list(&host).is_empty(), "idle");
    // Nothing to report for a second and a half: the open stream says nothing, and is not down.
    for t in [3_500, 4_000, 4_600] {
        host.set_now(START + t);
        w.on_tick();
    }
    host.take_calls();
    assert_eq!(
        admitted(&mut w, 20),
        5,
        "the share of 10 among 2 until the limiter's answer"
    );
}

#[test]
fn a_key_failover_pass_only_ever_passed_goes_idle_two_windows_after_it_was_made() {
    let host = FakeHost::new(START + 100);
    seed(&host, 10, proto::rule::FailoverType::FailoverPass);
    let mut w = worker(&host, LIMITER);
    initialized(&host, &mut w);
    assert_eq!(record(&host).start, 0, "passed, never counted in a window");
    host.set_now(START + 1_500);
    w.on_tick();
    assert_eq!(global_take::read_list(&host).len(), 1, "still in use");
    host.set_now(START + 2_500);
    w.on_tick();
    assert!(
        global_take::read_list(&host).is_empty(),
        "no longer reported"
    );
}

#[test]
fn a_stream_that_leaves_messages_unanswered_for_three_seconds_is_reopened() {
    let host = FakeHost::new(START + 100);
    seed(&host, 10, proto::rule::FailoverType::FailoverLocal);
    let mut w = worker(&host, LIMITER);
    let token = initialized(&host, &mut w);
    host.set_now(START + 400);
    w.on_stream_message(token, &init_answer(7, 10, 1, START + 400));
    for t in [500, 1_500, 2_500, 3_450] {
        host.set_now(START + t);
        assert_eq!(admitted(&mut w, 1), 1);
        w.on_tick();
    }
    assert_eq!(opened(&host.take_calls()), 0, "3 s not yet over");
    host.set_now(START + 3_600);
    w.on_tick();
    let calls = host.take_calls();
    assert!(calls.contains(&Call::StreamClose(token)));
    assert_eq!(opened(&calls), 1);
}

#[test]
fn time_adjust_sets_the_clock_offset_global_windows_follow() {
    let host = FakeHost::new(START + 100);
    seed(&host, 10, proto::rule::FailoverType::FailoverLocal);
    let mut w = worker(&host, LIMITER);
    assert_eq!(admitted(&mut w, 1), 1);
    w.on_tick();
    let calls = host.take_calls();
    assert!(calls
        .iter()
        .any(|c| matches!(c, Call::Grpc { method, .. } if method == TIME_ADJUST)));
    // The fake hands out tokens in call order: the stream's, then the TimeAdjust's.
    let token = sent(&calls)[0].0 + 1;
    // The limiter's clock is 950 ms ahead (answered at once).
    let answer = pb::TimeAdjustResponse {
        server_timestamp: i64::try_from(START + 100 + 950).unwrap(),
    }
    .encode_to_vec();
    w.on_call_result(token, Ok(answer));
    assert_eq!(
        host.stored(global_limit::OFFSET_KEY),
        Some(950i64.to_le_bytes().to_vec())
    );
    // Local START + 100 is the limiter's START + 1050: its next window.
    w.on_tick();
    assert_eq!(admitted(&mut w, 1), 1);
    assert_eq!(record(&host).start, START + 1000);
}
