//! Admission against the fake host: what requests naming unknown, unwanted or idle services cost
//! in `Discover` calls and shared data.

use prost::Message;

use super::fake::{Call, FakeHost, FakeStream};
use super::tests::{instances, response};
use super::{Exchange, Verdict, Worker};
use crate::config::Config;
use crate::model::{Kind, ServiceKey};
use crate::shared;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const START: u64 = 1_000_000;

fn worker(host: &FakeHost, admission: &str) -> Worker<FakeHost> {
    let json = format!(
        r#"{{"polaris_cluster":"polaris_grpc","refresh_interval":"1s","admission":{admission}}}"#
    );
    let w = Worker::new(host.clone(), Config::parse(json.as_bytes()).unwrap(), 7).unwrap();
    host.take_calls();
    w
}

fn discover_calls(host: &FakeHost) -> usize {
    host.take_calls()
        .iter()
        .filter(|c| matches!(c, Call::Grpc { method, .. } if method.ends_with("/Discover")))
        .count()
}

fn not_found() -> Vec<u8> {
    response(Kind::Instances, 400_202, "").encode_to_vec()
}

fn no_rules(name: &str) -> Vec<u8> {
    let mut r = response(Kind::Routing, 200_000, "");
    if let Some(s) = r.service.as_mut() {
        s.name = Some(name.into());
    }
    r.encode_to_vec()
}

/// Sends a request for `authority`; a first discovery is answered with `answer` (instances) and
/// no rules. The verdict, and the reply's (status, reason) when it is one.
fn ask(
    host: &FakeHost,
    w: &mut Worker<FakeHost>,
    authority: &str,
    answer: impl FnOnce() -> Vec<u8>,
) -> (Verdict, Option<(u32, &'static str)>) {
    let mut exchange = Exchange::default();
    let mut stream = FakeStream::with(&[(":authority", authority)]);
    let mut verdict = exchange.on_request(w, &mut stream);
    if verdict == Verdict::Wait {
        let next = host.0.borrow().next_token;
        exchange.on_call_result(w, &mut stream, next, Ok(no_rules(authority)));
        verdict = exchange
            .on_call_result(w, &mut stream, next - 1, Ok(answer()))
            .unwrap_or(Verdict::Wait);
    }
    let reply = match &verdict {
        Verdict::Reply(r) => Some((r.status, r.reason)),
        _ => None,
    };
    (verdict, reply)
}

/// Shared data as a leader leaves it after discovering `name` (instances on port 8080).
fn seed(host: &FakeHost, name: &str) {
    let key = ServiceKey::new("default", name);
    let mut r = response(Kind::Instances, 200_000, "r1");
    if let Some(s) = r.service.as_mut() {
        s.name = Some(name.into());
    }
    r.instances = crate::polaris::proto::DiscoverResponse::decode(&instances("r1", &[8080])[..])
        .unwrap()
        .instances;
    host.put(
        &shared::resource_key(Kind::Instances, &key),
        &r.encode_to_vec(),
    );
    host.put(&shared::resource_key(Kind::Routing, &key), &no_rules(name));
    let mut list = shared::WatchList::decode(host.stored(shared::WATCH_KEY).as_deref());
    list.add(&key, 100);
    host.put(shared::WATCH_KEY, list.encode().as_bytes());
}

#[test]
fn unknown_names_beyond_the_budget_are_answered_503_at_once_without_asking_polaris() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, r#"{"new_services_per_second":3}"#);
    let mut throttled = 0;
    for i in 0..10 {
        let (verdict, reply) = ask(&host, &mut w, &format!("junk{i}"), not_found);
        match reply {
            Some((503, "discovery-throttled")) => {
                throttled += 1;
                let Verdict::Reply(r) = verdict else {
                    unreachable!()
                };
                assert!(r.headers.contains(&("retry-after".into(), "1".into())));
                assert!(r.body.contains("new_services_per_second"), "{}", r.body);
            }
            other => assert_eq!(other, Some((503, "service-not-found"))),
        }
    }
    assert_eq!(throttled, 7);
    let calls = host.take_calls();
    let budget_reads = calls
        .iter()
        .filter(|c| matches!(c, Call::Get(k) if k == shared::BUDGET_KEY))
        .count();
    assert_eq!(
        budget_reads, 4,
        "once used up, the second's budget is not read again"
    );
    let discovers = calls
        .iter()
        .filter(|c| matches!(c, Call::Grpc { method, .. } if method.ends_with("/Discover")))
        .count();
    assert_eq!(discovers, 6, "3 first discoveries of 2 calls");

    host.set_now(START + 1000);
    let (_, reply) = ask(&host, &mut w, "junk-next-second", not_found);
    assert_eq!(reply, Some((503, "service-not-found")));
    assert_eq!(discover_calls(&host), 2, "the budget refills each second");
}

#[test]
fn ten_thousand_random_names_cost_at_most_the_budget_per_second() {
    let host = FakeHost::new(START);
    seed(&host, "echo");
    let mut w = worker(&host, r#"{"new_services_per_second":20}"#);
    let mut calls = 0;
    for i in 0..10_000u64 {
        // 1,000 requests per (fake) second, over 10 seconds.
        host.set_now(START + i);
        ask(&host, &mut w, &format!("r{i:x}"), not_found);
        calls += discover_calls(&host);
        if i % 100 == 0 {
            let (verdict, _) = ask(&host, &mut w, "echo", not_found);
            assert_eq!(
                verdict,
                Verdict::Forward,
                "the known service is not starved"
            );
        }
    }
    // Today's cost without the budget would be 20,000 calls.
    assert!(calls <= 2 * 20 * 10, "{calls} Discover calls");
    assert!(w.admission.remembered_names() <= 1024);
    assert_eq!(w.cache.keys().len(), 1, "only echo is cached");
}

#[test]
fn the_budget_is_shared_by_every_worker_of_the_envoy() {
    let one = FakeHost::new(START);
    let two = one.sibling();
    let mut a = worker(&one, r#"{"new_services_per_second":3}"#);
    let mut b = worker(&two, r#"{"new_services_per_second":3}"#);
    ask(&one, &mut a, "x1", not_found);
    ask(&one, &mut a, "x2", not_found);
    assert_eq!(
        ask(&two, &mut b, "x3", not_found).1,
        Some((503, "service-not-found"))
    );
    assert_eq!(
        ask(&two, &mut b, "x4", not_found).1,
        Some((503, "discovery-throttled"))
    );
    assert_eq!(discover_calls(&one) + discover_calls(&two), 6);
}

#[test]
fn a_name_polaris_does_not_know_is_not_asked_again_within_not_found_ttl() {
    let host = FakeHost::new(START);
    let mut w = worker(&host, r#"{"not_found_ttl":"5s"}"#);
    assert_eq!(
        ask(&host, &mut w, "nosuch", not_found).1,
        Some((503, "service-not-found"))
    );
    assert_eq!(discover_calls(&host), 2);
    for t in [1, 1000, 4999] {
        host.set_now(START + t);
        assert_eq!(
            ask(&host, &mut w, "nosuch", not_found).1,
            Some((503, "service-not-found"))
        );
    }
    assert_eq!(discover_calls(&host), 0, "remembered");
    host.set_now(START + 5000);
    ask(&host, &mut w, "nosuch", not_found);
    assert_eq!(discover_calls(&host), 2, "asked again once the ttl is over");
}

#[test]
fn names_outside_the_allow_list_are_answered_403_without_any_host_call() {
    let host = FakeHost::new(START);
    seed(&host, "echo");
    let mut w = worker(&host, r#"{"allowed_services":["echo","shop-*"]}"#);
    let mut stream = FakeStream::with(&[(":authority", "other")]);
    let verdict = Exchange::default().on_request(&mut w, &mut stream);
    let Verdict::Reply(r) = verdict else {
        panic!("{verdict:?}")
    };
    assert_eq!((r.status, r.reason), (403, "service-not-allowed"));
    assert!(
        r.body.contains("service other in namespace default"),
        "{}",
        r.body
    );
    let effects: Vec<Call> = host
        .take_effects()
        .into_iter()
        .filter(|c| !matches!(c, Call::Property(_)))
        .collect();
    assert_eq!(effects, vec![]);
    assert_eq!(ask(&host, &mut w, "echo", not_found).0, Verdict::Forward);
    assert_eq!(
        ask(&host, &mut w, "shop-cart", not_found).1,
        Some((503, "service-not-found"))
    );
    assert_eq!(w.counters().pending(super::Counter::NotAllowed), 1);
}

#[test]
fn a_known_service_costs_no_admission_host_call() {
    let host = FakeHost::new(START);
    seed(&host, "echo");
    let mut w = worker(&host, r#"{"new_services_per_second":1}"#);
    assert_eq!(ask(&host, &mut w, "echo", not_found).0, Verdict::Forward);
    host.take_calls();
    for _ in 0..5 {
        assert_eq!(ask(&host, &mut w, "echo", not_found).0, Verdict::Forward);
    }
    assert_eq!(
        host.take_calls(),
        vec![],
        "no budget, clock or shared-data call"
    );
}

#[test]
fn a_service_nobody_asks_for_leaves_the_watch_list_and_shared_data_and_workers_forget_it() {
    let host = FakeHost::new(START);
    seed(&host, "used");
    seed(&host, "idle");
    let mut w = worker(&host, r#"{"idle_timeout":"3s"}"#);
    assert_eq!(ask(&host, &mut w, "used", not_found).0, Verdict::Forward);
    assert_eq!(ask(&host, &mut w, "idle", not_found).0, Verdict::Forward);
    let mut t = START;
    w.on_tick();
    assert!(w.leader.holds_lease());
    // Only `used` is asked for from now on; the leader's refreshes go unanswered (kept as is).
    while t < START + 4500 {
        t += 500;
        host.set_now(t);
        assert_eq!(ask(&host, &mut w, "used", not_found).0, Verdict::Forward);
        w.on_tick();
    }
    let watched = shared::WatchList::decode(host.stored(shared::WATCH_KEY).as_deref());
    assert_eq!(watched.services(), &[ServiceKey::new("default", "used")]);
    let idle = ServiceKey::new("default", "idle");
    for kind in [Kind::Instances, Kind::Routing] {
        assert_eq!(
            host.stored(&shared::resource_key(kind, &idle)),
            Some(vec![])
        );
    }
    assert!(!w.cache.keys().contains(&idle), "the worker forgot it");
    host.take_calls();

    // Asked for again, it is discovered again like any new service.
    let (verdict, _) = ask(&host, &mut w, "idle", || {
        let mut r = response(Kind::Instances, 200_000, "r2");
        if let Some(s) = r.service.as_mut() {
            s.name = Some("idle".into());
        }
        r.instances = crate::polaris::proto::DiscoverResponse::decode(&instances("r2", &[9])[..])
            .unwrap()
            .instances;
        r.encode_to_vec()
    });
    assert_eq!(verdict, Verdict::Forward);
    let watched = shared::WatchList::decode(host.stored(shared::WATCH_KEY).as_deref());
    assert!(watched.contains(&idle));
}

#[test]
fn this_envoys_own_service_is_never_dropped_for_idleness() {
    let host = FakeHost::new(START);
    seed(&host, "me");
    let json = r#"{"polaris_cluster":"polaris_grpc","refresh_interval":"1s","caller":{"service":"me"},"admission":{"idle_timeout":"1s"}}"#;
    let mut w = Worker::new(host.clone(), Config::parse(json.as_bytes()).unwrap(), 7).unwrap();
    let mut t = START;
    while t < START + 4000 {
        t += 500;
        host.set_now(t);
        w.on_tick();
    }
    let watched = shared::WatchList::decode(host.stored(shared::WATCH_KEY).as_deref());
    assert!(watched.contains(&ServiceKey::new("default", "me")));
}
