//! Building Polaris gRPC requests. Pure: the host layer only sends the bytes made here.

use prost::Message;

use super::proto;
use crate::model::{Kind, ServiceKey};

/// gRPC service of the Polaris client API.
pub const GRPC_SERVICE: &str = "v1.PolarisGRPC";
/// Discover is a bidi stream on the server; one request, half-close, one response works.
pub const DISCOVER_METHOD: &str = "Discover";
/// Longest cluster name [`envoy_grpc_service`] encodes (behind one-byte lengths).
pub const MAX_CLUSTER_NAME: usize = 120;
/// Metadata key the server reads a client token from.
pub const TOKEN_METADATA: &str = "x-polaris-token";

/// The `DiscoverRequestType` asking for `kind`.
pub fn request_type(kind: Kind) -> proto::discover_request::DiscoverRequestType {
    use proto::discover_request::DiscoverRequestType as T;
    match kind {
        Kind::Instances => T::Instance,
        Kind::Routing => T::Routing,
        Kind::RateLimit => T::RateLimit,
        Kind::CircuitBreaker => T::CircuitBreaker,
        Kind::FaultDetector => T::FaultDetector,
    }
}

/// A `Discover` request, carrying the revision we hold so an unchanged resource costs the server
/// a `DataNoChange` answer and us no decoding.
pub fn discover_request(kind: Kind, key: &ServiceKey, revision: &str) -> Vec<u8> {
    proto::DiscoverRequest {
        r#type: request_type(kind) as i32,
        service: Some(proto::Service {
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            revision: Some(revision.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The `upstream` argument of `proxy_grpc_call`: an encoded `envoy.config.core.v3.GrpcService`
/// naming the cluster. Envoy parses this argument as a `GrpcService` first, and a bare cluster
/// name can parse as a broken one and abort the process, so we always send the message.
///
/// Returns `None` for names that do not fit one-byte lengths or are not ASCII; config validation
/// keeps those out.
pub fn envoy_grpc_service(cluster: &str) -> Option<String> {
    let len = u8::try_from(cluster.len())
        .ok()
        .filter(|&l| usize::from(l) <= MAX_CLUSTER_NAME)?;
    if !cluster.is_ascii() {
        return None;
    }
    // GrpcService { envoy_grpc (1): EnvoyGrpc { cluster_name (1): cluster } }
    let mut out = String::with_capacity(cluster.len() + 4);
    out.push('\u{0a}');
    out.push(char::from(len + 2));
    out.push('\u{0a}');
    out.push(char::from(len));
    out.push_str(cluster);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn discover_request_carries_service_and_revision() {
        let key = ServiceKey::new("default", "echo");
        let bytes = discover_request(Kind::Instances, &key, "abc");
        let r = proto::DiscoverRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(r.r#type, 1);
        let s = r.service.unwrap();
        assert_eq!(s.name.as_deref(), Some("echo"));
        assert_eq!(s.namespace.as_deref(), Some("default"));
        assert_eq!(s.revision.as_deref(), Some("abc"));
    }

    #[test]
    fn grpc_service_encodes_envoy_grpc_cluster_name() {
        let s = envoy_grpc_service("polaris_grpc").unwrap();
        let mut expected = vec![0x0a, 14, 0x0a, 12];
        expected.extend_from_slice(b"polaris_grpc");
        assert_eq!(s.as_bytes(), expected.as_slice());
    }

    #[test]
    fn grpc_service_refuses_names_that_need_long_lengths() {
        assert!(envoy_grpc_service(&"a".repeat(121)).is_none());
        assert!(envoy_grpc_service("pölaris").is_none());
    }
}
