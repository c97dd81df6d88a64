//! The provider side against the fake host: which Polaris calls each step makes, from which VM.

use prost::Message;

use super::fake::{Call, FakeHost, FakeStream};
use super::{Exchange, Verdict, Worker};
use crate::config::Config;
use crate::polaris::{proto, CallError};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const START: u64 = 1_000_000;
const RECORD: &str = "polaris-wasm/provider/default/echo/127.0.0.1:10001";

fn config(provider_extra: &str) -> Config {
    let json = format!(
        r#"{{"polaris_cluster":"polaris_grpc","refresh_interval":"1s",
            "provider":{{"service":"echo","port":10001,"ttl":"2s"{provider_extra}}}}}"#
    );
    Config::parse(json.as_bytes()).unwrap()
}

fn worker(host: &FakeHost, provider_extra: &str) -> Worker<FakeHost> {
    let w = Worker::new(host.clone(), config(provider_extra), 7).unwrap();
    host.take_calls();
    w
}

/// `n` VMs of one Envoy (a worker per thread plus the main thread's), sharing one store.
fn envoy(n: usize, provider_extra: &str) -> Vec<(FakeHost, Worker<FakeHost>)> {
    let first = FakeHost::new(START);
    (0..n)
        .map(|i| {
            let host = if i == 0 {
                first.clone()
            } else {
                first.sibling()
            };
            let w = worker(&host, provider_extra);
            (host, w)
        })
        .collect()
}

const HOST: &str = r#","host":"127.0.0.1""#;

/// The provider calls among `calls`: (method, decoded Instance when it is one).
fn provider_calls(calls: &[Call]) -> Vec<(String, Option<proto::Instance>)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Grpc { method, message } if !method.ends_with("/Discover") => {
                let name = method.trim_start_matches("v1.PolarisGRPC/").to_string();
                let instance = (name != "ReportClient")
                    .then(|| proto::Instance::decode(message.as_slice()).unwrap());
                Some((name, instance))
            }
            _ => None,
        })
        .collect()
}

fn methods(calls: &[Call]) -> Vec<String> {
    provider_calls(calls).into_iter().map(|(m, _)| m).collect()
}

fn answer(code: u32, id: &str) -> Vec<u8> {
    proto::Response {
        code: Some(code),
        instance: (!id.is_empty()).then(|| proto::Instance {
            id: Some(id.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn at(vms: &[(FakeHost, Worker<FakeHost>)], now: u64) {
    for (h, _) in vms {
        h.set_now(now);
    }
}

/// Ticks every VM at `now`; returns the provider calls each made.
fn tick_all(vms: &mut [(FakeHost, Worker<FakeHost>)], now: u64) -> Vec<Vec<String>> {
    at(vms, now);
    vms.iter_mut()
        .map(|(h, w)| {
            w.on_tick();
            methods(&h.take_calls())
        })
        .collect()
}

fn last_token(host: &FakeHost) -> u32 {
    host.0.borrow().next_token
}

/// Registers through VM 0 (the first to tick holds the lease) and answers every call OK.
fn registered(vms: &mut [(FakeHost, Worker<FakeHost>)]) {
    let made = tick_all(vms, START);
    assert_eq!(made[0], vec!["RegisterInstance", "ReportClient"]);
    let (h, w) = &mut vms[0];
    let report = last_token(h);
    w.on_call_result(report - 1, Ok(answer(200_000, "i-echo")));
    w.on_call_result(report, Ok(answer(200_000, "")));
    h.take_calls();
}

#[test]
fn an_envoy_registers_its_instance_once_and_reports_itself() {
    let mut vms = envoy(3, HOST);
    let made = tick_all(&mut vms, START);
    assert_eq!(
        made,
        vec![
            vec!["RegisterInstance".to_string(), "ReportClient".to_string()],
            vec![],
            vec![]
        ],
        "one registration for three VMs"
    );
    let (h, _) = &vms[0];
    h.take_calls();
    let more = tick_all(&mut vms, START + 500);
    assert_eq!(
        more,
        vec![Vec::<String>::new(); 3],
        "nothing while it is out"
    );
}

#[test]
fn the_registration_carries_the_configured_instance() {
    let vms = envoy(
        1,
        r#","host":"127.0.0.1","metadata":{"env":"gray"},"location":{"zone":"z1"},"version":"v2""#,
    );
    let (h, mut w) = vms.into_iter().next().unwrap();
    w.on_tick();
    let calls = provider_calls(&h.take_calls());
    let (method, Some(m)) = &calls[0] else {
        panic!("{calls:?}")
    };
    assert_eq!(method, "RegisterInstance");
    assert_eq!(m.service.as_deref(), Some("echo"));
    assert_eq!(m.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(m.port, Some(10001));
    assert_eq!(m.version.as_deref(), Some("v2"));
    assert_eq!(m.metadata.get("env").map(String::as_str), Some("gray"));
    assert_eq!(m.location.as_ref().unwrap().zone.as_deref(), Some("z1"));
    assert_eq!(m.health_check.unwrap().heartbeat.unwrap().ttl, Some(2));
}

#[test]
fn heartbeats_go_out_every_ttl_naming_the_instance_id() {
    let mut vms = envoy(2, HOST);
    registered(&mut vms);
    assert_eq!(
        tick_all(&mut vms, START + 1_999),
        vec![Vec::<String>::new(); 2]
    );
    let made = tick_all(&mut vms, START + 2_000);
    assert_eq!(made, vec![vec!["Heartbeat".to_string()], vec![]]);
    at(&vms, START + 2_000);
    let (h, w) = &mut vms[0];
    w.on_call_result(last_token(h), Ok(answer(200_000, "")));
    h.take_calls();
    // The ticks in between (a tick period apart) send nothing; the one a TTL later does.
    assert_eq!(
        tick_all(&mut vms, START + 3_000),
        vec![Vec::<String>::new(); 2]
    );
    at(&vms, START + 4_000);
    let (h, w) = &mut vms[0];
    w.on_tick();
    let calls = provider_calls(&h.take_calls());
    assert_eq!(calls.len(), 1);
    let (method, Some(m)) = &calls[0] else {
        panic!("{calls:?}")
    };
    assert_eq!(method, "Heartbeat");
    assert_eq!(m.id.as_deref(), Some("i-echo"));
    assert_eq!(m.health_check, None);
}

#[test]
fn a_heartbeat_answered_after_its_tick_still_goes_out_a_ttl_after_the_last() {
    let mut vms = envoy(1, HOST);
    registered(&mut vms);
    tick_all(&mut vms, START + 2_000);
    at(&vms, START + 2_005);
    let (h, w) = &mut vms[0];
    w.on_call_result(last_token(h), Ok(answer(200_000, "")));
    h.take_calls();
    assert_eq!(
        tick_all(&mut vms, START + 3_000),
        vec![Vec::<String>::new()]
    );
    assert_eq!(
        tick_all(&mut vms, START + 4_000),
        vec![vec!["Heartbeat".to_string()]]
    );
}

#[test]
fn a_heartbeat_answered_not_found_registers_again_at_once() {
    let mut vms = envoy(1, HOST);
    registered(&mut vms);
    tick_all(&mut vms, START + 2_000);
    let (h, w) = &mut vms[0];
    w.on_call_result(last_token(h), Ok(answer(400_202, "")));
    assert_eq!(
        w.counters()
            .pending(super::Counter::ProviderReregistrations),
        1
    );
    h.take_calls();
    assert_eq!(
        tick_all(&mut vms, START + 2_000),
        vec![vec!["RegisterInstance".to_string()]]
    );
}

#[test]
fn a_failed_registration_is_retried_with_backoff() {
    let mut vms = envoy(1, HOST);
    tick_all(&mut vms, START);
    let (h, w) = &mut vms[0];
    w.on_call_result(
        last_token(h) - 1,
        Err(CallError {
            status: 14,
            message: Some("unavailable".into()),
        }),
    );
    h.take_calls();
    assert_eq!(tick_all(&mut vms, START + 499), vec![Vec::<String>::new()]);
    assert_eq!(
        tick_all(&mut vms, START + 500),
        vec![vec!["RegisterInstance".to_string()]]
    );
}

#[test]
fn a_lease_takeover_continues_the_heartbeats() {
    let mut vms = envoy(2, HOST);
    registered(&mut vms);
    // VM 0 stops ticking; VM 1 keeps its membership fresh and takes over when the lease ends.
    let (h1, w1) = &mut vms[1];
    h1.set_now(START + 1_000);
    w1.on_tick();
    h1.set_now(START + 2_000);
    w1.on_tick();
    assert_eq!(methods(&h1.take_calls()), vec!["Heartbeat"]);
}

fn admin_request(
    w: &mut Worker<FakeHost>,
    path: &str,
    source: &str,
    destination: &str,
) -> (Exchange, Verdict, FakeStream) {
    let mut stream = FakeStream::with(&[(":path", path), (":method", "POST")]);
    stream.source = Some(source.into());
    stream.destination = Some(destination.into());
    let mut exchange = Exchange::default();
    let verdict = exchange.on_request(w, &mut stream);
    (exchange, verdict, stream)
}

#[test]
fn the_offline_trigger_isolates_deregisters_replies_and_stops_heartbeats() {
    let mut vms = envoy(2, HOST);
    registered(&mut vms);
    // The trigger arrives on the other VM's worker.
    let (h, w) = &mut vms[1];
    let (mut exchange, verdict, mut stream) = admin_request(
        w,
        "/polaris-wasm/offline",
        "127.0.0.1:40000",
        "127.0.0.1:10001",
    );
    assert_eq!(verdict, Verdict::Wait);
    let calls = provider_calls(&h.take_calls());
    let [(method, Some(m))] = calls.as_slice() else {
        panic!("{calls:?}")
    };
    assert_eq!(method, "RegisterInstance");
    assert_eq!(m.isolate, Some(true), "isolated first");
    let isolated = exchange.on_call_result(w, &mut stream, last_token(h), Ok(answer(200_000, "")));
    assert_eq!(isolated, None, "still waiting for the deregistration");
    let calls = provider_calls(&h.take_calls());
    let [(method, Some(m))] = calls.as_slice() else {
        panic!("{calls:?}")
    };
    assert_eq!(method, "DeregisterInstance");
    assert_eq!(m.id.as_deref(), Some("i-echo"));
    let reply = exchange.on_call_result(w, &mut stream, last_token(h), Ok(answer(200_000, "")));
    let Some(Verdict::Reply(reply)) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!((reply.status, reply.reason), (200, "offline"));
    assert!(
        reply.body.contains("isolated, then deregistered"),
        "{}",
        reply.body
    );
    assert_eq!(
        tick_all(&mut vms, START + 60_000),
        vec![Vec::<String>::new(); 2],
        "no heartbeat, no re-registration"
    );

    // Twice is harmless: the same two calls, the same answer.
    let (h, w) = &mut vms[0];
    let (mut exchange, verdict, mut stream) =
        admin_request(w, "/polaris-wasm/offline", "[::1]:1", "[::1]:10001");
    assert_eq!(verdict, Verdict::Wait);
    exchange.on_call_result(w, &mut stream, last_token(h), Ok(answer(200_000, "")));
    assert_eq!(
        methods(&h.take_calls()),
        vec!["RegisterInstance", "DeregisterInstance"]
    );
    let reply = exchange.on_call_result(w, &mut stream, last_token(h), Ok(answer(200_000, "")));
    assert!(matches!(reply, Some(Verdict::Reply(r)) if r.status == 200));
}

#[test]
fn a_failed_offline_deregistration_says_so() {
    let mut vms = envoy(1, HOST);
    registered(&mut vms);
    let (h, w) = &mut vms[0];
    let (mut exchange, _, mut stream) =
        admin_request(w, "/polaris-wasm/offline?x=1", "127.0.0.1:1", "127.0.0.1:2");
    let down = || {
        Err(CallError {
            status: 14,
            message: None,
        })
    };
    assert_eq!(
        exchange.on_call_result(w, &mut stream, last_token(h), down()),
        None,
        "a failed isolation still deregisters"
    );
    let Some(Verdict::Reply(reply)) =
        exchange.on_call_result(w, &mut stream, last_token(h), down())
    else {
        panic!()
    };
    assert_eq!((reply.status, reply.reason), (502, "offline-failed"));
    assert!(reply.body.contains("gRPC status 14"), "{}", reply.body);
}

#[test]
fn the_trigger_is_refused_unless_both_ends_are_loopback() {
    let mut vms = envoy(1, HOST);
    registered(&mut vms);
    let (h, w) = &mut vms[0];
    for (source, destination) in [
        ("10.0.0.9:5555", "10.0.0.1:10001"),
        // x-forwarded-for can make the source read 127.0.0.1; the connection's local address
        // still says the request came from elsewhere.
        ("127.0.0.1:5555", "10.0.0.1:10001"),
        ("10.0.0.9:5555", "127.0.0.1:10001"),
    ] {
        for path in ["/polaris-wasm/offline", "/polaris-wasm/status"] {
            let (_, verdict, _) = admin_request(w, path, source, destination);
            let Verdict::Reply(reply) = verdict else {
                panic!("{verdict:?}")
            };
            assert_eq!((reply.status, reply.reason), (403, "not-local"));
        }
    }
    assert_eq!(
        methods(&h.take_calls()),
        Vec::<String>::new(),
        "nothing sent"
    );
    assert_eq!(
        w.counters().pending(super::Counter::ProviderAdminRefused),
        6
    );
}

#[test]
fn other_requests_pass_to_the_local_service_without_a_pick_header() {
    let mut vms = envoy(1, HOST);
    let (h, w) = &mut vms[0];
    let mut stream = FakeStream::with(&[
        (":path", "/orders/1"),
        (":authority", "echo"),
        ("x-polaris-upstream", "10.9.9.9:22"),
    ]);
    let verdict = Exchange::default().on_request(w, &mut stream);
    assert_eq!(verdict, Verdict::Forward);
    assert_eq!(
        stream.calls,
        vec![
            Call::ReadHeader(":path".into()),
            Call::RemoveHeader("x-polaris-upstream".into())
        ]
    );
    assert_eq!(stream.header("x-polaris-upstream"), None);
    assert!(h.take_effects().is_empty(), "no shared data or call");
}

#[test]
fn status_says_whether_the_instance_is_registered() {
    let mut vms = envoy(1, HOST);
    let (_, w) = &mut vms[0];
    let (_, verdict, _) = admin_request(w, "/polaris-wasm/status", "127.0.0.1:1", "127.0.0.1:2");
    let Verdict::Reply(r) = verdict else { panic!() };
    assert_eq!(r.status, 405, "POST is not for status");
    registered(&mut vms);
    let (_, w) = &mut vms[0];
    let mut stream = FakeStream::with(&[(":path", "/polaris-wasm/status"), (":method", "GET")]);
    stream.source = Some("127.0.0.1:1".into());
    stream.destination = Some("127.0.0.1:2".into());
    let Verdict::Reply(r) = Exchange::default().on_request(w, &mut stream) else {
        panic!()
    };
    let status: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(status["state"], "registered");
    assert_eq!(status["instance"], "127.0.0.1:10001");
    assert_eq!(status["id"], "i-echo");
    assert_eq!(status["registrations"], 1);
}

#[test]
fn the_last_root_context_to_finish_deregisters_once_and_waits_for_the_answer() {
    let mut vms = envoy(3, HOST);
    registered(&mut vms);
    tick_all(&mut vms, START + 100);
    let mut sent = Vec::new();
    let mut finished = Vec::new();
    for (h, w) in vms.iter_mut() {
        finished.push(w.on_done());
        sent.push(methods(&h.take_calls()));
    }
    assert_eq!(finished, vec![true, true, false]);
    assert_eq!(
        sent,
        vec![vec![], vec![], vec!["RegisterInstance".to_string()]],
        "the last one isolates the instance first"
    );
    let (h, w) = &mut vms[2];
    let isolate = last_token(h);
    w.on_call_result(isolate, Ok(answer(200_000, "")));
    assert!(!w.done_leaving(isolate));
    assert_eq!(methods(&h.take_calls()), vec!["DeregisterInstance"]);
    let token = last_token(h);
    w.on_call_result(token, Ok(answer(200_000, "")));
    assert!(w.done_leaving(token));
    w.on_tick();
    assert!(
        methods(&h.take_calls()).is_empty(),
        "a finished context sends nothing"
    );
    assert!(h
        .stored(RECORD)
        .is_some_and(|r| String::from_utf8_lossy(&r).contains("\"phase\":\"unregistered\"")));
}

#[test]
fn a_listener_update_with_the_same_instance_deregisters_nothing() {
    let mut vms = envoy(2, HOST);
    registered(&mut vms);
    // The new configuration's VMs join (same store) before the old ones finish draining.
    let newer = vms[0].0.sibling();
    newer.set_now(START + 100);
    let mut new_worker = worker(&newer, HOST);
    new_worker.on_tick();
    for (h, w) in vms.iter_mut() {
        assert!(w.on_done());
        assert!(methods(&h.take_calls()).is_empty());
    }
    // ... and carry on heartbeating once the old lease is gone.
    newer.set_now(START + 2_100);
    new_worker.on_tick();
    assert_eq!(methods(&newer.take_calls()), vec!["Heartbeat"]);
}

#[test]
fn a_changed_instance_is_registered_again_by_the_new_configuration() {
    let mut vms = envoy(1, HOST);
    registered(&mut vms);
    let newer = vms[0].0.sibling();
    newer.set_now(START + 100);
    let mut new_worker = worker(&newer, r#","host":"127.0.0.1","weight":50"#);
    new_worker.on_tick();
    let (h, w) = &mut vms[0];
    h.set_now(START + 200);
    w.on_tick();
    assert!(
        methods(&h.take_calls()).is_empty(),
        "the old one stops leading"
    );
    newer.set_now(START + 300);
    new_worker.on_tick();
    let calls = provider_calls(&newer.take_calls());
    let (method, Some(m)) = &calls[0] else {
        panic!("{calls:?}")
    };
    assert_eq!(method, "RegisterInstance");
    assert_eq!(m.weight, Some(50));
}

#[test]
fn without_a_host_the_node_metadata_instance_ip_is_registered() {
    let host = FakeHost::new(START);
    host.0.borrow_mut().node = Some(super::node::encode_for_test(
        ("r1", "z9"),
        Some("10.1.2.3,fd00::3"),
        40,
    ));
    let mut w = worker(&host, "");
    w.on_tick();
    let calls = provider_calls(&host.0.borrow().calls);
    let (method, Some(m)) = &calls[0] else {
        panic!("{calls:?}")
    };
    assert_eq!(method, "RegisterInstance");
    assert_eq!(m.host.as_deref(), Some("10.1.2.3"));
    assert_eq!(m.location.as_ref().unwrap().zone.as_deref(), Some("z9"));
    let Call::Grpc { message, .. } = host
        .0
        .borrow()
        .calls
        .iter()
        .find(|c| matches!(c, Call::Grpc { method, .. } if method.ends_with("ReportClient")))
        .cloned()
        .unwrap_or(Call::Now)
    else {
        panic!("no ReportClient")
    };
    let client = proto::Client::decode(message.as_slice()).unwrap();
    assert!(client.version.unwrap().ends_with("envoy/1.40.0"));
}

#[test]
fn without_a_host_or_node_metadata_nothing_is_registered() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, "");
    for t in 0..5 {
        host.set_now(START + t * 1_000);
        w.on_tick();
    }
    assert!(methods(&host.take_calls()).is_empty());
}

#[test]
fn a_readiness_gate_registers_only_once_the_local_service_answers() {
    let gate = r#","host":"127.0.0.1","readiness":{"cluster":"local_app","path":"/healthz"}"#;
    let mut vms = envoy(1, gate);
    let (h, w) = &mut vms[0];
    w.on_tick();
    let calls = h.take_calls();
    assert_eq!(methods(&calls), vec!["ReportClient"], "no registration yet");
    let probes: Vec<(&str, &str)> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Http { cluster, path, .. } => Some((cluster.as_str(), path.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(probes, vec![("local_app", "/healthz")]);
    let probe = last_token(h) - 1;
    w.on_http_call_result(probe, Some(503), b"");
    assert!(methods(&h.take_calls()).is_empty());
    h.set_now(START + 1_000);
    w.on_tick();
    h.take_calls();
    w.on_http_call_result(last_token(h), Some(200), b"");
    assert_eq!(methods(&h.take_calls()), vec!["RegisterInstance"]);
}
