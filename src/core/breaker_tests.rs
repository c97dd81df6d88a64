//! Circuit breaking in the core against the fake host: what requests and responses ask of the
//! host, and how workers sharing one store agree on one state.

use prost::Message;

use super::fake::{Call, FakeHost, FakeStream};
use super::{Counter, Exchange, Verdict, Worker};
use crate::breaker::rule::tests::raw_rule;
use crate::config::Config;
use crate::model::{Kind, ServiceKey};
use crate::polaris::proto;
use crate::shared;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const START: u64 = 1_000_000;
const BREAKERS: &str = r#","circuit_breaker":{}"#;

fn echo() -> ServiceKey {
    ServiceKey::new("default", "echo")
}

fn worker(host: &FakeHost, extra: &str) -> Worker<FakeHost> {
    let json = format!(r#"{{"polaris_cluster":"polaris_grpc","refresh_interval":"1s"{extra}}}"#);
    let w = Worker::new(host.clone(), Config::parse(json.as_bytes()).unwrap(), 7).unwrap();
    host.take_calls();
    w
}

/// An answer of `kind` about echo at revision r1 (the core tests' builder).
fn response(kind: Kind) -> proto::DiscoverResponse {
    super::tests::response(kind, 200_000, "r1")
}

fn instances(ports: &[u32]) -> Vec<u8> {
    super::tests::instances("r1", ports)
}

fn breakers(rules: Vec<proto::CircuitBreakerRule>) -> Vec<u8> {
    let mut r = response(Kind::CircuitBreaker);
    r.circuit_breaker = Some(proto::CircuitBreaker {
        rules,
        ..Default::default()
    });
    r.encode_to_vec()
}

/// An INSTANCE rule: 5xx, `n` consecutive failures, sleep `sleep` s, `probes` probes.
fn instance_rule(n: u32, sleep: u32, probes: u32) -> proto::CircuitBreakerRule {
    let mut r = raw_rule("cb", proto::Level::Instance, "echo");
    r.trigger_condition[0].error_count = n;
    r.recover_condition = Some(proto::RecoverCondition {
        sleep_window: sleep,
        consecutive_success: probes,
    });
    r
}

/// Shared data as a leader leaves it after discovering echo with these breaker rules.
fn seed(host: &FakeHost, ports: &[u32], rules: Vec<proto::CircuitBreakerRule>) {
    host.put(
        &shared::resource_key(Kind::Instances, &echo()),
        &instances(ports),
    );
    let no_routing = response(Kind::Routing).encode_to_vec();
    host.put(&shared::resource_key(Kind::Routing, &echo()), &no_routing);
    host.put(
        &shared::resource_key(Kind::CircuitBreaker, &echo()),
        &breakers(rules),
    );
    host.put(shared::WATCH_KEY, b"default/echo\n");
}

/// One request and, when it was forwarded, its response (`status`, Envoy's `code_details`).
fn exchange(
    w: &mut Worker<FakeHost>,
    headers: &[(&str, &str)],
    status: u32,
    details: &str,
) -> (Verdict, FakeStream) {
    let mut stream = FakeStream::with(headers);
    let mut ex = Exchange::default();
    let verdict = ex.on_request(w, &mut stream);
    if verdict == Verdict::Forward {
        stream.respond(status, details);
        ex.on_response(w, &mut stream);
    }
    (verdict, stream)
}

fn upstream(stream: &FakeStream) -> Option<&str> {
    stream.header("x-polaris-upstream")
}

const ECHO: &[(&str, &str)] = &[(":authority", "echo")];

fn writes_of(calls: &[Call], key: &str) -> usize {
    calls
        .iter()
        .filter(|c| matches!(c, Call::Set { key: k, .. } if k == key))
        .count()
}

#[test]
fn a_success_in_the_initial_state_reads_the_state_and_the_status_and_nothing_else() {
    let host = FakeHost::new(START);
    seed(&host, &[8080], vec![instance_rule(5, 3, 1)]);
    let mut w = worker(&host, BREAKERS);
    exchange(&mut w, ECHO, 200, "via_upstream");
    host.take_calls();

    let (verdict, stream) = exchange(&mut w, ECHO, 200, "via_upstream");
    assert_eq!(verdict, Verdict::Forward);
    assert_eq!(
        stream.calls,
        vec![
            Call::ReadHeader(":authority".into()),
            Call::WriteHeader("x-polaris-upstream".into(), "127.0.0.1:8080".into()),
            Call::ReadResponseHeader(":status".into()),
        ],
        "a 2xx needs no code_details"
    );
    assert_eq!(
        host.take_calls(),
        vec![Call::Get(shared::breaker_key(&echo()))],
        "one shared read per request; no clock, no write"
    );
}

#[test]
fn a_service_without_breaker_rules_pays_nothing_on_either_path() {
    let host = FakeHost::new(START);
    seed(&host, &[8080], Vec::new());
    let mut w = worker(&host, r#","circuit_breaker":{"default_rule":false}"#);
    exchange(&mut w, ECHO, 500, "via_upstream");
    host.take_calls();
    let (_, stream) = exchange(&mut w, ECHO, 500, "via_upstream");
    assert!(!stream
        .calls
        .iter()
        .any(|c| matches!(c, Call::ReadResponseHeader(_))));
    assert_eq!(host.take_calls(), vec![]);
}

#[test]
fn consecutive_failures_open_the_instance_and_the_others_carry_the_traffic() {
    let host = FakeHost::new(START);
    seed(&host, &[1, 2], vec![instance_rule(3, 5, 1)]);
    let mut w = worker(&host, BREAKERS);
    let mut failures_at_1 = 0;
    for _ in 0..200 {
        let mut stream = FakeStream::with(ECHO);
        let mut ex = Exchange::default();
        ex.on_request(&mut w, &mut stream);
        let status = if upstream(&stream) == Some("127.0.0.1:1") {
            failures_at_1 += 1;
            500
        } else {
            200
        };
        stream.respond(status, "via_upstream");
        ex.on_response(&mut w, &mut stream);
    }
    assert_eq!(
        failures_at_1, 3,
        "exactly the three failures that opened it"
    );
    assert_eq!(w.counters().pending(Counter::BreakerInstanceOpen), 1);
}

#[test]
fn a_reset_counts_as_a_failure_and_an_upstream_503_under_an_exact_500_rule_does_not() {
    let host = FakeHost::new(START);
    let mut rule = instance_rule(2, 5, 1);
    rule.error_conditions[0].condition = Some(proto::MatchString {
        r#type: proto::match_string::MatchStringType::Exact as i32,
        value: Some("500".into()),
        value_type: 0,
    });
    seed(&host, &[1], vec![rule]);
    let mut w = worker(&host, BREAKERS);
    exchange(&mut w, ECHO, 503, "via_upstream");
    exchange(&mut w, ECHO, 503, "via_upstream");
    assert_eq!(w.counters().pending(Counter::BreakerInstanceOpen), 0);
    let reset = "upstream_reset_before_response_started{remote_connection_failure}";
    let (_, stream) = exchange(&mut w, ECHO, 503, reset);
    assert!(stream.calls.contains(&Call::StreamProperty(vec![
        "response".into(),
        "code_details".into()
    ])));
    exchange(&mut w, ECHO, 503, reset);
    assert_eq!(w.counters().pending(Counter::BreakerInstanceOpen), 1);
}

#[test]
fn failures_on_two_workers_add_up_and_the_open_stops_both_at_once() {
    let a_host = FakeHost::new(START);
    seed(&a_host, &[1, 2], vec![instance_rule(4, 5, 1)]);
    let b_host = a_host.sibling();
    let mut a = worker(&a_host, BREAKERS);
    let mut b = worker(&b_host, BREAKERS);
    let mut sent_to_1 = 0;
    // Alternate workers; instance 1 always fails, instance 2 succeeds.
    for n in 0..100 {
        let w = if n % 2 == 0 { &mut a } else { &mut b };
        let mut stream = FakeStream::with(ECHO);
        let mut ex = Exchange::default();
        ex.on_request(w, &mut stream);
        let bad = upstream(&stream) == Some("127.0.0.1:1");
        sent_to_1 += usize::from(bad);
        stream.respond(if bad { 500 } else { 200 }, "via_upstream");
        ex.on_response(w, &mut stream);
    }
    assert_eq!(
        sent_to_1, 4,
        "four failures in a row, whichever worker saw them"
    );
}

#[test]
fn a_success_on_another_worker_resets_the_streak() {
    let a_host = FakeHost::new(START);
    seed(&a_host, &[1], vec![instance_rule(3, 5, 1)]);
    let b_host = a_host.sibling();
    let mut a = worker(&a_host, BREAKERS);
    let mut b = worker(&b_host, BREAKERS);
    exchange(&mut a, ECHO, 500, "via_upstream");
    exchange(&mut a, ECHO, 500, "via_upstream");
    b_host.take_calls();
    exchange(&mut b, ECHO, 200, "via_upstream");
    assert_eq!(
        writes_of(&b_host.take_calls(), &shared::breaker_key(&echo())),
        1,
        "the success clears the streak it saw"
    );
    exchange(&mut a, ECHO, 500, "via_upstream");
    exchange(&mut a, ECHO, 500, "via_upstream");
    assert_eq!(a.counters().pending(Counter::BreakerInstanceOpen), 0);
    exchange(&mut a, ECHO, 500, "via_upstream");
    assert_eq!(a.counters().pending(Counter::BreakerInstanceOpen), 1);
}

#[test]
fn after_the_sleep_window_half_open_admits_the_probes_and_successes_close_it() {
    let host = FakeHost::new(START);
    seed(&host, &[1, 2], vec![instance_rule(1, 3, 2)]);
    let mut w = worker(&host, BREAKERS);
    // Open instance 1 (instance 2 always succeeds).
    while w.counters().pending(Counter::BreakerInstanceOpen) == 0 {
        let mut stream = FakeStream::with(ECHO);
        let mut ex = Exchange::default();
        ex.on_request(&mut w, &mut stream);
        let bad = upstream(&stream) == Some("127.0.0.1:1");
        stream.respond(if bad { 500 } else { 200 }, "via_upstream");
        ex.on_response(&mut w, &mut stream);
    }
    let count_1 = |w: &mut Worker<FakeHost>, n: usize| {
        (0..n)
            .filter(|_| {
                let (_, s) = exchange(w, ECHO, 200, "via_upstream");
                upstream(&s) == Some("127.0.0.1:1")
            })
            .count()
    };
    host.set_now(START + 2999);
    assert_eq!(count_1(&mut w, 50), 0, "open for the whole sleep window");
    host.set_now(START + 3000);
    // Hold two probes in flight: no third request gets instance 1.
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut stream = FakeStream::with(ECHO);
        let mut ex = Exchange::default();
        ex.on_request(&mut w, &mut stream);
        if upstream(&stream) == Some("127.0.0.1:1") {
            held.push((ex, stream));
        }
    }
    assert_eq!(held.len(), 2, "consecutiveSuccess probes only");
    assert_eq!(w.counters().pending(Counter::BreakerInstanceHalfOpen), 1);
    for (mut ex, mut stream) in held {
        stream.respond(200, "via_upstream");
        ex.on_response(&mut w, &mut stream);
    }
    assert_eq!(w.counters().pending(Counter::BreakerInstanceClose), 1);
    assert!(count_1(&mut w, 100) > 20, "back in the rotation");
}

#[test]
fn when_every_instance_is_open_recover_all_still_sends_to_them() {
    let host = FakeHost::new(START);
    seed(&host, &[1], vec![instance_rule(1, 30, 1)]);
    let mut w = worker(&host, BREAKERS);
    exchange(&mut w, ECHO, 500, "via_upstream");
    assert_eq!(w.counters().pending(Counter::BreakerInstanceOpen), 1);
    let (verdict, stream) = exchange(&mut w, ECHO, 500, "via_upstream");
    assert_eq!(verdict, Verdict::Forward);
    assert_eq!(upstream(&stream), Some("127.0.0.1:1"));
    assert_eq!(w.counters().pending(Counter::RecoverAll), 1);
}

#[test]
fn a_deleted_rule_stops_applying_once_workers_resync() {
    let host = FakeHost::new(START);
    seed(&host, &[1, 2], vec![instance_rule(1, 60, 1)]);
    let mut w = worker(&host, r#","circuit_breaker":{"default_rule":false}"#);
    let opened = (0..20)
        .map(|_| exchange(&mut w, ECHO, 500, "via_upstream"))
        .count();
    assert!(opened > 0);
    assert_eq!(w.counters().pending(Counter::BreakerInstanceOpen), 2);
    let (verdict, _) = exchange(&mut w, ECHO, 200, "via_upstream");
    assert_eq!(verdict, Verdict::Forward, "recover-all");

    // The leader stores the answer without rules and bumps the generation.
    host.put(
        &shared::resource_key(Kind::CircuitBreaker, &echo()),
        &breakers(Vec::new()),
    );
    store_bump(&host);
    w.on_tick();
    let hits: Vec<String> = (0..40)
        .filter_map(|_| {
            let (_, s) = exchange(&mut w, ECHO, 200, "via_upstream");
            upstream(&s).map(str::to_string)
        })
        .collect();
    assert!(hits.iter().any(|h| h == "127.0.0.1:1") && hits.iter().any(|h| h == "127.0.0.1:2"));
    assert_eq!(
        w.counters().pending(Counter::RecoverAll),
        0,
        "none since the tick flushed the counters"
    );
}

fn store_bump(host: &FakeHost) {
    let gen = shared::decode_counter(host.stored(shared::GEN_KEY).as_deref());
    host.put(shared::GEN_KEY, &shared::encode_counter(gen + 1));
}

fn service_rule(fallback: bool) -> proto::CircuitBreakerRule {
    let mut r = raw_rule("svc", proto::Level::Service, "echo");
    r.trigger_condition[0].error_count = 2;
    r.fallback_config = Some(proto::FallbackConfig {
        enable: fallback,
        response: Some(proto::FallbackResponse {
            code: 418,
            headers: vec![proto::fallback_response::MessageHeader {
                key: "x-fallback".into(),
                value: "yes".into(),
            }],
            body: "come back later".into(),
        }),
    });
    r
}

#[test]
fn an_open_service_breaker_answers_with_the_fallback_and_never_forwards() {
    let host = FakeHost::new(START);
    seed(&host, &[1], vec![service_rule(true)]);
    let mut w = worker(&host, BREAKERS);
    exchange(&mut w, ECHO, 500, "via_upstream");
    exchange(&mut w, ECHO, 500, "via_upstream");
    assert_eq!(w.counters().pending(Counter::BreakerServiceOpen), 1);
    let (verdict, stream) = exchange(&mut w, ECHO, 200, "via_upstream");
    let Verdict::Reply(reply) = verdict else {
        panic!("{verdict:?}")
    };
    assert_eq!(
        (reply.status, reply.reason, reply.body.as_str()),
        (418, "circuit-open", "come back later")
    );
    assert_eq!(reply.headers, vec![("x-fallback".into(), "yes".into())]);
    assert_eq!(
        upstream(&stream),
        None,
        "the upstream header is never written"
    );
    assert_eq!(w.counters().pending(Counter::BreakerFallbacks), 1);
}

#[test]
fn without_a_fallback_an_open_breaker_answers_503_naming_service_method_and_rule() {
    let host = FakeHost::new(START);
    let mut method = raw_rule("pay-rule", proto::Level::Method, "echo");
    method.trigger_condition[0].error_count = 1;
    if let Some(d) = method
        .rule_matcher
        .as_mut()
        .and_then(|m| m.destination.as_mut())
    {
        d.method = Some(proto::MatchString {
            r#type: proto::match_string::MatchStringType::Exact as i32,
            value: Some("/pay".into()),
            value_type: 0,
        });
    }
    seed(&host, &[1], vec![method]);
    let mut w = worker(&host, BREAKERS);
    let pay = &[
        (":authority", "echo"),
        (":path", "/pay?x=1"),
        (":method", "GET"),
    ][..];
    let other = &[
        (":authority", "echo"),
        (":path", "/other"),
        (":method", "GET"),
    ][..];
    exchange(&mut w, pay, 500, "via_upstream");
    let (verdict, _) = exchange(&mut w, pay, 200, "via_upstream");
    let Verdict::Reply(reply) = verdict else {
        panic!("{verdict:?}")
    };
    assert_eq!((reply.status, reply.reason), (503, "circuit-open"));
    assert!(
        reply
            .body
            .contains("rule pay-rule is open for service echo in namespace default, method /pay"),
        "{}",
        reply.body
    );
    let (verdict, _) = exchange(&mut w, other, 500, "via_upstream");
    assert_eq!(verdict, Verdict::Forward, "other paths are not broken");
}

#[test]
fn a_dry_run_rule_counts_its_opens_and_ejects_nothing() {
    let host = FakeHost::new(START);
    seed(&host, &[1], vec![instance_rule(2, 30, 1)]);
    let mut w = worker(&host, r#","circuit_breaker":{"dry_run":["cb"]}"#);
    for _ in 0..5 {
        let (verdict, _) = exchange(&mut w, ECHO, 500, "via_upstream");
        assert_eq!(verdict, Verdict::Forward);
    }
    assert_eq!(w.counters().pending(Counter::BreakerDryRunOpen), 1);
    assert_eq!(w.counters().pending(Counter::BreakerInstanceOpen), 0);
    assert_eq!(
        w.counters().pending(Counter::RecoverAll),
        0,
        "never avoided"
    );
}

#[test]
fn the_trace_names_the_breaker_state_that_applied() {
    let host = FakeHost::new(START);
    seed(&host, &[1], vec![instance_rule(5, 30, 1)]);
    let mut w = worker(&host, r#","debug_trace":true,"circuit_breaker":{}"#);
    let (_, stream) = exchange(
        &mut w,
        &[(":authority", "echo"), ("x-polaris-debug", "1")],
        200,
        "via_upstream",
    );
    assert!(stream
        .response_headers
        .contains(&("x-polaris-breaker".into(), "instance=closed/cb".into())));
}

#[test]
fn the_leader_refreshes_breaker_rules_and_a_first_request_does_not_wait_for_them() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, BREAKERS);
    let mut stream = FakeStream::with(ECHO);
    let mut ex = Exchange::default();
    assert_eq!(ex.on_request(&mut w, &mut stream), Verdict::Wait);
    let types: Vec<i32> = discover_types(&host.take_calls());
    assert_eq!(types, vec![1, 3], "INSTANCE and ROUTING only");

    host.put(shared::WATCH_KEY, b"default/echo\n");
    w.on_tick();
    let types = discover_types(&host.take_calls());
    assert!(types.contains(&5), "CIRCUIT_BREAKER refreshed: {types:?}");
}

fn discover_types(calls: &[Call]) -> Vec<i32> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Grpc { message, .. } => proto::DiscoverRequest::decode(message.as_slice())
                .ok()
                .map(|r| r.r#type),
            _ => None,
        })
        .collect()
}

#[test]
fn error_rate_opens_one_interval_after_a_failure_when_the_rate_is_reached() {
    let host = FakeHost::new(START);
    let mut rule = instance_rule(1000, 30, 1);
    rule.trigger_condition = vec![proto::TriggerCondition {
        trigger_type: proto::trigger_condition::TriggerType::ErrorRate as i32,
        error_percent: 50,
        interval: 2,
        minimum_request: 10,
        ..Default::default()
    }];
    seed(&host, &[1], vec![rule]);
    let mut w = worker(&host, BREAKERS);
    w.on_tick(); // takes the lease
    for n in 0..20 {
        exchange(
            &mut w,
            ECHO,
            if n % 10 < 8 { 500 } else { 200 },
            "via_upstream",
        );
    }
    let open = |host: &FakeHost| {
        let table = host
            .stored(&shared::breaker_key(&echo()))
            .unwrap_or_default();
        String::from_utf8_lossy(&table).contains("i 127.0.0.1:1\t")
    };
    w.on_tick();
    assert!(!open(&host), "checked one interval after the first failure");
    host.set_now(START + 2000 + 700);
    w.on_tick();
    assert!(open(&host), "16 of 20 failed");
}

#[test]
fn a_rule_less_breaker_answer_refreshed_again_is_not_rewritten() {
    let host = FakeHost::new(START);
    host.put(shared::WATCH_KEY, b"default/echo\n");
    let mut w = worker(&host, BREAKERS);
    let slot = shared::resource_key(Kind::CircuitBreaker, &echo());
    // The server answers a service without breaker rules in full, with no revision.
    let mut none = response(Kind::CircuitBreaker);
    if let Some(s) = none.service.as_mut() {
        s.revision = None;
    }
    let none = none.encode_to_vec();
    for round in 0..2u64 {
        host.set_now(START + round * 1000);
        w.on_tick();
        let calls = host.take_calls();
        assert!(
            discover_types(&calls).contains(&5),
            "CIRCUIT_BREAKER refreshed"
        );
        let last = host.0.borrow().next_token;
        w.on_call_result(last, Ok(none.clone()));
        let writes = writes_of(&host.take_calls(), &slot);
        assert_eq!(writes, usize::from(round == 0), "round {round}");
    }
}

fn fault_detectors(rules: Vec<proto::FaultDetectRule>) -> Vec<u8> {
    let mut r = response(Kind::FaultDetector);
    r.fault_detector = Some(proto::FaultDetector {
        rules,
        revision: "f1".into(),
    });
    r.encode_to_vec()
}

fn http_detector() -> proto::FaultDetectRule {
    proto::FaultDetectRule {
        id: "fd".into(),
        name: "hc".into(),
        target_service: Some(proto::fault_detect_rule::DestinationService {
            service: "echo".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        interval: 1,
        timeout: 300,
        protocol: proto::fault_detect_rule::Protocol::Http as i32,
        http_config: Some(proto::HttpProtocolConfig {
            method: "GET".into(),
            url: "/health".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

const PROBING: &str = r#","circuit_breaker":{"probe_cluster":"polaris_probe"}"#;

/// The probe calls among `calls`: (cluster, upstream header).
fn probes(calls: &[Call]) -> Vec<(String, String)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Http {
                cluster, headers, ..
            } => Some((
                cluster.clone(),
                headers
                    .iter()
                    .find(|(k, _)| k == "x-polaris-upstream")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn the_leader_probes_every_instance_when_the_instance_rule_enables_fault_detection() {
    let host = FakeHost::new(START);
    let mut rule = instance_rule(2, 3, 1);
    rule.fault_detect_config = Some(proto::FaultDetectConfig { enable: true });
    seed(&host, &[1, 2], vec![rule]);
    host.put(
        &shared::resource_key(Kind::FaultDetector, &echo()),
        &fault_detectors(vec![http_detector()]),
    );
    let mut w = worker(&host, PROBING);
    w.on_tick();
    let calls = host.take_calls();
    let sent = probes(&calls);
    assert_eq!(
        sent,
        vec![
            ("polaris_probe".to_string(), "127.0.0.1:1".to_string()),
            ("polaris_probe".to_string(), "127.0.0.1:2".to_string())
        ]
    );
    let first = host.0.borrow().next_token - 1;
    let refused = b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
    w.on_http_call_result(first, Some(503), refused);
    w.on_http_call_result(first + 1, Some(200), b"");
    host.set_now(START + 500);
    w.on_tick();
    let calls = host.take_calls();
    assert!(
        discover_types(&calls).contains(&13),
        "FAULT_DETECTOR refreshed"
    );
    assert!(probes(&calls).is_empty(), "not due before the interval");
    host.set_now(START + 1000);
    w.on_tick();
    assert_eq!(probes(&host.take_calls()).len(), 2);
    let next = host.0.borrow().next_token;
    // Instance 1 is dead: the second refused probe opens its breaker, with no user traffic.
    w.on_http_call_result(next - 1, Some(503), refused);
    assert_eq!(w.counters().pending(Counter::BreakerInstanceOpen), 1);
    let (_, stream) = exchange(&mut w, ECHO, 200, "via_upstream");
    assert_eq!(upstream(&stream), Some("127.0.0.1:2"));

    // It answers again: after the sleep window one probe success closes it.
    host.set_now(START + 4000);
    w.on_tick();
    let sent = probes(&host.take_calls());
    let token = host.0.borrow().next_token - (sent.len() as u32) + 1;
    let at_1 = sent.iter().position(|(_, u)| u == "127.0.0.1:1").unwrap() as u32;
    w.on_http_call_result(token + at_1, Some(200), b"");
    assert_eq!(w.counters().pending(Counter::BreakerInstanceClose), 1);
}

#[test]
fn without_a_probe_cluster_or_an_enabling_rule_nothing_is_probed() {
    for (extra, enable) in [(BREAKERS, true), (PROBING, false)] {
        let host = FakeHost::new(START);
        let mut rule = instance_rule(2, 3, 1);
        rule.fault_detect_config = Some(proto::FaultDetectConfig { enable });
        seed(&host, &[1], vec![rule]);
        host.put(
            &shared::resource_key(Kind::FaultDetector, &echo()),
            &fault_detectors(vec![http_detector()]),
        );
        let mut w = worker(&host, extra);
        w.on_tick();
        let calls = host.take_calls();
        assert!(probes(&calls).is_empty());
        assert!(!discover_types(&calls).contains(&13));
    }
}

#[test]
fn the_leader_drops_the_state_of_instances_polaris_no_longer_lists() {
    let host = FakeHost::new(START);
    seed(&host, &[1, 2], vec![instance_rule(1, 60, 1)]);
    let mut w = worker(&host, BREAKERS);
    while w.counters().pending(Counter::BreakerInstanceOpen) == 0 {
        exchange(&mut w, ECHO, 500, "via_upstream");
    }
    let table = || String::from_utf8(host.stored(&shared::breaker_key(&echo())).unwrap()).unwrap();
    assert!(!table().is_empty());
    // Both instances are replaced by a third.
    host.put(&shared::resource_key(Kind::Instances, &echo()), &{
        let mut r = proto::DiscoverResponse::decode(instances(&[3]).as_slice()).unwrap();
        if let Some(s) = r.service.as_mut() {
            s.revision = Some("r2".into());
        }
        r.encode_to_vec()
    });
    store_bump(&host);
    w.on_tick();
    w.on_tick();
    assert_eq!(table(), "", "entries of gone instances dropped");
}

#[test]
fn the_leader_creates_the_state_entry_empty_so_every_write_is_cas_checked() {
    let host = FakeHost::new(START);
    seed(&host, &[1], vec![instance_rule(5, 30, 1)]);
    let mut w = worker(&host, BREAKERS);
    assert_eq!(host.stored(&shared::breaker_key(&echo())), None);
    w.on_tick();
    assert_eq!(
        host.stored(&shared::breaker_key(&echo())).as_deref(),
        Some(&b""[..])
    );
    host.take_calls();
    exchange(&mut w, ECHO, 500, "via_upstream");
    let cas_of_write = host.take_calls().into_iter().find_map(|c| match c {
        Call::Set { key, cas } if key == shared::breaker_key(&echo()) => Some(cas),
        _ => None,
    });
    assert!(matches!(cas_of_write, Some(Some(_))), "{cas_of_write:?}");
}
