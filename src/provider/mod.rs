//! The provider side: this Envoy registers the service it fronts in Polaris, heartbeats it, and
//! takes it out of Polaris before it stops. Pure: the configuration, the messages sent to Polaris,
//! the shared record and its state machine ([`record`]); `crate::core::provider` drives them over
//! the host traits.

pub mod record;

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;

use crate::model::{Location, ServiceKey};
use crate::polaris::proto;

/// Default local path of the offline trigger.
pub const DEFAULT_OFFLINE_PATH: &str = "/polaris-wasm/offline";
/// Default local path of the status answer.
pub const DEFAULT_STATUS_PATH: &str = "/polaris-wasm/status";
/// Default heartbeat TTL (polaris-go's default, and the server's when none is sent).
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// How often polaris-go reports its client (`DefaultReportClientIntervalDuration`).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(120);
/// The version this filter reports as a Polaris client.
pub const CLIENT_VERSION: &str = concat!("polaris-wasm/", env!("CARGO_PKG_VERSION"));

/// `provider` in the plugin configuration: the instance this Envoy registers for the service it
/// fronts.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderConfig {
    pub service: ServiceKey,
    /// The address consumers should call; `None` takes Envoy's node metadata `INSTANCE_IPS`
    /// (set by Istio's sidecar injector to the pod IPs).
    pub host: Option<String>,
    pub port: u32,
    pub protocol: String,
    pub version: String,
    pub weight: u32,
    pub metadata: BTreeMap<String, String>,
    /// `None` takes the plugin's `location`, else Envoy's node locality.
    pub location: Option<Location>,
    /// Heartbeat TTL: a heartbeat every TTL; Polaris marks the instance unhealthy after 3 × TTL
    /// without one. Whole seconds, 1 to 60 (the server replaces anything else with 5).
    pub ttl: Duration,
    /// `Instance.service_token`, when the service requires one.
    pub token: Option<String>,
    /// The local path that deregisters the instance (loopback only).
    pub offline_path: String,
    /// The local path answering this instance's registration state (loopback only).
    pub status_path: String,
    /// Where Prometheus can scrape this Envoy's stats (`port`, `path`), reported with
    /// `ReportClient` as polaris-go reports its own; Polaris lists it in `/prometheus/v1/clients`.
    pub metrics: Option<(u32, String)>,
    /// The readiness gate: register only once the local service answers this probe with a 2xx,
    /// and heartbeat only while it does.
    pub readiness: Option<Readiness>,
}

/// `provider.readiness`: `GET path` through an Envoy cluster that reaches the local service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub cluster: String,
    pub path: String,
    pub timeout: Duration,
}

impl ProviderConfig {
    pub fn new(service: ServiceKey, port: u32) -> ProviderConfig {
        ProviderConfig {
            service,
            host: None,
            port,
            protocol: String::new(),
            version: String::new(),
            weight: 100,
            metadata: BTreeMap::new(),
            location: None,
            ttl: DEFAULT_TTL,
            token: None,
            offline_path: DEFAULT_OFFLINE_PATH.to_string(),
            status_path: DEFAULT_STATUS_PATH.to_string(),
            metrics: None,
            readiness: None,
        }
    }
}

/// A provider with its address and location settled: everything needed to build its messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub config: ProviderConfig,
    pub host: String,
    pub location: Location,
}

impl Instance {
    /// `ns/service host:port`, for logs and the status answer.
    pub fn label(&self) -> String {
        format!("{} {}:{}", self.config.service, self.host, self.config.port)
    }

    /// Shared-data key of this instance's record: one per registered identity, so two
    /// configurations of the same Envoy never share one.
    pub fn record_key(&self) -> String {
        format!(
            "polaris-wasm/provider/{}/{}/{}:{}",
            self.config.service.namespace, self.config.service.name, self.host, self.config.port
        )
    }

    fn identity(&self, id: &str) -> proto::Instance {
        let c = &self.config;
        proto::Instance {
            id: (!id.is_empty()).then(|| id.to_string()),
            service: Some(c.service.name.clone()),
            namespace: Some(c.service.namespace.clone()),
            host: Some(self.host.clone()),
            port: Some(c.port),
            service_token: c.token.clone(),
            ..Default::default()
        }
    }

    /// `RegisterInstance`, as polaris-go builds it: identity, attributes, and a heartbeat health
    /// check with our TTL (enable_health_check left unset, as polaris-go does).
    pub fn register_message(&self) -> Vec<u8> {
        self.registration(false)
    }

    /// The same registration with `isolate: true`: the offline trigger's first step. Consumers
    /// (polaris-go, this filter) never pick an isolated instance, and unlike a deletion, an
    /// update is always seen by Polaris' cache (see `offline` in `crate::core::provider`).
    pub fn isolate_message(&self) -> Vec<u8> {
        self.registration(true)
    }

    fn registration(&self, isolate: bool) -> Vec<u8> {
        let c = &self.config;
        let location = &self.location;
        let mut m = self.identity("");
        m.protocol = (!c.protocol.is_empty()).then(|| c.protocol.clone());
        m.version = (!c.version.is_empty()).then(|| c.version.clone());
        m.weight = Some(c.weight);
        m.healthy = Some(true);
        m.isolate = Some(isolate);
        m.metadata = c.metadata.clone().into_iter().collect();
        if !location.is_empty() {
            m.location = Some(proto::Location {
                region: Some(location.region.clone()),
                zone: Some(location.zone.clone()),
                campus: Some(location.campus.clone()),
            });
        }
        m.health_check = Some(proto::HealthCheck {
            r#type: proto::health_check::HealthCheckType::Heartbeat as i32,
            heartbeat: Some(proto::HeartbeatHealthCheck {
                ttl: Some(u32::try_from(c.ttl.as_secs()).unwrap_or(5)),
            }),
        });
        m.encode_to_vec()
    }

    /// `Heartbeat` and `DeregisterInstance`: the identity (the id when Polaris gave one).
    pub fn identity_message(&self, id: &str) -> Vec<u8> {
        self.identity(id).encode_to_vec()
    }

    /// `ReportClient`: this Envoy as a Polaris client (polaris-go sends id, host, type SDK and
    /// version; the server stores clients that carry an id).
    pub fn report_message(&self, envoy_version: &str) -> Vec<u8> {
        let version = if envoy_version.is_empty() {
            CLIENT_VERSION.to_string()
        } else {
            format!("{CLIENT_VERSION} envoy/{envoy_version}")
        };
        proto::Client {
            host: Some(self.host.clone()),
            r#type: proto::client::ClientType::Sdk as i32,
            version: Some(version),
            id: Some(format!(
                "polaris-wasm-{}-{}-{}",
                self.host, self.config.port, self.config.service.name
            )),
            stat: self
                .config
                .metrics
                .iter()
                .map(|(port, path)| proto::StatInfo {
                    target: Some("prometheus".into()),
                    port: Some(*port),
                    path: Some(path.clone()),
                    protocol: Some("http".into()),
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// Changes whenever what we register changes, so a new configuration re-registers.
    pub fn fingerprint(&self) -> u64 {
        fnv1a(&self.register_message())
    }
}

/// 64-bit FNV-1a: stable across VMs and builds (std's hasher is seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether an `ip:port` (or `[ip]:port`, or a bare ip) is a loopback address: 127.0.0.0/8, ::1,
/// or 127.x mapped into IPv6.
pub fn is_loopback(address: &str) -> bool {
    let host = match address.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(h, _)| h),
        None => match address.rsplit_once(':') {
            Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => address,
        },
    };
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(std::net::IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// What a Polaris answer to a provider call said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub code: u32,
    pub info: String,
    /// `Response.instance.id`, when the server named the instance.
    pub id: String,
}

/// Decodes a `v1.Response`; `None` when the bytes are not one.
pub fn decode_answer(bytes: &[u8]) -> Option<Answer> {
    let r = proto::Response::decode(bytes).ok()?;
    Some(Answer {
        code: r.code.unwrap_or(0),
        info: r.info.unwrap_or_default(),
        id: r.instance.and_then(|i| i.id).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn instance() -> Instance {
        let mut c = ProviderConfig::new(ServiceKey::new("default", "echo"), 8080);
        c.metadata.insert("env".into(), "gray".into());
        c.version = "v2".into();
        c.ttl = Duration::from_secs(2);
        c.token = Some("tok".into());
        Instance {
            config: c,
            host: "10.0.0.5".into(),
            location: Location {
                region: "r1".into(),
                zone: "z1".into(),
                campus: String::new(),
            },
        }
    }

    #[test]
    fn register_carries_identity_attributes_and_the_heartbeat_ttl() {
        let m = proto::Instance::decode(instance().register_message().as_slice()).unwrap();
        assert_eq!(m.service.as_deref(), Some("echo"));
        assert_eq!(m.namespace.as_deref(), Some("default"));
        assert_eq!(m.host.as_deref(), Some("10.0.0.5"));
        assert_eq!(m.port, Some(8080));
        assert_eq!(m.version.as_deref(), Some("v2"));
        assert_eq!(m.protocol, None);
        assert_eq!(m.weight, Some(100));
        assert_eq!(m.healthy, Some(true));
        assert_eq!(m.service_token.as_deref(), Some("tok"));
        assert_eq!(m.metadata.get("env").map(String::as_str), Some("gray"));
        assert_eq!(m.location.unwrap().zone.as_deref(), Some("z1"));
        let hc = m.health_check.unwrap();
        assert_eq!(hc.r#type, 1);
        assert_eq!(hc.heartbeat.unwrap().ttl, Some(2));
        assert_eq!(
            m.enable_health_check, None,
            "left to the server, as polaris-go"
        );
        assert_eq!(m.id, None);
        let isolated = proto::Instance::decode(instance().isolate_message().as_slice()).unwrap();
        assert_eq!(isolated.isolate, Some(true));
        assert_eq!(isolated.port, Some(8080));
    }

    #[test]
    fn heartbeat_identity_names_the_instance_by_id_and_tetrad() {
        let m = proto::Instance::decode(instance().identity_message("abc").as_slice()).unwrap();
        assert_eq!(m.id.as_deref(), Some("abc"));
        assert_eq!(m.host.as_deref(), Some("10.0.0.5"));
        assert_eq!(m.port, Some(8080));
        assert_eq!(m.health_check, None);
        let m = proto::Instance::decode(instance().identity_message("").as_slice()).unwrap();
        assert_eq!(m.id, None);
    }

    #[test]
    fn fingerprint_follows_what_is_registered() {
        let a = instance();
        let mut b = instance();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.config.weight = 50;
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn report_names_this_envoy() {
        let m = proto::Client::decode(instance().report_message("1.40.0").as_slice()).unwrap();
        assert_eq!(m.host.as_deref(), Some("10.0.0.5"));
        assert_eq!(m.r#type, 1);
        assert!(m.version.unwrap().ends_with("envoy/1.40.0"));
        assert_eq!(m.id.as_deref(), Some("polaris-wasm-10.0.0.5-8080-echo"));
        assert!(m.stat.is_empty());
        let mut i = instance();
        i.config.metrics = Some((9901, "/stats/prometheus".into()));
        let m = proto::Client::decode(i.report_message("").as_slice()).unwrap();
        let stat = &m.stat[0];
        assert_eq!(stat.target.as_deref(), Some("prometheus"));
        assert_eq!(
            (stat.port, stat.path.as_deref()),
            (Some(9901), Some("/stats/prometheus"))
        );
        assert_eq!(m.version.as_deref(), Some(CLIENT_VERSION));
    }

    #[test]
    fn loopback_addresses_are_recognised_and_nothing_else() {
        for a in [
            "127.0.0.1:5000",
            "127.9.9.9:1",
            "[::1]:80",
            "::1",
            "127.0.0.1",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "10.0.0.1:5000",
            "[::ffff:10.0.0.1]:1",
            "0.0.0.0:1",
            "localhost:80",
            "",
            "[::1",
            "128.0.0.1:2",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
        assert!(is_loopback("[::ffff:127.0.0.1]:9"));
    }

    #[test]
    fn answers_decode_code_info_and_instance_id() {
        let bytes = proto::Response {
            code: Some(200_000),
            info: Some("execute success".into()),
            instance: Some(proto::Instance {
                id: Some("i1".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            decode_answer(&bytes),
            Some(Answer {
                code: 200_000,
                info: "execute success".into(),
                id: "i1".into()
            })
        );
        assert_eq!(decode_answer(b"\xff\xff"), None);
    }
}
