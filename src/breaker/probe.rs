//! Fault detection (polaris-go `composite/checker.go`, `plugin/healthcheck/{http,tcp}`): the
//! FAULT_DETECTOR rules of a service compiled into probes, the request each probe sends, and how
//! its answer is read. The leader sends the probes through Envoy (`dispatch_http_call` to an
//! ORIGINAL_DST cluster), so there is no raw TCP or UDP:
//!
//! - HTTP: the rule's method, url and headers to `ip:port`; success is a status in 200-499.
//! - TCP: a connect check. The probe is an HTTP request; a refused or timed-out connection
//!   (Envoy's `remote connection failure` / `connection timeout` answer) is a failure, anything
//!   else means the port accepted the connection. `send`/`receive` payloads are not supported.
//! - UDP: skipped and logged.
//!
//! Per protocol the first rule (the specific target service before the wildcard) whose target
//! names the service and covers every method (empty or `*`) applies.

use std::cmp::Ordering;

use crate::model::ServiceKey;
use crate::polaris::proto;
use crate::snapshot::{decode_fault_detector, DecodeError};

/// polaris-go's interval when a rule gives none (`defaultCheckInterval`).
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// Probe timeout when a rule gives none.
pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;

/// What one probe sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Http {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// A connect check.
    Tcp,
}

/// One compiled FAULT_DETECTOR rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detector {
    pub name: String,
    pub check: Check,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// A fixed port to probe instead of each instance's own.
    pub port: Option<u32>,
}

impl Detector {
    /// The headers of the probe to `host:port` (the instance's `ip:port` goes in
    /// `upstream_header`, which the probe cluster reads).
    pub fn request(&self, upstream_header: &str, host: &str, port: u32) -> Vec<(String, String)> {
        let target = crate::model::upstream_address(host, self.port.unwrap_or(port));
        let (method, path, extra): (&str, &str, &[(String, String)]) = match &self.check {
            Check::Http {
                method,
                path,
                headers,
                ..
            } => (method, path, headers),
            Check::Tcp => ("GET", "/", &[]),
        };
        let mut out = vec![
            (":method".to_string(), method.to_string()),
            (":path".to_string(), path.to_string()),
            (":authority".to_string(), target.clone()),
        ];
        for (k, v) in extra {
            let k = k.to_ascii_lowercase();
            if k == "host" {
                if let Some(a) = out.iter_mut().find(|(n, _)| n == ":authority") {
                    a.1 = v.clone();
                }
            } else if !k.starts_with(':') && k != upstream_header {
                out.push((k, v.clone()));
            }
        }
        out.push((upstream_header.to_string(), target));
        out
    }

    pub fn body(&self) -> Option<&[u8]> {
        match &self.check {
            Check::Http { body, .. } if !body.is_empty() => Some(body.as_bytes()),
            _ => None,
        }
    }

    /// Whether an answer means the instance is up. `status` is `None` when the call itself failed
    /// (no answer within the timeout): a failure for both kinds.
    pub fn succeeded(&self, status: Option<u32>, body: &[u8]) -> bool {
        match self.check {
            Check::Http { .. } => {
                status.is_some_and(|s| (200..500).contains(&s)) && !connect_failed(status, body)
            }
            Check::Tcp => status.is_some() && !connect_failed(status, body),
        }
    }
}

/// Envoy's own answer when it could not connect: a 503 whose body names the reset reason.
fn connect_failed(status: Option<u32>, body: &[u8]) -> bool {
    if status != Some(503) {
        return false;
    }
    let text = String::from_utf8_lossy(body);
    text.contains("remote connection failure")
        || text.contains("connection failure")
        || text.contains("connection timeout")
}

/// Compiles the stored FAULT_DETECTOR answer of `key`: the detectors that apply, and the rules
/// skipped (logged by name).
pub fn compile(key: &ServiceKey, bytes: &[u8]) -> Result<Vec<Detector>, DecodeError> {
    let rules = decode_fault_detector(key, bytes)?;
    let (detectors, skipped) = select(key, &rules);
    for e in skipped {
        log::warn!("fault detection of {key}: {e}");
    }
    Ok(detectors)
}

/// Picks the first applicable rule per protocol.
pub fn select(key: &ServiceKey, rules: &[proto::FaultDetectRule]) -> (Vec<Detector>, Vec<String>) {
    use proto::fault_detect_rule::Protocol;
    let mut sorted: Vec<&proto::FaultDetectRule> = rules.iter().collect();
    sorted.sort_by(|a, b| order(a, b));
    let mut out: Vec<Detector> = Vec::new();
    let mut skipped = Vec::new();
    let mut taken = [false; 2];
    for rule in sorted {
        let target = rule.target_service.clone().unwrap_or_default();
        if !names(&target.namespace, &key.namespace) || !names(&target.service, &key.name) {
            continue;
        }
        let api_path = target
            .api
            .as_ref()
            .and_then(|a| a.path.as_ref())
            .and_then(|p| p.value.clone());
        let method = target.method.as_ref().and_then(|m| m.value.clone());
        if !api_path.or(method).is_none_or(|v| is_any(&v)) {
            continue;
        }
        let (slot, check) = match Protocol::try_from(rule.protocol) {
            Ok(Protocol::Http) => {
                let http = rule.http_config.clone().unwrap_or_default();
                let method = if http.method.is_empty() {
                    "GET".to_string()
                } else {
                    http.method.to_ascii_uppercase()
                };
                if !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                    skipped.push(format!(
                        "rule {} skipped: bad HTTP method `{method}`",
                        rule.name
                    ));
                    continue;
                }
                let path = format!("/{}", http.url.trim_start_matches('/'));
                if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                    skipped.push(format!(
                        "rule {} skipped: bad url `{}`",
                        rule.name, http.url
                    ));
                    continue;
                }
                let headers = http
                    .headers
                    .iter()
                    .filter(|h| valid_header(&h.key, &h.value))
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect();
                (
                    0,
                    Check::Http {
                        method,
                        path,
                        headers,
                        body: http.body,
                    },
                )
            }
            Ok(Protocol::Tcp) => (1, Check::Tcp),
            Ok(Protocol::Udp) => {
                skipped.push(format!(
                    "rule {} skipped: UDP probes have no host ABI in proxy-wasm",
                    rule.name
                ));
                continue;
            }
            _ => {
                skipped.push(format!(
                    "rule {} skipped: unknown protocol {}",
                    rule.name, rule.protocol
                ));
                continue;
            }
        };
        let Some(free) = taken.get_mut(slot) else {
            continue;
        };
        if *free {
            continue;
        }
        *free = true;
        if matches!(check, Check::Tcp)
            && rule
                .tcp_config
                .as_ref()
                .is_some_and(|t| !t.send.is_empty() || !t.receive.is_empty())
        {
            skipped.push(format!(
                "rule {}: TCP send/receive payloads are not supported; probing as a connect check",
                rule.name
            ));
        }
        out.push(Detector {
            name: rule.name.clone(),
            check,
            interval_ms: match rule.interval {
                0 => DEFAULT_INTERVAL_MS,
                s => u64::from(s).saturating_mul(1000),
            },
            timeout_ms: match rule.timeout {
                0 => DEFAULT_TIMEOUT_MS,
                ms => u64::from(ms),
            },
            port: (rule.port > 0 && rule.port <= 65535).then_some(rule.port),
        });
    }
    (out, skipped)
}

fn is_any(v: &str) -> bool {
    let v = v.trim();
    v.is_empty() || v == "*"
}

fn names(rule: &str, actual: &str) -> bool {
    is_any(rule) || rule.trim() == actual
}

fn valid_header(key: &str, value: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// polaris-go `sortFaultDetectRules`: the specific target before the wildcard.
fn order(a: &proto::FaultDetectRule, b: &proto::FaultDetectRule) -> Ordering {
    let target = |r: &proto::FaultDetectRule| {
        let t = r.target_service.clone().unwrap_or_default();
        (
            is_any(&t.namespace),
            t.namespace,
            is_any(&t.service),
            t.service,
        )
    };
    target(a).cmp(&target(b)).then_with(|| a.id.cmp(&b.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::fault_detect_rule::Protocol;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn key() -> ServiceKey {
        ServiceKey::new("default", "echo")
    }

    fn rule(name: &str, protocol: Protocol, service: &str) -> proto::FaultDetectRule {
        proto::FaultDetectRule {
            id: format!("id-{name}"),
            name: name.into(),
            target_service: Some(proto::fault_detect_rule::DestinationService {
                service: service.into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            interval: 2,
            timeout: 500,
            protocol: protocol as i32,
            http_config: Some(proto::HttpProtocolConfig {
                method: "get".into(),
                url: "health".into(),
                headers: vec![
                    proto::http_protocol_config::MessageHeader {
                        key: "Host".into(),
                        value: "echo.internal".into(),
                    },
                    proto::http_protocol_config::MessageHeader {
                        key: "x-polaris-upstream".into(),
                        value: "10.6.6.6:22".into(),
                    },
                    proto::http_protocol_config::MessageHeader {
                        key: "x-probe".into(),
                        value: "1".into(),
                    },
                ],
                body: String::new(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_http_probe_goes_to_the_instance_with_the_rules_method_url_and_headers() {
        let (d, skipped) = select(&key(), &[rule("hc", Protocol::Http, "echo")]);
        assert!(skipped.is_empty());
        let d = &d[0];
        assert_eq!((d.interval_ms, d.timeout_ms), (2000, 500));
        assert_eq!(
            d.request("x-polaris-upstream", "127.0.0.1", 8080),
            vec![
                (":method".into(), "GET".into()),
                (":path".into(), "/health".into()),
                (":authority".into(), "echo.internal".into()),
                ("x-probe".into(), "1".into()),
                ("x-polaris-upstream".into(), "127.0.0.1:8080".into()),
            ],
            "the rule cannot choose where the probe goes"
        );
        assert!(d.succeeded(Some(200), b""));
        assert!(d.succeeded(Some(404), b""));
        assert!(!d.succeeded(Some(500), b""));
        assert!(!d.succeeded(
            Some(503),
            b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
        ));
        assert!(!d.succeeded(None, b""));
    }

    #[test]
    fn a_tcp_probe_is_a_connect_check() {
        let mut tcp = rule("tcp", Protocol::Tcp, "echo");
        tcp.port = 9000;
        tcp.tcp_config = Some(proto::TcpProtocolConfig {
            send: "PING".into(),
            receive: vec!["PONG".into()],
        });
        let (d, skipped) = select(&key(), &[tcp]);
        assert_eq!(skipped.len(), 1, "payloads are named as unsupported");
        let d = &d[0];
        assert_eq!(
            d.request("x-u", "127.0.0.1", 1).last().cloned(),
            Some(("x-u".into(), "127.0.0.1:9000".into()))
        );
        assert!(d.succeeded(Some(503), b"reset reason: connection termination"));
        assert!(d.succeeded(Some(400), b""));
        assert!(!d.succeeded(Some(503), b"reset reason: remote connection failure"));
        assert!(!d.succeeded(Some(503), b"reset reason: connection timeout"));
    }

    #[test]
    fn one_rule_per_protocol_the_specific_target_first_and_udp_skipped() {
        let wild = rule("a-wild", Protocol::Http, "*");
        let own = rule("b-own", Protocol::Http, "echo");
        let other = rule("other", Protocol::Http, "cart");
        let udp = rule("udp", Protocol::Udp, "echo");
        let (d, skipped) = select(&key(), &[wild, own, other, udp]);
        assert_eq!(
            d.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["b-own"]
        );
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("rule udp skipped"), "{skipped:?}");
    }

    #[test]
    fn rules_for_one_method_only_do_not_probe_instances() {
        let mut m = rule("m", Protocol::Http, "echo");
        if let Some(t) = m.target_service.as_mut() {
            t.method = Some(proto::MatchString {
                value: Some("/pay".into()),
                ..Default::default()
            });
        }
        assert!(select(&key(), &[m]).0.is_empty());
    }
}
