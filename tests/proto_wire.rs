//! Wire checks for our own Polaris protos (`proto/v1`): round trips of the messages the
//! filter decodes, and hand-built bytes proving how v1 wrapper fields and v2 plain
//! scalars look on the wire.

use std::collections::HashMap;
use std::error::Error;

use polaris_wasm::polaris::proto::{
    discover_response::DiscoverResponseType, error_condition, fallback_response, match_string,
    rule_matcher, trigger_condition, Api, BlockConfig, CircuitBreaker, CircuitBreakerRule,
    DiscoverResponse, ErrorCondition, FallbackConfig, FallbackResponse, FaultDetectConfig,
    Instance, Level, Location, MatchString, RecoverCondition, RuleMatcher, Service,
    TriggerCondition,
};
use prost::Message;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

type TestResult = Result<(), Box<dyn Error>>;

fn instance(host: &str, port: u32, weight: u32, healthy: bool, version: &str) -> Instance {
    Instance {
        id: Some(format!("id-{host}-{port}")),
        service: Some("svc-b".into()),
        namespace: Some("default".into()),
        host: Some(host.into()),
        port: Some(port),
        weight: Some(weight),
        healthy: Some(healthy),
        isolate: Some(false),
        metadata: HashMap::from([("version".to_string(), version.to_string())]),
        location: Some(Location {
            region: Some("r1".into()),
            zone: Some("z1".into()),
            campus: Some("c1".into()),
        }),
        ..Default::default()
    }
}

#[test]
fn discover_response_with_instances_round_trips() -> TestResult {
    let resp = DiscoverResponse {
        code: Some(200_000),
        info: Some("execute success".into()),
        r#type: DiscoverResponseType::Instance as i32,
        service: Some(Service {
            name: Some("svc-b".into()),
            namespace: Some("default".into()),
            revision: Some("rev-1".into()),
            ..Default::default()
        }),
        instances: vec![
            instance("10.0.0.1", 8081, 100, true, "v1"),
            instance("10.0.0.2", 8082, 0, false, "v2"),
        ],
        ..Default::default()
    };

    let bytes = resp.encode_to_vec();
    let back = DiscoverResponse::decode(bytes.as_slice())?;
    assert_eq!(back, resp);

    assert_eq!(back.code, Some(200_000));
    assert_eq!(back.r#type(), DiscoverResponseType::Instance);
    let svc = back.service.as_ref().ok_or("service missing")?;
    assert_eq!(svc.revision.as_deref(), Some("rev-1"));
    assert_eq!(back.instances.len(), 2);
    let second = back.instances.get(1).ok_or("second instance missing")?;
    assert_eq!(second.host.as_deref(), Some("10.0.0.2"));
    assert_eq!(second.port, Some(8082));
    assert_eq!(second.weight, Some(0));
    // Present-but-false must survive (it is an empty wrapper message on the wire).
    assert_eq!(second.healthy, Some(false));
    assert_eq!(second.isolate, Some(false));
    assert_eq!(
        second.metadata.get("version").map(String::as_str),
        Some("v2")
    );
    let loc = second.location.as_ref().ok_or("location missing")?;
    assert_eq!(loc.zone.as_deref(), Some("z1"));
    Ok(())
}

#[test]
fn circuit_breaker_rule_round_trips() -> TestResult {
    let rule = CircuitBreakerRule {
        id: "cb-1".into(),
        name: "cb1".into(),
        namespace: "default".into(),
        enable: true,
        revision: "r9".into(),
        level: Level::Instance as i32,
        rule_matcher: Some(RuleMatcher {
            source: Some(rule_matcher::SourceService {
                service: "*".into(),
                namespace: "*".into(),
            }),
            destination: Some(rule_matcher::DestinationService {
                service: "svc-b".into(),
                namespace: "default".into(),
                method: None,
            }),
        }),
        error_conditions: vec![ErrorCondition {
            input_type: error_condition::InputType::RetCode as i32,
            condition: Some(MatchString {
                r#type: match_string::MatchStringType::Range as i32,
                value: Some("500~599".into()),
                value_type: match_string::ValueType::Text as i32,
            }),
        }],
        trigger_condition: vec![TriggerCondition {
            trigger_type: trigger_condition::TriggerType::ConsecutiveError as i32,
            error_count: 3,
            ..Default::default()
        }],
        max_ejection_percent: 50,
        recover_condition: Some(RecoverCondition {
            sleep_window: 5,
            consecutive_success: 2,
        }),
        fault_detect_config: Some(FaultDetectConfig { enable: false }),
        fallback_config: Some(FallbackConfig {
            enable: true,
            response: Some(FallbackResponse {
                code: 503,
                headers: vec![fallback_response::MessageHeader {
                    key: "x-fallback".into(),
                    value: "1".into(),
                }],
                body: "degraded".into(),
            }),
        }),
        block_configs: vec![BlockConfig {
            name: "b0".into(),
            api: Some(Api {
                protocol: "*".into(),
                method: "GET".into(),
                path: Some(MatchString {
                    value: Some("/echo".into()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }],
        priority: 1,
        metadata: HashMap::from([("k".to_string(), "v".to_string())]),
        ..Default::default()
    };

    let resp = DiscoverResponse {
        code: Some(200_000),
        r#type: DiscoverResponseType::CircuitBreaker as i32,
        circuit_breaker: Some(CircuitBreaker {
            revision: Some("cb-rev".into()),
            rules: vec![rule.clone()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let back = DiscoverResponse::decode(resp.encode_to_vec().as_slice())?;
    assert_eq!(back, resp);
    let cb = back.circuit_breaker.ok_or("circuit breaker missing")?;
    let got = cb.rules.first().ok_or("rule missing")?;
    assert_eq!(got, &rule);
    assert_eq!(got.level(), Level::Instance);
    let tc = got.trigger_condition.first().ok_or("trigger missing")?;
    assert_eq!(
        tc.trigger_type(),
        trigger_condition::TriggerType::ConsecutiveError
    );
    Ok(())
}

#[test]
fn instance_wrapper_fields_decode_from_hand_built_bytes() -> TestResult {
    // Instance { host (4) = StringValue{ value (1) = "1.2.3.4" },
    //            port (5) = UInt32Value{ value (1) = 8080 } }
    let mut bytes = vec![0x22, 0x09, 0x0a, 0x07];
    bytes.extend_from_slice(b"1.2.3.4");
    bytes.extend_from_slice(&[0x2a, 0x03, 0x08, 0x90, 0x3f]); // 8080 = varint 0x90 0x3f

    let ins = Instance::decode(bytes.as_slice())?;
    assert_eq!(ins.host.as_deref(), Some("1.2.3.4"));
    assert_eq!(ins.port, Some(8080));
    assert_eq!(ins.weight, None);
    assert_eq!(ins.healthy, None);
    // And we produce exactly the same bytes.
    assert_eq!(ins.encode_to_vec(), bytes);

    // A present wrapper with its default value is an empty nested message.
    let healthy_false = Instance {
        healthy: Some(false),
        ..Default::default()
    };
    assert_eq!(healthy_false.encode_to_vec(), vec![0x5a, 0x00]);
    Ok(())
}

#[test]
fn v2_rule_fields_are_plain_scalars() -> TestResult {
    // CircuitBreakerRule.enable (4) is a bare varint, level (21) a bare enum varint.
    let rule = CircuitBreakerRule {
        enable: true,
        level: Level::Instance as i32,
        ..Default::default()
    };
    assert_eq!(rule.encode_to_vec(), vec![0x20, 0x01, 0xa8, 0x01, 0x04]);
    Ok(())
}
