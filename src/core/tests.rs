//! The core against the fake host: what each step asks of the host.

use prost::Message;

use super::fake::{Call, FakeHost, FakeStream};
use super::host::{Store, StoreError};
use super::store::{self, CasError, Update, CAS_TRIES};
use super::{Exchange, Verdict, Worker};
use crate::config::Config;
use crate::model::{Kind, ServiceKey};
use crate::polaris::{proto, CallError};
use crate::shared;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const DISCOVER: &str = "v1.PolarisGRPC/Discover";
const START: u64 = 1_000_000;

fn echo() -> ServiceKey {
    ServiceKey::new("default", "echo")
}

fn config(extra: &str) -> Config {
    let json = format!(r#"{{"polaris_cluster":"polaris_grpc","refresh_interval":"1s"{extra}}}"#);
    Config::parse(json.as_bytes()).unwrap()
}

fn worker(host: &FakeHost, extra: &str) -> Worker<FakeHost> {
    let w = Worker::new(host.clone(), config(extra), 7).unwrap();
    host.take_calls();
    w
}

pub(super) fn response(kind: Kind, code: u32, revision: &str) -> proto::DiscoverResponse {
    proto::DiscoverResponse {
        code: Some(code),
        r#type: crate::polaris::client::request_type(kind) as i32,
        service: Some(proto::Service {
            name: Some("echo".into()),
            namespace: Some("default".into()),
            revision: Some(revision.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn instances(revision: &str, ports: &[u32]) -> Vec<u8> {
    let mut r = response(Kind::Instances, 200_000, revision);
    r.instances = ports
        .iter()
        .map(|&p| proto::Instance {
            id: Some(format!("i{p}")),
            host: Some("127.0.0.1".into()),
            port: Some(p),
            ..Default::default()
        })
        .collect();
    r.encode_to_vec()
}

fn no_rules() -> Vec<u8> {
    response(Kind::Routing, 200_000, "").encode_to_vec()
}

fn unchanged(kind: Kind, revision: &str) -> Vec<u8> {
    response(kind, 200_001, revision).encode_to_vec()
}

/// Shared data as a leader leaves it after discovering echo.
fn seed(host: &FakeHost, ports: &[u32]) {
    host.put(
        &shared::resource_key(Kind::Instances, &echo()),
        &instances("r1", ports),
    );
    host.put(&shared::resource_key(Kind::Routing, &echo()), &no_rules());
    host.put(shared::WATCH_KEY, b"default/echo\n");
}

/// The Discover calls among `calls`: (type, service name, revision sent).
fn discovers(calls: &[Call]) -> Vec<(i32, String, String)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Grpc { method, message } if method == DISCOVER => {
                let r = proto::DiscoverRequest::decode(message.as_slice()).unwrap();
                let s = r.service.unwrap_or_default();
                Some((
                    r.r#type,
                    s.name.unwrap_or_default(),
                    s.revision.unwrap_or_default(),
                ))
            }
            _ => None,
        })
        .collect()
}

fn writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Set { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect()
}

/// The tokens of the last two calls (the fake hands them out in order).
fn last_two_tokens(host: &FakeHost) -> (u32, u32) {
    let next = host.0.borrow().next_token;
    (next - 1, next)
}

fn request(w: &mut Worker<FakeHost>, headers: &[(&str, &str)]) -> (Verdict, FakeStream) {
    let mut stream = FakeStream::with(headers);
    let verdict = Exchange::default().on_request(w, &mut stream);
    (verdict, stream)
}

#[test]
fn a_request_for_a_known_service_without_rules_reads_one_header_and_writes_one() {
    let host = FakeHost::new(START);
    seed(&host, &[8080]);
    let mut w = worker(&host, "");
    let (first, _) = request(&mut w, &[(":authority", "echo")]);
    assert_eq!(first, Verdict::Forward);
    host.take_calls();

    let (verdict, stream) = request(&mut w, &[(":authority", "echo")]);
    assert_eq!(verdict, Verdict::Forward);
    assert_eq!(
        stream.calls,
        vec![
            Call::ReadHeader(":authority".into()),
            Call::WriteHeader("x-polaris-upstream".into(), "127.0.0.1:8080".into()),
        ]
    );
    assert_eq!(
        host.take_calls(),
        vec![],
        "no shared data, clock or metric call"
    );
}

#[test]
fn with_override_host_the_pick_is_handed_over_and_no_header_is_written() {
    let host = FakeHost::new(START);
    seed(&host, &[8080]);
    let mut w = worker(&host, r#","upstream_handover":"override_host""#);
    request(&mut w, &[(":authority", "echo")]);

    let (verdict, stream) = request(&mut w, &[(":authority", "echo")]);
    assert_eq!(verdict, Verdict::Forward);
    assert_eq!(
        stream.calls,
        vec![
            Call::ReadHeader(":authority".into()),
            Call::OverrideHost("127.0.0.1:8080".into()),
        ]
    );
}

#[test]
fn in_load_balancer_mode_an_unknown_service_is_watched_and_left_to_the_leader_not_called() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, r#","upstream_handover":"load_balancer""#);
    let mut exchange = Exchange::default();
    let verdict = exchange.on_request(&mut w, &mut FakeStream::with(&[(":authority", "echo")]));
    assert_eq!(verdict, Verdict::Wait);
    assert!(exchange.pending_calls().is_empty(), "no call of its own");
    let calls = host.take_calls();
    assert!(discovers(&calls).is_empty());
    assert!(calls.contains(&Call::WakeLeader));
    assert_eq!(
        store::watch_list(&host).services(),
        &[echo()],
        "the leader refreshes it"
    );

    seed(&host, &[8080]);
    let (verdict, stream) = request(&mut w, &[(":authority", "echo")]);
    assert_eq!(verdict, Verdict::Forward, "decided again once stored");
    assert_eq!(
        stream.calls,
        vec![
            Call::ReadHeader(":authority".into()),
            Call::OverrideHost("127.0.0.1:8080".into()),
        ]
    );
}

#[test]
fn a_client_sent_upstream_header_is_replaced_by_the_pick() {
    let host = FakeHost::new(START);
    seed(&host, &[8080]);
    let mut w = worker(&host, "");
    let (verdict, stream) = request(
        &mut w,
        &[
            (":authority", "echo"),
            ("x-polaris-upstream", "10.9.9.9:22"),
        ],
    );
    assert_eq!(verdict, Verdict::Forward);
    assert_eq!(stream.header("x-polaris-upstream"), Some("127.0.0.1:8080"));
}

#[test]
fn a_request_naming_no_service_is_answered_400_without_host_calls() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, "");
    let (verdict, stream) = request(&mut w, &[]);
    let Verdict::Reply(reply) = verdict else {
        panic!("{verdict:?}")
    };
    assert_eq!((reply.status, reply.reason), (400, "no-destination"));
    assert_eq!(stream.calls, vec![Call::ReadHeader(":authority".into())]);
    let effects: Vec<Call> = host
        .take_effects()
        .into_iter()
        .filter(|c| !matches!(c, Call::Property(_)))
        .collect();
    assert_eq!(effects, vec![], "only the node locality, read once per VM");
}

#[test]
fn a_first_request_waits_for_instances_and_rules_then_is_forwarded() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, "");
    let mut exchange = Exchange::default();
    let mut stream = FakeStream::with(&[(":authority", "echo")]);
    assert_eq!(exchange.on_request(&mut w, &mut stream), Verdict::Wait);
    let sent = discovers(&host.take_calls());
    assert_eq!(
        sent,
        vec![
            (1, "echo".into(), String::new()),
            (3, "echo".into(), String::new())
        ],
        "INSTANCE and ROUTING at once, no revision"
    );
    let (instances_token, routing_token) = last_two_tokens(&host);
    assert_eq!(
        exchange.pending_calls(),
        vec![instances_token, routing_token]
    );
    assert_eq!(
        exchange.on_call_result(&mut w, &mut stream, routing_token, Ok(no_rules())),
        None,
        "still waiting for the instances"
    );
    assert_eq!(
        exchange.pending_calls(),
        vec![instances_token],
        "the answered one is not"
    );
    let verdict = exchange.on_call_result(
        &mut w,
        &mut stream,
        instances_token,
        Ok(instances("r1", &[9])),
    );
    assert_eq!(verdict, Some(Verdict::Forward));
    assert_eq!(exchange.pending_calls(), Vec::<u32>::new());
    assert_eq!(stream.header("x-polaris-upstream"), Some("127.0.0.1:9"));
    assert_eq!(
        host.stored(shared::WATCH_KEY).as_deref(),
        Some(&b"default/echo\n"[..])
    );
    assert!(host
        .stored(&shared::resource_key(Kind::Instances, &echo()))
        .is_some());
    assert!(host
        .stored(&shared::resource_key(Kind::Routing, &echo()))
        .is_some());
}

#[test]
fn an_unreachable_polaris_is_answered_503_naming_the_cause_and_remembered_for_a_second() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, "");
    let mut exchange = Exchange::default();
    let mut stream = FakeStream::with(&[(":authority", "echo")]);
    assert_eq!(exchange.on_request(&mut w, &mut stream), Verdict::Wait);
    let down = || {
        Err(CallError {
            status: 14,
            message: Some("no healthy upstream".into()),
        })
    };
    let (instances_token, routing_token) = last_two_tokens(&host);
    exchange.on_call_result(&mut w, &mut stream, routing_token, down());
    let Some(Verdict::Reply(reply)) =
        exchange.on_call_result(&mut w, &mut stream, instances_token, down())
    else {
        panic!("no reply")
    };
    assert_eq!((reply.status, reply.reason), (503, "discovery-failed"));
    assert!(
        reply.body.contains("gRPC status 14: no healthy upstream"),
        "{}",
        reply.body
    );
    host.take_calls();

    let (again, _) = request(&mut w, &[(":authority", "echo")]);
    assert!(matches!(again, Verdict::Reply(_)));
    assert!(discovers(&host.take_calls()).is_empty(), "not asked again");
    host.set_now(START + 1000);
    let (later, _) = request(&mut w, &[(":authority", "echo")]);
    assert_eq!(later, Verdict::Wait, "asked again after a second");
}

#[test]
fn a_refused_dispatch_is_answered_at_once() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, "");
    host.0.borrow_mut().refuse_calls = Some("BadArgument".into());
    let (verdict, _) = request(&mut w, &[(":authority", "echo")]);
    let Verdict::Reply(reply) = verdict else {
        panic!("{verdict:?}")
    };
    assert!(
        reply
            .body
            .contains("cannot call Polaris through cluster polaris_grpc: BadArgument"),
        "{}",
        reply.body
    );
}

/// Ticks a fresh leader through its first refresh of echo, answering with `answers`.
fn first_refresh(host: &FakeHost, w: &mut Worker<FakeHost>) {
    w.on_tick();
    let calls = host.take_calls();
    assert_eq!(discovers(&calls).len(), 2);
    let tokens: Vec<u32> = (0..2).map(|i| host.0.borrow().next_token - 1 + i).collect();
    w.on_call_result(tokens[0], Ok(instances("r1", &[1])));
    w.on_call_result(tokens[1], Ok(no_rules()));
}

#[test]
fn the_leaders_tick_for_an_unchanged_service_sends_its_revision_and_writes_nothing() {
    let host = FakeHost::new(START);
    host.put(shared::WATCH_KEY, b"default/echo\n");
    let mut w = worker(&host, "");
    first_refresh(&host, &mut w);
    assert!(w.leader.holds_lease());
    host.take_calls();

    host.set_now(START + 1000);
    w.on_tick();
    let calls = host.take_calls();
    assert_eq!(
        discovers(&calls),
        vec![
            (1, "echo".into(), "r1".into()),
            (3, "echo".into(), String::new())
        ]
    );
    let next = host.0.borrow().next_token;
    w.on_call_result(next - 1, Ok(unchanged(Kind::Instances, "r1")));
    w.on_call_result(next, Ok(unchanged(Kind::Routing, "")));
    let after = host.take_calls();
    assert_eq!(
        writes(&calls)
            .into_iter()
            .chain(writes(&after))
            .collect::<Vec<_>>(),
        vec![shared::LEASE_KEY.to_string()],
        "only the lease is renewed"
    );
}

/// Two VMs of one Envoy watching echo: (host, worker) of each, sharing one store.
fn two_vms() -> (FakeHost, Worker<FakeHost>, FakeHost, Worker<FakeHost>) {
    let leader_host = FakeHost::new(START);
    leader_host.put(shared::WATCH_KEY, b"default/echo\n");
    let follower_host = leader_host.sibling();
    let leader = worker(&leader_host, "");
    let follower = worker(&follower_host, "");
    (leader_host, leader, follower_host, follower)
}

#[test]
fn a_followers_tick_sends_nothing() {
    let (_, mut leader, follower_host, mut follower) = two_vms();
    leader.on_tick();
    follower_host.set_now(START + 100);
    follower.on_tick();
    assert!(!follower.leader.holds_lease());
    assert!(discovers(&follower_host.take_calls()).is_empty());
}

#[test]
fn a_lost_lease_is_taken_over_after_it_expires() {
    let (leader_host, mut leader, follower_host, mut follower) = two_vms();
    leader.on_tick();
    // The leader stalls. Its lease lives 4 ticks (4 × 500 ms at a 1 s interval).
    follower_host.set_now(START + 1999);
    follower.on_tick();
    assert!(!follower.leader.holds_lease(), "lease still live");
    follower_host.take_calls();
    follower_host.set_now(START + 2001);
    follower.on_tick();
    assert!(follower.leader.holds_lease());
    assert_eq!(discovers(&follower_host.take_calls()).len(), 2);
    leader_host.set_now(START + 2100);
    leader.on_tick();
    assert!(!leader.leader.holds_lease(), "the old leader now follows");
}

#[test]
fn a_malformed_refresh_answer_keeps_the_last_snapshot() {
    let host = FakeHost::new(START);
    host.put(shared::WATCH_KEY, b"default/echo\n");
    let mut w = worker(&host, "");
    first_refresh(&host, &mut w);
    let stored = host.stored(&shared::resource_key(Kind::Instances, &echo()));
    host.set_now(START + 1000);
    w.on_tick();
    let next = host.0.borrow().next_token;
    host.take_calls();
    w.on_call_result(next - 1, Ok(b"\xff\xff garbage".to_vec()));
    assert!(writes(&host.take_calls()).is_empty());
    assert_eq!(
        host.stored(&shared::resource_key(Kind::Instances, &echo())),
        stored
    );
}

#[test]
fn workers_resync_when_the_leader_stores_a_change() {
    let leader_host = FakeHost::new(START);
    seed(&leader_host, &[1]);
    let worker_host = leader_host.sibling();
    let mut other = worker(&worker_host, "");
    let (_, stream) = request(&mut other, &[(":authority", "echo")]);
    assert_eq!(stream.header("x-polaris-upstream"), Some("127.0.0.1:1"));

    let mut leader = worker(&leader_host, "");
    leader.on_tick();
    let next = leader_host.0.borrow().next_token;
    leader.on_call_result(next - 1, Ok(instances("r2", &[2])));
    other.on_tick();
    let (_, stream) = request(&mut other, &[(":authority", "echo")]);
    assert_eq!(stream.header("x-polaris-upstream"), Some("127.0.0.1:2"));

    worker_host.take_calls();
    other.on_tick();
    let reads: Vec<Call> = worker_host
        .take_calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Get(k) if k.contains("/instances/")))
        .collect();
    assert_eq!(reads, vec![], "nothing re-read while the generation stands");
}

#[test]
fn the_trace_is_added_to_the_response_only_when_asked_for() {
    let host = FakeHost::new(START);
    seed(&host, &[8080]);
    let mut w = worker(&host, r#","debug_trace":true"#);
    let mut plain = Exchange::default();
    let mut stream = FakeStream::with(&[(":authority", "echo")]);
    plain.on_request(&mut w, &mut stream);
    assert!(!plain.wants_response());

    let mut traced = Exchange::default();
    let mut stream = FakeStream::with(&[(":authority", "echo"), ("x-polaris-debug", "1")]);
    traced.on_request(&mut w, &mut stream);
    assert!(traced.wants_response());
    traced.on_response(&mut w, &mut stream);
    assert!(stream
        .response_headers
        .contains(&("x-polaris-instance".into(), "127.0.0.1:8080".into())));
    assert_eq!(
        traced.ticket().map(|t| t.upstream.as_str()),
        Some("127.0.0.1:8080")
    );
}

#[test]
fn node_locality_fills_an_unconfigured_location_once() {
    let host = FakeHost::new(START);
    seed(&host, &[8080]);
    // envoy.config.core.v3.Node { locality (4): { region (1): "r1", zone (2): "z1" } }
    host.0.borrow_mut().node = Some(vec![
        0x22, 0x08, 0x0a, 0x02, b'r', b'1', 0x12, 0x02, b'z', b'1',
    ]);
    let mut w = worker(&host, "");
    request(&mut w, &[(":authority", "echo")]);
    assert_eq!(w.config().nearby.location.zone, "z1");
    host.take_calls();
    request(&mut w, &[(":authority", "echo")]);
    w.on_tick();
    assert!(!host
        .take_calls()
        .iter()
        .any(|c| matches!(c, Call::Property(_))));
}

/// A store where every CAS write loses.
struct Contended;

impl Store for Contended {
    fn get(&self, _key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        (Some(vec![0; 8]), Some(1))
    }

    fn set(&self, _key: &str, _value: &[u8], _cas: Option<u32>) -> Result<(), StoreError> {
        Err(StoreError::CasMismatch)
    }
}

#[test]
fn cas_update_gives_up_after_bounded_retries_and_writes_nothing() {
    let mut tries = 0;
    let out = store::cas_update(&Contended, "k", |_| {
        tries += 1;
        Update::Write(vec![1], ())
    });
    assert_eq!(out, Err(CasError::Contended));
    assert_eq!(tries, CAS_TRIES);
    assert_eq!(
        store::watch(&Contended, &echo(), 10),
        crate::shared::Added::Full,
        "a contended watch list counts as full"
    );
}

fn rate_limit_answer(max: u32) -> Vec<u8> {
    let mut r = response(Kind::RateLimit, 200_000, "rl1");
    r.rate_limit = Some(proto::RateLimit {
        rules: vec![proto::Rule {
            id: Some("r1".into()),
            name: Some("two-per-second".into()),
            r#type: proto::rule::Type::Local as i32,
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
    r.encode_to_vec()
}

#[test]
fn with_destination_limits_a_first_request_also_waits_for_the_rate_limit_rules() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, r#","rate_limit":{"rules_of":"destination"}"#);
    let mut exchange = Exchange::default();
    let mut stream = FakeStream::with(&[(":authority", "echo")]);
    assert_eq!(exchange.on_request(&mut w, &mut stream), Verdict::Wait);
    let kinds: Vec<i32> = discovers(&host.take_calls()).iter().map(|d| d.0).collect();
    assert_eq!(kinds, vec![1, 3, 4], "INSTANCE, ROUTING and RATE_LIMIT");
}

#[test]
fn requests_over_the_limit_are_answered_429_naming_the_rule_with_retry_after() {
    let host = FakeHost::new(START + 100);
    seed(&host, &[8080]);
    host.put(
        &shared::resource_key(Kind::RateLimit, &echo()),
        &rate_limit_answer(2),
    );
    let mut w = worker(&host, r#","rate_limit":{"rules_of":"destination"}"#);
    let verdicts: Vec<Verdict> = (0..3)
        .map(|_| request(&mut w, &[(":authority", "echo")]).0)
        .collect();
    assert_eq!(verdicts[..2], [Verdict::Forward, Verdict::Forward]);
    let Verdict::Reply(reply) = &verdicts[2] else {
        panic!("{verdicts:?}")
    };
    assert_eq!((reply.status, reply.reason), (429, "rate-limited"));
    assert_eq!(
        reply.headers,
        vec![("retry-after".to_string(), "1".to_string())]
    );
    assert!(
        reply.body.contains("rule `two-per-second`"),
        "{}",
        reply.body
    );
    host.set_now(START + 1000);
    assert_eq!(
        request(&mut w, &[(":authority", "echo")]).0,
        Verdict::Forward
    );
}

#[test]
fn without_rate_limiting_configured_no_rate_limit_rules_are_asked_for() {
    let host = FakeHost::new(START);
    host.put(shared::WATCH_KEY, b"default/echo\n");
    let mut w = worker(&host, "");
    w.on_tick();
    let kinds: Vec<i32> = discovers(&host.take_calls()).iter().map(|d| d.0).collect();
    assert_eq!(kinds, vec![1, 3]);
}

#[test]
fn a_follower_tick_resyncs_but_never_claims_the_lease_nor_calls() {
    let host = FakeHost::new(START);
    seed(&host, &[8080]);
    let mut w = worker(&host, "");
    w.on_follower_tick();
    for i in 1..=5 {
        host.set_now(START + i * 1_000);
        w.on_follower_tick();
    }
    let calls = host.take_calls();
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Grpc { .. } | Call::Http { .. })),
        "{calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Set { key, .. } if key == shared::LEASE_KEY)),
        "{calls:?}"
    );
    assert!(host.stored(shared::LEASE_KEY).is_none());

    // A leader's update reaches the follower's next request through the tick's resync.
    let mut stream = FakeStream::with(&[(":authority", "echo")]);
    assert_eq!(
        Exchange::default().on_request(&mut w, &mut stream),
        Verdict::Forward
    );
    assert_eq!(stream.header("x-polaris-upstream"), Some("127.0.0.1:8080"));
    assert!(store::store_answer(
        &host,
        Kind::Instances,
        &echo(),
        &instances("r2", &[9090])
    ));
    w.on_follower_tick();
    let mut stream = FakeStream::with(&[(":authority", "echo")]);
    assert_eq!(
        Exchange::default().on_request(&mut w, &mut stream),
        Verdict::Forward
    );
    assert_eq!(stream.header("x-polaris-upstream"), Some("127.0.0.1:9090"));
}
