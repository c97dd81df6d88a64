//! What the filter reads from Envoy's node (`envoy.config.core.v3.Node`): its locality (nearby
//! routing's and the provider's default location), the metadata `INSTANCE_IPS` (the provider's
//! default address in an Istio sidecar) and Envoy's version (reported to Polaris).

use prost::Message;

use super::host::Properties;
use crate::model::Location;

/// The part of `envoy.config.core.v3.Node` we read.
#[derive(Clone, PartialEq, prost::Message)]
struct EnvoyNode {
    #[prost(message, optional, tag = "3")]
    metadata: Option<prost_types::Struct>,
    #[prost(message, optional, tag = "4")]
    locality: Option<EnvoyLocality>,
    #[prost(message, optional, tag = "8")]
    user_agent_build_version: Option<BuildVersion>,
}

/// `envoy.config.core.v3.Locality`.
#[derive(Clone, PartialEq, prost::Message)]
struct EnvoyLocality {
    #[prost(string, tag = "1")]
    region: String,
    #[prost(string, tag = "2")]
    zone: String,
    #[prost(string, tag = "3")]
    sub_zone: String,
}

/// `envoy.config.core.v3.BuildVersion`.
#[derive(Clone, PartialEq, prost::Message)]
struct BuildVersion {
    #[prost(message, optional, tag = "1")]
    version: Option<SemanticVersion>,
}

/// `envoy.type.v3.SemanticVersion`.
#[derive(Clone, PartialEq, prost::Message)]
struct SemanticVersion {
    #[prost(uint32, tag = "1")]
    major_number: u32,
    #[prost(uint32, tag = "2")]
    minor_number: u32,
    #[prost(uint32, tag = "3")]
    patch: u32,
}

/// Node metadata key Istio fills with the workload's IPs (comma-separated).
pub const INSTANCE_IPS: &str = "INSTANCE_IPS";

/// Envoy's node, as far as we use it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub locality: Location,
    /// The first of `INSTANCE_IPS`, if the node metadata has it.
    pub instance_ip: Option<String>,
    /// `1.40.0`, or empty.
    pub envoy_version: String,
}

/// Envoy's node; `None` when the node property cannot be read. The property is the serialized
/// Node message (Envoy does not walk into its fields by path): `xds.node` in current Envoy,
/// `node` in older ones.
pub fn read<P: Properties + ?Sized>(host: &P) -> Option<Node> {
    let node = [&["xds", "node"][..], &["node"][..]]
        .into_iter()
        .find_map(|path| {
            host.property(path)
                .and_then(|bytes| EnvoyNode::decode(bytes.as_slice()).ok())
        })?;
    let locality = node.locality.unwrap_or_default();
    let instance_ip = node
        .metadata
        .and_then(|m| m.fields.get(INSTANCE_IPS).cloned())
        .and_then(|v| match v.kind {
            Some(prost_types::value::Kind::StringValue(s)) => s
                .split(',')
                .map(str::trim)
                .find(|ip| !ip.is_empty())
                .map(str::to_string),
            _ => None,
        });
    let envoy_version = node
        .user_agent_build_version
        .and_then(|b| b.version)
        .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
        .unwrap_or_default();
    Some(Node {
        locality: Location {
            region: locality.region,
            zone: locality.zone,
            campus: locality.sub_zone,
        },
        instance_ip,
        envoy_version,
    })
}

/// Encodes a node (tests build the property bytes with it).
#[cfg(test)]
pub fn encode_for_test(
    locality: (&str, &str),
    instance_ips: Option<&str>,
    version: u32,
) -> Vec<u8> {
    let metadata = instance_ips.map(|ips| prost_types::Struct {
        fields: [(
            INSTANCE_IPS.to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(ips.to_string())),
            },
        )]
        .into_iter()
        .collect(),
    });
    EnvoyNode {
        metadata,
        locality: Some(EnvoyLocality {
            region: locality.0.to_string(),
            zone: locality.1.to_string(),
            sub_zone: String::new(),
        }),
        user_agent_build_version: Some(BuildVersion {
            version: Some(SemanticVersion {
                major_number: 1,
                minor_number: version,
                patch: 0,
            }),
        }),
    }
    .encode_to_vec()
}
