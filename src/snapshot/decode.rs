//! Turning a Polaris `DiscoverResponse` into a [`ServiceSnapshot`].
//!
//! Anything the server sends is untrusted: an instance without a host or port is dropped (and
//! counted), an unexpected code is an error, and nothing here can panic.

use std::fmt;

use prost::Message;

use crate::model::{upstream_address, Instance, Kind, Location, ServiceKey, ServiceSnapshot};
use crate::polaris::code;
use crate::polaris::proto;

/// What a Discover (type INSTANCE) answer says about a service.
#[derive(Clone, Debug, PartialEq)]
pub enum Discovered {
    /// New data at a new revision.
    Changed(Box<ServiceSnapshot>),
    /// The revision we sent is still current.
    Unchanged,
    /// Polaris does not know the service.
    NotFound,
}

/// Why an answer could not be used; the last good snapshot stays in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not a `DiscoverResponse`.
    Malformed(String),
    /// Polaris answered with an error code.
    Server { code: u32, info: String },
    /// The answer is about another service or resource type.
    Mismatch(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed(e) => write!(f, "malformed DiscoverResponse: {e}"),
            DecodeError::Server { code, info } => write!(f, "Polaris answered code {code}: {info}"),
            DecodeError::Mismatch(e) => write!(f, "unexpected DiscoverResponse: {e}"),
        }
    }
}

/// Why a first discovery could not produce a snapshot: the request is answered with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoveryError {
    /// The host would not send the call.
    NotSent { cluster: String, error: String },
    /// The call got no answer.
    Unreachable(crate::polaris::CallError),
    /// Polaris answered, but not usably.
    Answer(DecodeError),
    /// The rules of the service could not be read (`kind` names which).
    Rules(Box<DiscoveryError>),
    /// The rate-limit rules of the service could not be read.
    Limits(Box<DiscoveryError>),
    /// Polaris answered no-change to a request that named no revision.
    NoChangeOnFirst,
    /// The answer was installed, but the service was gone from the cache when the request
    /// looked again.
    Vanished,
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoveryError::NotSent { cluster, error } => {
                write!(f, "cannot call Polaris through cluster {cluster}: {error}")
            }
            DiscoveryError::Unreachable(e) => e.fmt(f),
            DiscoveryError::Answer(e) => e.fmt(f),
            DiscoveryError::Rules(e) => write!(f, "routing: {e}"),
            DiscoveryError::Limits(e) => write!(f, "rate limits: {e}"),
            DiscoveryError::NoChangeOnFirst => {
                f.write_str("Polaris answered no-change to a first discovery")
            }
            DiscoveryError::Vanished => {
                f.write_str("the discovered service vanished from the cache")
            }
        }
    }
}

/// The `DiscoverResponseType` of an answer about `kind`.
fn response_type(kind: Kind) -> i32 {
    use proto::discover_response::DiscoverResponseType as T;
    (match kind {
        Kind::Instances => T::Instance,
        Kind::Routing => T::Routing,
        Kind::RateLimit => T::RateLimit,
        Kind::CircuitBreaker => T::CircuitBreaker,
        Kind::FaultDetector => T::FaultDetector,
    }) as i32
}

/// What any Discover answer says, without building anything from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Changed { revision: String },
    Unchanged,
    NotFound,
}

/// Checks an answer of `kind` for `key`: the code, the type and the service it is about.
pub fn classify(kind: Kind, key: &ServiceKey, bytes: &[u8]) -> Result<Answer, DecodeError> {
    check(kind, key, &decode(bytes)?)
}

fn decode(bytes: &[u8]) -> Result<proto::DiscoverResponse, DecodeError> {
    proto::DiscoverResponse::decode(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

fn check(
    kind: Kind,
    key: &ServiceKey,
    response: &proto::DiscoverResponse,
) -> Result<Answer, DecodeError> {
    let code = response.code.unwrap_or(0);
    match code {
        code::DATA_NO_CHANGE => return Ok(Answer::Unchanged),
        code::NOT_FOUND_RESOURCE | code::NOT_FOUND_SERVICE => return Ok(Answer::NotFound),
        code::EXECUTE_SUCCESS => {}
        _ => {
            return Err(DecodeError::Server {
                code,
                info: response.info.clone().unwrap_or_default(),
            })
        }
    }
    if response.r#type != response_type(kind) {
        return Err(DecodeError::Mismatch(format!(
            "type {} where {} was asked",
            response.r#type,
            kind.name()
        )));
    }
    let service = response.service.as_ref();
    let name = service.and_then(|s| s.name.as_deref()).unwrap_or_default();
    let namespace = service
        .and_then(|s| s.namespace.as_deref())
        .unwrap_or_default();
    if name != key.name || namespace != key.namespace {
        return Err(DecodeError::Mismatch(format!(
            "answer for {namespace}/{name} where {key} was asked"
        )));
    }
    Ok(Answer::Changed {
        revision: service.and_then(|s| s.revision.clone()).unwrap_or_default(),
    })
}

/// The v1 routes of a ROUTING answer (empty when the service has none or is unknown).
pub fn decode_routing(key: &ServiceKey, bytes: &[u8]) -> Result<proto::Routing, DecodeError> {
    let response = decode(bytes)?;
    match check(Kind::Routing, key, &response)? {
        Answer::Changed { .. } => Ok(response.routing.unwrap_or_default()),
        Answer::NotFound => Ok(proto::Routing::default()),
        Answer::Unchanged => Err(DecodeError::Mismatch("stored answer says no-change".into())),
    }
}

/// The rules of a RATE_LIMIT answer (empty when the service has none or is unknown).
pub fn decode_rate_limits(key: &ServiceKey, bytes: &[u8]) -> Result<Vec<proto::Rule>, DecodeError> {
    let response = decode(bytes)?;
    match check(Kind::RateLimit, key, &response)? {
        Answer::Changed { .. } => Ok(response.rate_limit.map(|r| r.rules).unwrap_or_default()),
        Answer::NotFound => Ok(Vec::new()),
        Answer::Unchanged => Err(DecodeError::Mismatch("stored answer says no-change".into())),
    }
}

/// The circuit-breaker rules of a CIRCUIT_BREAKER answer (empty when the service has none: the
/// server then answers without a payload).
pub fn decode_circuit_breaker(
    key: &ServiceKey,
    bytes: &[u8],
) -> Result<Vec<proto::CircuitBreakerRule>, DecodeError> {
    let response = decode(bytes)?;
    match check(Kind::CircuitBreaker, key, &response)? {
        Answer::Changed { .. } => Ok(response
            .circuit_breaker
            .map(|c| c.rules)
            .unwrap_or_default()),
        Answer::NotFound => Ok(Vec::new()),
        Answer::Unchanged => Err(DecodeError::Mismatch("stored answer says no-change".into())),
    }
}

/// The fault-detection rules of a FAULT_DETECTOR answer (empty when the service has none).
pub fn decode_fault_detector(
    key: &ServiceKey,
    bytes: &[u8],
) -> Result<Vec<proto::FaultDetectRule>, DecodeError> {
    let response = decode(bytes)?;
    match check(Kind::FaultDetector, key, &response)? {
        Answer::Changed { .. } => Ok(response.fault_detector.map(|f| f.rules).unwrap_or_default()),
        Answer::NotFound => Ok(Vec::new()),
        Answer::Unchanged => Err(DecodeError::Mismatch("stored answer says no-change".into())),
    }
}

/// Decodes wire bytes, then classifies them.
pub fn decode_instances(key: &ServiceKey, bytes: &[u8]) -> Result<Discovered, DecodeError> {
    classify_instances(key, &decode(bytes)?)
}

/// Classifies a decoded answer for `key`, building the snapshot when it carries new data.
pub fn classify_instances(
    key: &ServiceKey,
    response: &proto::DiscoverResponse,
) -> Result<Discovered, DecodeError> {
    Ok(match check(Kind::Instances, key, response)? {
        Answer::Unchanged => Discovered::Unchanged,
        Answer::NotFound => Discovered::NotFound,
        Answer::Changed { revision } => {
            let service = response.service.as_ref();
            let metadata = service.map(|s| s.metadata.clone()).unwrap_or_default();
            let instances = response.instances.iter().filter_map(instance).collect();
            Discovered::Changed(Box::new(ServiceSnapshot::new(
                key.clone(),
                revision,
                metadata,
                instances,
            )))
        }
    })
}

fn instance(p: &proto::Instance) -> Option<Instance> {
    let host = p.host.as_deref().filter(|h| !h.is_empty())?.to_string();
    let port = p.port.filter(|&p| p > 0 && p <= 65535)?;
    let location = p
        .location
        .as_ref()
        .map(|l| Location {
            region: l.region.clone().unwrap_or_default(),
            zone: l.zone.clone().unwrap_or_default(),
            campus: l.campus.clone().unwrap_or_default(),
        })
        .unwrap_or_default();
    Some(Instance {
        id: p.id.clone().unwrap_or_default(),
        upstream: upstream_address(&host, port),
        host,
        port,
        // Polaris defaults: weight 100, healthy, not isolated.
        weight: p.weight.unwrap_or(100),
        healthy: p.healthy.unwrap_or(true),
        isolated: p.isolate.unwrap_or(false),
        metadata: p.metadata.clone(),
        location,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::polaris::proto::discover_response::DiscoverResponseType;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn key() -> ServiceKey {
        ServiceKey::new("default", "echo")
    }

    fn inst(host: &str, port: u32, weight: u32) -> proto::Instance {
        proto::Instance {
            id: Some(format!("{host}:{port}")),
            host: Some(host.into()),
            port: Some(port),
            weight: Some(weight),
            healthy: Some(true),
            isolate: Some(false),
            ..Default::default()
        }
    }

    fn answer(code: u32, instances: Vec<proto::Instance>) -> proto::DiscoverResponse {
        proto::DiscoverResponse {
            code: Some(code),
            r#type: DiscoverResponseType::Instance as i32,
            service: Some(proto::Service {
                name: Some("echo".into()),
                namespace: Some("default".into()),
                revision: Some("rev-1".into()),
                ..Default::default()
            }),
            instances,
            ..Default::default()
        }
    }

    #[test]
    fn success_builds_snapshot_with_upstreams() {
        let bytes = answer(
            200000,
            vec![inst("127.0.0.1", 8081, 1), inst("::1", 8082, 2)],
        )
        .encode_to_vec();
        let Discovered::Changed(s) = decode_instances(&key(), &bytes).unwrap() else {
            panic!("expected a snapshot")
        };
        assert_eq!(s.revision, "rev-1");
        assert_eq!(s.instances[0].upstream, "127.0.0.1:8081");
        assert_eq!(s.instances[1].upstream, "[::1]:8082");
    }

    #[test]
    fn isolated_and_zero_weight_instances_are_not_selectable() {
        let mut isolated = inst("127.0.0.1", 1, 10);
        isolated.isolate = Some(true);
        let mut unhealthy = inst("127.0.0.1", 2, 10);
        unhealthy.healthy = Some(false);
        let zero = inst("127.0.0.1", 3, 0);
        let ok = inst("127.0.0.1", 4, 10);
        let r = answer(200000, vec![isolated, unhealthy, zero, ok]);
        let Discovered::Changed(s) = classify_instances(&key(), &r).unwrap() else {
            panic!()
        };
        let selectable: Vec<bool> = s.instances.iter().map(|i| i.is_selectable()).collect();
        assert_eq!(selectable, [false, true, false, true]);
        let healthy: Vec<bool> = s.instances.iter().map(|i| i.healthy).collect();
        assert_eq!(healthy, [true, false, true, true]);
    }

    #[test]
    fn instances_without_host_or_port_are_dropped() {
        let mut no_host = inst("", 1, 10);
        no_host.host = None;
        let bad_port = inst("127.0.0.1", 70000, 10);
        let r = answer(200000, vec![no_host, bad_port, inst("127.0.0.1", 5, 1)]);
        let Discovered::Changed(s) = classify_instances(&key(), &r).unwrap() else {
            panic!()
        };
        assert_eq!(s.instances.len(), 1);
    }

    #[test]
    fn no_change_and_not_found_are_recognised() {
        assert_eq!(
            classify_instances(&key(), &answer(200001, vec![])).unwrap(),
            Discovered::Unchanged
        );
        assert_eq!(
            classify_instances(&key(), &answer(400202, vec![])).unwrap(),
            Discovered::NotFound
        );
    }

    #[test]
    fn server_error_is_an_error() {
        let e = classify_instances(&key(), &answer(500000, vec![])).unwrap_err();
        assert!(matches!(e, DecodeError::Server { code: 500000, .. }));
    }

    #[test]
    fn garbage_bytes_are_malformed_not_a_panic() {
        for bytes in [
            &[0xff, 0xff, 0xff][..],
            &[0x0a, 0x80][..],
            &[0x2a, 0x05, 0x01][..],
        ] {
            assert!(matches!(
                decode_instances(&key(), bytes),
                Err(DecodeError::Malformed(_))
            ));
        }
    }

    #[test]
    fn answer_for_another_service_is_rejected() {
        let r = answer(200000, vec![inst("127.0.0.1", 1, 1)]);
        let e = classify_instances(&ServiceKey::new("default", "other"), &r).unwrap_err();
        assert!(matches!(e, DecodeError::Mismatch(_)));
    }
}
