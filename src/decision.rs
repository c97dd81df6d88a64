//! The request path, top to bottom, as a pure function: a service snapshot in, a decision out.

use std::fmt;

use crate::lb::Rng;
use crate::snapshot::{Instance, ServiceKey, ServiceSnapshot};

/// Where the request goes.
#[derive(Debug, PartialEq)]
pub struct Picked<'a> {
    pub instance: &'a Instance,
    /// No healthy instance was left, so all selectable ones were used (polaris-go recover-all).
    pub recovered_all: bool,
}

/// Why the filter answers the request itself instead of routing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The request does not name a service we can look up.
    NoDestination { source: String },
    /// Polaris does not know the service.
    ServiceNotFound(ServiceKey),
    /// The service exists but no instance may take traffic.
    NoInstance { service: ServiceKey, total: usize },
    /// The first discovery of the service failed.
    DiscoveryFailed { service: ServiceKey, cause: String },
    /// The watch list is full.
    TooManyServices { service: ServiceKey, limit: usize },
}

impl Rejection {
    pub fn status(&self) -> u32 {
        match self {
            Rejection::NoDestination { .. } => 400,
            _ => 503,
        }
    }

    /// Short machine-readable reason, sent as the `x-polaris-reason` header.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::NoDestination { .. } => "no-destination",
            Rejection::ServiceNotFound(_) => "service-not-found",
            Rejection::NoInstance { .. } => "no-instance",
            Rejection::DiscoveryFailed { .. } => "discovery-failed",
            Rejection::TooManyServices { .. } => "too-many-services",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NoDestination { source } => {
                write!(f, "request names no Polaris service in {source}")
            }
            Rejection::ServiceNotFound(s) => write!(
                f,
                "service {} not found in Polaris namespace {}",
                s.name, s.namespace
            ),
            Rejection::NoInstance { service, total } => write!(
                f,
                "no available instance of service {} in namespace {} ({total} instances, none \
                 selectable: isolated or weight 0)",
                service.name, service.namespace
            ),
            Rejection::DiscoveryFailed { service, cause } => write!(
                f,
                "cannot discover service {} in namespace {}: {cause}",
                service.name, service.namespace
            ),
            Rejection::TooManyServices { service, limit } => write!(
                f,
                "cannot watch service {} in namespace {}: already watching {limit} services \
                 (max_services)",
                service.name, service.namespace
            ),
        }
    }
}

/// Health/isolate filter, recover-all, weighted random pick.
pub fn pick<'a>(snapshot: &'a ServiceSnapshot, rng: &mut Rng) -> Result<Picked<'a>, Rejection> {
    let (table, recovered_all) = if snapshot.healthy().is_empty() {
        (snapshot.selectable(), true)
    } else {
        (snapshot.healthy(), false)
    };
    table
        .pick(rng)
        .and_then(|i| snapshot.instance(i))
        .map(|instance| Picked {
            instance,
            recovered_all,
        })
        .ok_or_else(|| Rejection::NoInstance {
            service: snapshot.key.clone(),
            total: snapshot.instances.len(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::model::upstream_address;
    use std::collections::HashMap;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn instance(port: u32, weight: u32, healthy: bool, isolated: bool) -> Instance {
        Instance {
            id: port.to_string(),
            host: "127.0.0.1".into(),
            port,
            weight,
            healthy,
            isolated,
            metadata: HashMap::new(),
            location: Default::default(),
            upstream: upstream_address("127.0.0.1", port),
        }
    }

    fn snapshot(instances: Vec<Instance>) -> ServiceSnapshot {
        ServiceSnapshot::new(
            ServiceKey::new("default", "echo"),
            "r".into(),
            HashMap::new(),
            instances,
        )
    }

    #[test]
    fn unhealthy_instances_are_avoided_while_a_healthy_one_exists() {
        let s = snapshot(vec![
            instance(1, 100, false, false),
            instance(2, 1, true, false),
        ]);
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            let p = pick(&s, &mut rng).unwrap();
            assert_eq!(p.instance.port, 2);
            assert!(!p.recovered_all);
        }
    }

    #[test]
    fn all_unhealthy_recovers_all_selectable() {
        let s = snapshot(vec![
            instance(1, 100, false, false),
            instance(2, 100, false, false),
            instance(3, 100, false, true),
        ]);
        let mut rng = Rng::new(3);
        let mut seen = [false; 4];
        for _ in 0..200 {
            let p = pick(&s, &mut rng).unwrap();
            assert!(p.recovered_all);
            seen[p.instance.port as usize] = true;
        }
        assert_eq!(seen, [false, true, true, false]);
    }

    #[test]
    fn nothing_selectable_is_a_503_naming_the_service() {
        let s = snapshot(vec![
            instance(1, 0, true, false),
            instance(2, 10, true, true),
        ]);
        let e = pick(&s, &mut Rng::new(1)).unwrap_err();
        assert_eq!(e.status(), 503);
        assert_eq!(e.reason(), "no-instance");
        assert!(e.to_string().contains("service echo in namespace default"));
    }

    #[test]
    fn not_found_body_names_service_and_namespace() {
        let e = Rejection::ServiceNotFound(ServiceKey::new("prod", "ghost"));
        assert_eq!(e.status(), 503);
        assert_eq!(
            e.to_string(),
            "service ghost not found in Polaris namespace prod"
        );
    }
}
