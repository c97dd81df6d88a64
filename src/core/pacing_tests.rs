//! Unirate queueing, CONCURRENCY slots, custom bodies and per-rule metrics against the fake
//! host: what each step asks of the host.

use std::time::Duration;

use prost::Message;

use super::fake::{Call, FakeHost, FakeStream};
use super::tests::{instances, response};
use super::{Counter, Exchange, Verdict, Worker};
use crate::config::Config;
use crate::model::{Kind, ServiceKey};
use crate::polaris::proto;
use crate::shared;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const START: u64 = 1_000_000;
/// The worker's normal tick with `refresh_interval` 1s.
const NORMAL_TICK: Duration = Duration::from_millis(500);

fn echo() -> ServiceKey {
    ServiceKey::new("default", "echo")
}

fn rule(name: &str, max: u32, action: &str, resource: proto::rule::Resource) -> proto::Rule {
    proto::Rule {
        id: Some(format!("id-{name}")),
        name: Some(name.into()),
        r#type: proto::rule::Type::Local as i32,
        resource: resource as i32,
        action: Some(action.into()),
        amounts: vec![proto::Amount {
            max_amount: Some(max),
            valid_duration: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A worker for echo (one instance) with `rules` stored as the leader leaves them.
fn worker(host: &FakeHost, rules: Vec<proto::Rule>, rate_limit: &str) -> Worker<FakeHost> {
    host.put(
        &shared::resource_key(Kind::Instances, &echo()),
        &instances("r1", &[8080]),
    );
    host.put(
        &shared::resource_key(Kind::Routing, &echo()),
        &response(Kind::Routing, 200_000, "").encode_to_vec(),
    );
    host.put(shared::WATCH_KEY, b"default/echo\n");
    let mut r = response(Kind::RateLimit, 200_000, "rl1");
    r.rate_limit = Some(proto::RateLimit {
        rules,
        revision: Some("rl1".into()),
    });
    host.put(
        &shared::resource_key(Kind::RateLimit, &echo()),
        &r.encode_to_vec(),
    );
    let json = format!(
        r#"{{"polaris_cluster":"polaris_grpc","refresh_interval":"1s","debug_trace":true,"rate_limit":{rate_limit}}}"#
    );
    let w = Worker::new(host.clone(), Config::parse(json.as_bytes()).unwrap(), 7).unwrap();
    host.take_calls();
    w
}

fn unirate(max_queue_delay_s: u32) -> Vec<proto::Rule> {
    let mut r = rule("paced", 10, "UNIRATE", proto::rule::Resource::Qps);
    r.max_queue_delay = Some(max_queue_delay_s);
    vec![r]
}

/// Stream `id` asks for echo.
fn ask(w: &mut Worker<FakeHost>, id: u32) -> (Exchange, Verdict) {
    let mut ex = Exchange::new(id);
    let mut stream = FakeStream::with(&[(":authority", "echo"), ("x-polaris-debug", "1")]);
    let v = ex.on_request(w, &mut stream);
    (ex, v)
}

/// The pacing calls among the host calls since the last look.
fn pacing(host: &FakeHost) -> Vec<Call> {
    host.take_calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Resume(_) | Call::TickPeriod(_)))
        .collect()
}

#[test]
fn unirate_requests_leave_one_interval_apart_resumed_by_ticks_that_come_when_due() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, unirate(1), r#"{"rules_of":"destination"}"#);
    let (_a, first) = ask(&mut w, 1);
    let (_b, second) = ask(&mut w, 2);
    let (_c, third) = ask(&mut w, 3);
    assert_eq!(
        (first, second, third),
        (Verdict::Forward, Verdict::Wait, Verdict::Wait)
    );
    assert_eq!(
        pacing(&host),
        vec![Call::TickPeriod(Duration::from_millis(100))],
        "the first request queued points the timer at its turn"
    );
    assert_eq!(w.counters.pending(Counter::RateLimitQueued), 2);
    assert_eq!(w.counters.pending(Counter::RateLimitQueueWaitMs), 300);
    host.set_now(START + 100);
    w.on_tick();
    assert_eq!(
        pacing(&host),
        vec![Call::Resume(2)],
        "the next turn is 100 ms on"
    );
    host.set_now(START + 150);
    w.on_tick();
    assert_eq!(
        pacing(&host),
        vec![Call::TickPeriod(Duration::from_millis(50))],
        "nothing due: the timer is pointed at the next turn"
    );
    host.set_now(START + 200);
    w.on_tick();
    assert_eq!(
        pacing(&host),
        vec![Call::Resume(3), Call::TickPeriod(NORMAL_TICK)],
        "the queue is empty: the timer goes back to its normal period"
    );
}

#[test]
fn early_ticks_only_resume_and_leave_the_leaders_work_to_the_full_ones() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, unirate(1), r#"{"rules_of":"destination"}"#);
    w.on_tick();
    host.take_calls();
    let _held: Vec<(Exchange, Verdict)> = (1..=4).map(|id| ask(&mut w, id)).collect();
    host.take_calls();
    host.set_now(START + 100);
    w.on_tick();
    let calls = host.take_calls();
    assert_eq!(
        calls,
        vec![Call::Now, Call::Resume(2)],
        "a tick 100 ms after the last full one resumes and does nothing else"
    );
}

#[test]
fn a_request_whose_turn_is_beyond_max_queue_delay_is_answered_429() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, unirate(1), r#"{"rules_of":"destination"}"#);
    // Turns at 0, 100, …, 1000 ms fit in the 1 s bound; the 12th would wait 1100 ms.
    let held: Vec<(Exchange, Verdict)> = (1..=11).map(|id| ask(&mut w, id)).collect();
    assert!(held
        .iter()
        .all(|(_, v)| *v != Verdict::Forward || held[0].1 == *v));
    let (_, over) = ask(&mut w, 12);
    let Verdict::Reply(r) = over else {
        panic!("{over:?}");
    };
    assert_eq!((r.status, r.reason), (429, "rate-limited"));
    assert!(r.body.contains("`paced`"), "{}", r.body);
    assert!(r.headers.contains(&(
        "x-polaris-rate-limit".to_string(),
        "limited/paced".to_string()
    )));
}

#[test]
fn a_client_that_left_while_queued_does_not_hold_up_the_queue() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, unirate(1), r#"{"rules_of":"destination"}"#);
    let (_a, _) = ask(&mut w, 1);
    let (mut b, _) = ask(&mut w, 2);
    let (_c, _) = ask(&mut w, 3);
    let (_d, _) = ask(&mut w, 4);
    // Stream 2 ends (its client reset it) and drops out of the queue; stream 3 is gone
    // without the filter hearing of it yet: its resume fails.
    b.on_end(&mut w);
    assert_eq!(w.counters.pending(Counter::RateLimitQueueDropped), 1);
    host.0.borrow_mut().gone.push(3);
    host.take_calls();
    host.set_now(START + 300);
    w.on_tick();
    assert_eq!(
        pacing(&host),
        vec![
            Call::Resume(3),
            Call::Resume(4),
            Call::TickPeriod(NORMAL_TICK)
        ]
    );
    // Counted after the tick's metrics hand-over: the failed resume, and stream 4.
    assert_eq!(w.counters.pending(Counter::RateLimitQueueDropped), 1);
    assert_eq!(w.counters.pending(Counter::RateLimitResumed), 1);
}

#[test]
fn concurrency_slots_run_out_and_come_back_when_streams_end() {
    let host = FakeHost::new(START);
    let rules = vec![rule(
        "two-at-once",
        5,
        "REJECT",
        proto::rule::Resource::Concurrency,
    )];
    let mut w = worker(
        &host,
        rules,
        r#"{"rules_of":"destination","concurrency":{"two-at-once":2},"bodies":{"two-at-once":"too busy\n"}}"#,
    );
    let (mut a, va) = ask(&mut w, 1);
    let (_b, vb) = ask(&mut w, 2);
    let (_c, vc) = ask(&mut w, 3);
    assert_eq!((va, vb), (Verdict::Forward, Verdict::Forward));
    let Verdict::Reply(r) = vc else {
        panic!("{vc:?}");
    };
    assert_eq!((r.status, r.body.as_str()), (429, "too busy\n"));
    host.take_calls();
    a.on_end(&mut w);
    let key = "polaris-wasm/cc/default/echo/id-two-at-once/".to_string();
    let released: Vec<Call> = host
        .take_calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Set { key: k, .. } if k.starts_with(&key)))
        .collect();
    assert_eq!(released.len(), 1, "one CAS write gives the slot back");
    let (_d, vd) = ask(&mut w, 4);
    assert_eq!(vd, Verdict::Forward);
}

#[test]
fn a_limited_request_gives_back_the_slot_another_rule_gave_it() {
    let host = FakeHost::new(START);
    let mut conc = rule(
        "one-at-once",
        1,
        "REJECT",
        proto::rule::Resource::Concurrency,
    );
    conc.priority = Some(0);
    let mut qps = rule("one-per-second", 1, "REJECT", proto::rule::Resource::Qps);
    qps.priority = Some(1);
    let mut w = worker(&host, vec![conc, qps], r#"{"rules_of":"destination"}"#);
    let (mut a, va) = ask(&mut w, 1);
    assert_eq!(va, Verdict::Forward);
    a.on_end(&mut w);
    // The slot is free, but the second's QPS window is used up: limited, slot given back.
    let (_b, vb) = ask(&mut w, 2);
    assert!(matches!(vb, Verdict::Reply(ref r) if r.body.contains("one-per-second")));
    host.set_now(START + 1000);
    let (_c, vc) = ask(&mut w, 3);
    assert_eq!(vc, Verdict::Forward, "the limited request held no slot");
}

#[test]
fn every_rule_gets_allowed_and_limited_metrics_of_its_own() {
    let host = FakeHost::new(START);
    let rules = vec![rule(
        "two-per-second",
        2,
        "REJECT",
        proto::rule::Resource::Qps,
    )];
    let mut w = worker(&host, rules, r#"{"rules_of":"destination"}"#);
    let _: Vec<(Exchange, Verdict)> = (1..=3).map(|id| ask(&mut w, id)).collect();
    let defined: Vec<String> = host
        .take_calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::DefineMetric(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(
        defined,
        vec![
            "polaris_wasm.rate_limit.default.echo.two-per-second.allowed",
            "polaris_wasm.rate_limit.default.echo.two-per-second.limited",
            "polaris_wasm.rate_limit.default.echo.two-per-second.dry_run_limited",
        ]
    );
    w.on_tick();
    let added: Vec<u64> = host
        .take_calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::AddMetric { n, .. } => Some(n),
            _ => None,
        })
        .collect();
    assert!(added.contains(&2) && added.contains(&1), "{added:?}");
}

#[test]
fn the_trace_names_the_unirate_turn_a_forwarded_request_waited_for() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, unirate(1), r#"{"rules_of":"destination"}"#);
    let (_a, _) = ask(&mut w, 1);
    let (mut b, _) = ask(&mut w, 2);
    let mut stream = FakeStream::default();
    b.on_response(&mut w, &mut stream);
    assert!(stream.response_headers.contains(&(
        "x-polaris-rate-limit".to_string(),
        "queued/paced/100ms".to_string()
    )));
}

#[test]
fn a_dry_run_unirate_rule_never_queues_but_counts_what_it_would_have_refused() {
    let host = FakeHost::new(START);
    let mut w = worker(
        &host,
        unirate(1),
        r#"{"rules_of":"destination","dry_run":["paced"]}"#,
    );
    let verdicts: Vec<Verdict> = (1..=13).map(|id| ask(&mut w, id).1).collect();
    assert!(
        verdicts.iter().all(|v| *v == Verdict::Forward),
        "{verdicts:?}"
    );
    assert!(
        pacing(&host).is_empty(),
        "nothing paused, the timer untouched"
    );
    assert_eq!(w.counters.pending(Counter::RateLimitDryRun), 2);
}

#[test]
fn held_tokens_are_spent_without_the_clock_until_the_timer_marks_their_window_end() {
    // 1000 per second: a worker takes 10 tokens at a time.
    let host = FakeHost::new(START + 700);
    let big = rule("big", 1000, "REJECT", proto::rule::Resource::Qps);
    let mut w = worker(&host, vec![big], r#"{"rules_of":"destination"}"#);
    let reads = |host: &FakeHost| {
        host.take_calls()
            .iter()
            .filter(|c| **c == Call::Now)
            .count()
    };
    assert_eq!(ask(&mut w, 1).1, Verdict::Forward);
    let calls = host.take_calls();
    assert_eq!(
        calls.iter().filter(|c| **c == Call::Now).count(),
        1,
        "the first request reads the clock to take a grant: {calls:?}"
    );
    assert!(
        calls.contains(&Call::TickPeriod(Duration::from_millis(300))),
        "the timer is pointed at the window's end: {calls:?}"
    );
    for id in 2..=5 {
        assert_eq!(ask(&mut w, id).1, Verdict::Forward);
    }
    assert_eq!(reads(&host), 0, "held tokens are spent without the clock");
    host.set_now(START + 1000);
    w.on_tick();
    host.take_calls();
    assert_eq!(ask(&mut w, 6).1, Verdict::Forward);
    assert_eq!(
        reads(&host),
        1,
        "the window ended: its five tokens left are dropped and the next request reads the clock"
    );
    let label = crate::lb::murmur3::murmur3_64(b"", 0);
    let key = format!("polaris-wasm/rl/default/echo/id-big/1000/{label:016x}");
    let window = crate::limit::Window::decode(host.stored(&key).as_deref());
    assert_eq!(
        (window.start, window.used),
        (START + 1000, 10),
        "the grant came from the new window"
    );
}

#[test]
fn a_host_with_a_cheap_clock_reads_it_for_every_counted_request_and_keeps_its_timer() {
    let host = FakeHost::new(START + 700);
    host.0.borrow_mut().cheap_clock = true;
    let big = rule("big", 1000, "REJECT", proto::rule::Resource::Qps);
    let mut w = worker(&host, vec![big], r#"{"rules_of":"destination"}"#);
    for id in 1..=5 {
        assert_eq!(ask(&mut w, id).1, Verdict::Forward);
    }
    let calls = host.take_calls();
    assert_eq!(
        calls.iter().filter(|c| **c == Call::Now).count(),
        5,
        "one clock read per request, as the native build's costs ~25 ns: {calls:?}"
    );
    assert!(
        !calls.iter().any(|c| matches!(c, Call::TickPeriod(_))),
        "no timer for window ends: {calls:?}"
    );
}
