//! The discovery snapshot of one service, in the shape the request path wants it.
//!
//! What a request needs that does not depend on the request (the `ip:port` string, selectability)
//! is computed here, once per snapshot change; instance pools and balancers are built from it by
//! the routing plan (`routing::plan`).

use std::collections::HashMap;
use std::fmt;

/// A Polaris service identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ServiceKey {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where an instance runs (Polaris `Location`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    pub region: String,
    pub zone: String,
    pub campus: String,
}

impl Location {
    /// No field known.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.campus.is_empty()
    }
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub host: String,
    pub port: u32,
    pub weight: u32,
    pub healthy: bool,
    pub isolated: bool,
    pub metadata: HashMap<String, String>,
    pub location: Location,
    /// `host:port` (`[host]:port` for IPv6), ready to be written into the upstream header.
    pub upstream: String,
}

impl Instance {
    /// Isolated and weight-0 instances never take traffic (polaris-go `ClusterValue.addInstance`).
    pub fn is_selectable(&self) -> bool {
        !self.isolated && self.weight > 0
    }
}

/// Formats the address the way Envoy's ORIGINAL_DST header parser expects it.
pub fn upstream_address(host: &str, port: u32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A decoded service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSnapshot {
    pub key: ServiceKey,
    pub revision: String,
    pub metadata: HashMap<String, String>,
    pub instances: Vec<Instance>,
}

impl ServiceSnapshot {
    pub fn new(
        key: ServiceKey,
        revision: String,
        metadata: HashMap<String, String>,
        instances: Vec<Instance>,
    ) -> ServiceSnapshot {
        ServiceSnapshot {
            key,
            revision,
            metadata,
            instances,
        }
    }

    pub fn instance(&self, index: usize) -> Option<&Instance> {
        self.instances.get(index)
    }
}
