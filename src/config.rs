//! Plugin configuration: the JSON given to `on_configure`, validated into a typed [`Config`].
//!
//! Every error names the field and the reason, because the only place an operator sees it is an
//! Envoy log line (or `envoy --mode validate`). Unknown fields are rejected so a typo is not
//! silently ignored.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::destination::valid_name;
use crate::lb::{ring_hash, Options, Policy, Spec};
use crate::matching::Arg;
use crate::model::{Kind, Location, ServiceKey};
use crate::polaris::client::MAX_CLUSTER_NAME;
use crate::routing::metadata::MAX_KEYS;
use crate::routing::{Caller, Failover, Level, MetaFailover, MetadataRouting, Nearby};

/// A validated plugin configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Envoy cluster (HTTP/2) that reaches the Polaris gRPC API (`service-grpc`).
    pub polaris_cluster: String,
    /// Namespace for destinations that do not name one.
    pub namespace: String,
    /// How often the leader re-discovers each watched service.
    pub refresh_interval: Duration,
    /// Deadline of one `Discover` call.
    pub discover_timeout: Duration,
    /// How long a request for a service not yet loaded may wait for its first discovery.
    pub lazy_load_timeout: Duration,
    /// Sent as gRPC metadata `x-polaris-token` when Polaris client auth is on.
    pub token: Option<String>,
    /// Request header the ORIGINAL_DST cluster reads the chosen `ip:port` from.
    pub upstream_header: String,
    /// Where a request names its destination service.
    pub destination: DestinationSource,
    /// Upper bound on watched services, so hostile `Host` headers cannot grow state forever.
    pub max_services: usize,
    /// This Envoy's own service: inbound rule sources are matched against it, its outbound rules
    /// apply, and its metadata answers custom rule keys and VARIABLE values.
    pub caller: Caller,
    /// What rule routing does when rules exist but none matched.
    pub failover: Failover,
    /// The load balancer and, for hash policies, where the key comes from: a default and
    /// per-service choices.
    pub load_balancing: LoadBalancing,
    /// Whether `x-polaris-debug: 1` on a request adds the decision trace to its response.
    pub debug_trace: bool,
    /// This Envoy's location and the nearby-routing levels. An empty location is filled from
    /// Envoy's node locality by the host.
    pub nearby: Nearby,
    /// Metadata routing: request headers naming wanted instance labels.
    pub metadata: MetadataRouting,
}

/// Which balancer a service uses: `load_balancer` in the plugin configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadBalancing {
    /// The policy and its tuning (`policy`, `ring_hash.vnodes`).
    pub balancer: Spec,
    /// Where a hash balancer's key comes from: a request argument (header, cookie, query or
    /// caller IP).
    pub hash_key: Option<Arg>,
    /// `load_balancer.services`: per-service choices, inheriting the default key and tuning.
    pub services: Vec<ServiceBalancing>,
}

/// One entry of `load_balancer.services`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceBalancing {
    /// An empty namespace stands for the configured default namespace.
    pub service: ServiceKey,
    pub balancer: Spec,
    pub hash_key: Option<Arg>,
}

impl Config {
    /// The kinds the leader keeps refreshed for each watched service. Rate-limit, breaker and
    /// fault-detection rules join when the configuration enforces them.
    pub fn kinds(&self) -> Vec<Kind> {
        vec![Kind::Instances, Kind::Routing]
    }

    /// The kinds a request for a service not yet loaded waits for: what its decision needs,
    /// never more.
    pub fn first_load_kinds(&self) -> Vec<Kind> {
        vec![Kind::Instances, Kind::Routing]
    }
}

impl Config {
    /// The balancer of `service` and, for hash policies, where its key comes from.
    pub fn balancing(&self, service: &ServiceKey) -> (Spec, Option<&Arg>) {
        let lb = &self.load_balancing;
        lb.services
            .iter()
            .find(|s| {
                s.service.name == service.name
                    && (s.service.namespace == service.namespace
                        || (s.service.namespace.is_empty() && service.namespace == self.namespace))
            })
            .map_or((lb.balancer, lb.hash_key.as_ref()), |s| {
                (s.balancer, s.hash_key.as_ref())
            })
    }
}

/// Where the destination service of a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestinationSource {
    /// `:authority` (port stripped) as `service` or `service.namespace`.
    Authority,
    /// A request header holding `service` or `service.namespace`.
    Header(String),
}

impl DestinationSource {
    /// Where the destination was looked for, for the 400 body.
    pub fn describe(&self) -> String {
        match self {
            DestinationSource::Authority => ":authority".to_string(),
            DestinationSource::Header(h) => format!("header {h}"),
        }
    }

    /// The request header that holds the destination.
    pub fn header(&self) -> &str {
        match self {
            DestinationSource::Authority => ":authority",
            DestinationSource::Header(h) => h,
        }
    }
}

/// Why a configuration was rejected: the field and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid plugin configuration: field `{}`: {}",
            self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

fn err(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// The top-level fields of the plugin JSON; any other is rejected.
pub const KNOWN_FIELDS: &[&str] = &[
    "polaris_cluster",
    "namespace",
    "refresh_interval",
    "discover_timeout",
    "lazy_load_timeout",
    "token",
    "upstream_header",
    "destination",
    "max_services",
    "caller",
    "routing",
    "load_balancer",
    "debug_trace",
    "location",
    "nearby",
    "metadata_routing",
];

impl Config {
    /// Parses and validates the plugin JSON.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Map::new())
        } else {
            serde_json::from_slice(bytes).map_err(|e| err("<root>", format!("not JSON: {e}")))?
        };
        let Value::Object(map) = value else {
            return Err(err("<root>", "must be a JSON object"));
        };
        if let Some(unknown) = map.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
            return Err(err(
                unknown,
                format!(
                    "unknown field; known fields are {}",
                    KNOWN_FIELDS.join(", ")
                ),
            ));
        }

        let polaris_cluster = string(&map, "polaris_cluster")?.ok_or_else(|| {
            err(
                "polaris_cluster",
                "is required (the Envoy cluster of the Polaris gRPC API)",
            )
        })?;
        if polaris_cluster.is_empty()
            || polaris_cluster.len() > MAX_CLUSTER_NAME
            || !polaris_cluster.is_ascii()
        {
            return Err(err(
                "polaris_cluster",
                format!("must be 1 to {MAX_CLUSTER_NAME} ASCII characters"),
            ));
        }
        let namespace = string(&map, "namespace")?.unwrap_or_else(|| "default".to_string());
        // Requests naming a bare service are looked up here, so it must be a name they can use.
        if !valid_name(&namespace) {
            return Err(err(
                "namespace",
                format!(
                    "`{namespace}` is not a Polaris namespace name (1 to 128 letters, digits, \
                     `-`, `_`, `.`, `:`)"
                ),
            ));
        }
        let refresh_interval =
            duration(&map, "refresh_interval")?.unwrap_or(Duration::from_secs(2));
        if refresh_interval < Duration::from_millis(100)
            || refresh_interval > Duration::from_secs(600)
        {
            return Err(err("refresh_interval", "must be between 100ms and 600s"));
        }
        let discover_timeout =
            duration(&map, "discover_timeout")?.unwrap_or(Duration::from_secs(2));
        if discover_timeout < Duration::from_millis(10)
            || discover_timeout > Duration::from_secs(60)
        {
            return Err(err("discover_timeout", "must be between 10ms and 60s"));
        }
        let lazy_load_timeout =
            duration(&map, "lazy_load_timeout")?.unwrap_or(Duration::from_secs(3));
        if lazy_load_timeout > Duration::from_secs(60) {
            return Err(err("lazy_load_timeout", "must be at most 60s"));
        }
        let token = string(&map, "token")?.filter(|t| !t.is_empty());
        let upstream_header =
            string(&map, "upstream_header")?.unwrap_or_else(|| "x-polaris-upstream".to_string());
        validate_header_name("upstream_header", &upstream_header)?;
        let destination = destination(&map)?;
        let max_services = match map.get("max_services") {
            None => 256,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=100_000).contains(n))
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| err("max_services", "must be an integer from 1 to 100000"))?,
        };

        let caller = caller(&map, &namespace)?;
        let failover = failover(&map)?;
        let load_balancing = load_balancer(&map)?;
        let debug_trace = match map.get("debug_trace") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(err(
                    "debug_trace",
                    format!("must be a boolean, got {}", kind(other)),
                ))
            }
        };

        let nearby = nearby(&map)?;
        let metadata = metadata_routing(&map)?;

        Ok(Config {
            polaris_cluster,
            namespace,
            refresh_interval,
            discover_timeout,
            lazy_load_timeout,
            token,
            upstream_header,
            destination,
            max_services,
            caller,
            failover,
            load_balancing,
            debug_trace,
            nearby,
            metadata,
        })
    }
}

fn metadata_routing(map: &Map<String, Value>) -> Result<MetadataRouting, ConfigError> {
    let Some(obj) = object(map, "metadata_routing", &["headers", "failover"])? else {
        return Ok(MetadataRouting::default());
    };
    let mut labels = Vec::new();
    match obj.get("headers") {
        Some(Value::Object(headers)) if !headers.is_empty() && headers.len() <= MAX_KEYS => {
            for (header, key) in headers {
                let field = format!("metadata_routing.headers.{header}");
                validate_header_name(&field, header)?;
                let Value::String(key) = key else {
                    return Err(err(&field, "must be the instance metadata key (a string)"));
                };
                if key.is_empty() {
                    return Err(err(&field, "must not be empty"));
                }
                labels.push((header.clone(), key.clone()));
            }
        }
        _ => {
            return Err(err(
                "metadata_routing.headers",
                format!("must map 1 to {MAX_KEYS} request headers to instance metadata keys"),
            ))
        }
    }
    let failover = match nested_string(obj, "metadata_routing", "failover")? {
        None => MetaFailover::None,
        Some(f) => f
            .parse()
            .map_err(|e: String| err("metadata_routing.failover", e))?,
    };
    Ok(MetadataRouting { labels, failover })
}

fn nearby(map: &Map<String, Value>) -> Result<Nearby, ConfigError> {
    let mut nearby = Nearby::default();
    if let Some(loc) = object(map, "location", &["region", "zone", "campus"])? {
        nearby.location = Location {
            region: nested_string(loc, "location", "region")?.unwrap_or_default(),
            zone: nested_string(loc, "location", "zone")?.unwrap_or_default(),
            campus: nested_string(loc, "location", "campus")?.unwrap_or_default(),
        };
    }
    let Some(obj) = object(
        map,
        "nearby",
        &["match_level", "max_match_level", "unhealthy_percent"],
    )?
    else {
        return Ok(nearby);
    };
    let level = |field: &str| -> Result<Option<Level>, ConfigError> {
        nested_string(obj, "nearby", field)?
            .map(|v| {
                v.parse::<Level>()
                    .map_err(|e| err(&format!("nearby.{field}"), e))
            })
            .transpose()
    };
    if let Some(l) = level("match_level")? {
        nearby.match_level = l;
    }
    if let Some(l) = level("max_match_level")? {
        nearby.max_match_level = l;
    }
    if nearby.max_match_level > nearby.match_level {
        return Err(err(
            "nearby.max_match_level",
            format!(
                "`{}` is nearer than match_level `{}`; it must be the same level or wider",
                nearby.max_match_level, nearby.match_level
            ),
        ));
    }
    if let Some(v) = obj.get("unhealthy_percent") {
        nearby.unhealthy_percent = v
            .as_u64()
            .filter(|n| (1..=100).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                err(
                    "nearby.unhealthy_percent",
                    "must be an integer from 1 to 100",
                )
            })?;
    }
    Ok(nearby)
}

fn object<'a>(
    map: &'a Map<String, Value>,
    field: &str,
    known: &[&str],
) -> Result<Option<&'a Map<String, Value>>, ConfigError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(obj)) => {
            reject_unknown(obj, field, known)?;
            Ok(Some(obj))
        }
        Some(other) => Err(err(
            field,
            format!("must be an object, got {}", kind(other)),
        )),
    }
}

/// A typo in a nested field fails loudly instead of being ignored.
fn reject_unknown(obj: &Map<String, Value>, path: &str, known: &[&str]) -> Result<(), ConfigError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(err(
            &format!("{path}.{unknown}"),
            format!("unknown field; known fields are {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn nested_string(
    obj: &Map<String, Value>,
    parent: &str,
    field: &str,
) -> Result<Option<String>, ConfigError> {
    string(obj, field).map_err(|e| err(&format!("{parent}.{field}"), e.reason))
}

fn caller(map: &Map<String, Value>, namespace: &str) -> Result<Caller, ConfigError> {
    let Some(obj) = object(map, "caller", &["service", "namespace", "metadata"])? else {
        return Ok(Caller::default());
    };
    let service = nested_string(obj, "caller", "service")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err("caller.service", "is required when caller is given"))?;
    let namespace =
        nested_string(obj, "caller", "namespace")?.unwrap_or_else(|| namespace.to_string());
    let mut metadata = HashMap::new();
    match obj.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(meta)) => {
            for (k, v) in meta {
                let Value::String(v) = v else {
                    return Err(err(
                        &format!("caller.metadata.{k}"),
                        format!("must be a string, got {}", kind(v)),
                    ));
                };
                metadata.insert(k.clone(), v.clone());
            }
        }
        Some(other) => {
            return Err(err(
                "caller.metadata",
                format!("must be an object of strings, got {}", kind(other)),
            ))
        }
    }
    Ok(Caller {
        namespace,
        service,
        metadata,
    })
}

fn failover(map: &Map<String, Value>) -> Result<Failover, ConfigError> {
    let Some(obj) = object(map, "routing", &["failover"])? else {
        return Ok(Failover::All);
    };
    match nested_string(obj, "routing", "failover")?.as_deref() {
        None | Some("all") => Ok(Failover::All),
        Some("none") => Ok(Failover::None),
        Some(other) => Err(err(
            "routing.failover",
            format!("`{other}` is not one of \"all\", \"none\""),
        )),
    }
}

fn load_balancer(map: &Map<String, Value>) -> Result<LoadBalancing, ConfigError> {
    let Some(obj) = object(
        map,
        "load_balancer",
        &["policy", "hash_key", "ring_hash", "services"],
    )?
    else {
        return Ok(LoadBalancing::default());
    };
    let BalancerFields {
        policy,
        hash_key,
        options,
    } = balancer_fields(obj, "load_balancer")?;
    let options = options.unwrap_or_default();
    let balancer = Spec {
        policy: policy.unwrap_or(Policy::WeightedRandom),
        options,
    };
    let mut services = Vec::new();
    match obj.get("services") {
        None | Some(Value::Null) => {}
        Some(Value::Array(entries)) => {
            for (n, entry) in entries.iter().enumerate() {
                let path = format!("load_balancer.services[{n}]");
                let Value::Object(entry) = entry else {
                    return Err(err(
                        &path,
                        format!("must be an object, got {}", kind(entry)),
                    ));
                };
                reject_unknown(
                    entry,
                    &path,
                    &["service", "namespace", "policy", "hash_key", "ring_hash"],
                )?;
                let service = nested_string(entry, &path, "service")?
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| err(&format!("{path}.service"), "is required"))?;
                let namespace = nested_string(entry, &path, "namespace")?;
                let BalancerFields {
                    policy: own_policy,
                    hash_key: own_key,
                    options: own_options,
                } = balancer_fields(entry, &path)?;
                let own_policy = own_policy.ok_or_else(|| {
                    err(
                        &format!("{path}.policy"),
                        "is required in a per-service entry",
                    )
                })?;
                services.push(ServiceBalancing {
                    // The namespace is settled against the default one in `Config::balancing`.
                    service: ServiceKey::new(namespace.unwrap_or_default(), service),
                    balancer: Spec {
                        policy: own_policy,
                        options: own_options.unwrap_or(options),
                    },
                    hash_key: own_key.or_else(|| hash_key.clone()),
                });
            }
        }
        Some(other) => {
            return Err(err(
                "load_balancer.services",
                format!("must be an array, got {}", kind(other)),
            ))
        }
    }
    Ok(LoadBalancing {
        balancer,
        hash_key,
        services,
    })
}

/// The balancer fields of one object: `load_balancer` or a per-service entry.
struct BalancerFields {
    policy: Option<Policy>,
    hash_key: Option<Arg>,
    /// `ring_hash`.
    options: Option<Options>,
}

/// `policy`, `hash_key` and `ring_hash` of `obj`, the object at `path`.
fn balancer_fields(obj: &Map<String, Value>, path: &str) -> Result<BalancerFields, ConfigError> {
    let policy = nested_string(obj, path, "policy")?
        .map(|p| {
            p.parse::<Policy>()
                .map_err(|e| err(&format!("{path}.policy"), e.to_string()))
        })
        .transpose()?;
    let hash_key = match object(obj, "hash_key", &["from", "name"])
        .map_err(|e| err(&format!("{path}.{}", e.field), e.reason))?
    {
        None => None,
        Some(key) => {
            let parent = format!("{path}.hash_key");
            let from = nested_string(key, &parent, "from")?;
            let name = nested_string(key, &parent, "name")?;
            let need_name = |n: Option<String>| {
                n.filter(|n| !n.is_empty())
                    .ok_or_else(|| err(&format!("{parent}.name"), "is required for this source"))
            };
            Some(match from.as_deref() {
                Some("header") => Arg::Header(need_name(name)?.to_ascii_lowercase()),
                Some("cookie") => Arg::Cookie(need_name(name)?),
                Some("query") => Arg::Query(need_name(name)?),
                Some("caller_ip") => Arg::CallerIp,
                other => {
                    return Err(err(
                        &format!("{parent}.from"),
                        format!(
                            "`{}` is not one of \"header\", \"cookie\", \"query\", \"caller_ip\"",
                            other.unwrap_or("")
                        ),
                    ))
                }
            })
        }
    };
    let options = match object(obj, "ring_hash", &["vnodes"])
        .map_err(|e| err(&format!("{path}.{}", e.field), e.reason))?
    {
        None => None,
        Some(ring) => {
            let field = format!("{path}.ring_hash.vnodes");
            let max = ring_hash::MAX_VNODE_COUNT;
            let vnode_count = match ring.get("vnodes") {
                None | Some(Value::Null) => ring_hash::DEFAULT_VNODE_COUNT,
                Some(v) => v
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        err(
                            &field,
                            format!(
                                "must be an integer from 1 to {max} (polaris-go's \
                                 ringHash.vnodeCount, default {})",
                                ring_hash::DEFAULT_VNODE_COUNT
                            ),
                        )
                    })?,
            };
            Some(Options { vnode_count })
        }
    };
    Ok(BalancerFields {
        policy,
        hash_key,
        options,
    })
}

fn string(map: &Map<String, Value>, field: &str) -> Result<Option<String>, ConfigError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(err(field, format!("must be a string, got {}", kind(other)))),
    }
}

fn duration(map: &Map<String, Value>, field: &str) -> Result<Option<Duration>, ConfigError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_duration(s).map(Some).ok_or_else(|| {
            err(
                field,
                format!("`{s}` is not a duration like \"2s\" or \"500ms\""),
            )
        }),
        Some(other) => Err(err(
            field,
            format!("must be a duration string like \"2s\", got {}", kind(other)),
        )),
    }
}

/// Parses `"500ms"`, `"2s"`, `"1m"`: the forms Envoy operators write.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

fn destination(map: &Map<String, Value>) -> Result<DestinationSource, ConfigError> {
    let Some(value) = map.get("destination") else {
        return Ok(DestinationSource::Authority);
    };
    let Value::Object(obj) = value else {
        return Err(err(
            "destination",
            "must be an object like {\"from\": \"authority\"}",
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| *k != "from" && *k != "header") {
        return Err(err(
            &format!("destination.{unknown}"),
            "unknown field; known fields are from, header",
        ));
    }
    let from = string(obj, "from").map_err(|e| err("destination.from", e.reason))?;
    match from.as_deref() {
        None | Some("authority") => Ok(DestinationSource::Authority),
        Some("header") => {
            let header = string(obj, "header")
                .map_err(|e| err("destination.header", e.reason))?
                .ok_or_else(|| {
                    err(
                        "destination.header",
                        "is required when destination.from is \"header\"",
                    )
                })?;
            validate_header_name("destination.header", &header)?;
            Ok(DestinationSource::Header(header))
        }
        Some(other) => Err(err(
            "destination.from",
            format!("`{other}` is not one of \"authority\", \"header\""),
        )),
    }
}

fn validate_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!("`{name}` is not a lower-case HTTP header name"),
        ))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::parse(json.as_bytes())
    }

    #[test]
    fn minimal_config_takes_polaris_defaults() {
        let c = parse(r#"{"polaris_cluster":"polaris_grpc"}"#).unwrap();
        assert_eq!(c.namespace, "default");
        assert_eq!(c.refresh_interval, Duration::from_secs(2));
        assert_eq!(c.upstream_header, "x-polaris-upstream");
        assert_eq!(c.destination, DestinationSource::Authority);
        assert_eq!(c.token, None);
    }

    #[test]
    fn missing_cluster_is_named() {
        let e = parse("{}").unwrap_err();
        assert_eq!(e.field, "polaris_cluster");
        assert!(e.to_string().contains("`polaris_cluster`"));
    }

    #[test]
    fn wrong_type_names_field_and_type() {
        let e = parse(r#"{"polaris_cluster":"p","refresh_interval":2}"#).unwrap_err();
        assert_eq!(e.field, "refresh_interval");
        assert!(e.reason.contains("a number"), "{}", e.reason);
    }

    #[test]
    fn unknown_field_is_rejected_by_name() {
        let e = parse(r#"{"polaris_cluster":"p","refresh_intervall":"2s"}"#).unwrap_err();
        assert_eq!(e.field, "refresh_intervall");
    }

    #[test]
    fn out_of_range_interval_is_rejected() {
        let e = parse(r#"{"polaris_cluster":"p","refresh_interval":"10ms"}"#).unwrap_err();
        assert_eq!(e.field, "refresh_interval");
    }

    #[test]
    fn header_destination_needs_a_header_name() {
        let e = parse(r#"{"polaris_cluster":"p","destination":{"from":"header"}}"#).unwrap_err();
        assert_eq!(e.field, "destination.header");
        let c =
            parse(r#"{"polaris_cluster":"p","destination":{"from":"header","header":"x-svc"}}"#)
                .unwrap();
        assert_eq!(c.destination, DestinationSource::Header("x-svc".into()));
    }

    #[test]
    fn a_namespace_no_request_could_be_looked_up_in_is_rejected() {
        // Found by the config fuzz target: such a namespace was accepted, and then every request
        // naming a bare service got 400 no-destination.
        let with = |ns: &str| serde_json::json!({"polaris_cluster": "p", "namespace": ns});
        for ns in ["", "a/b", "my ns", "\0\u{1b}", "ünï"] {
            let e = parse(&with(ns).to_string()).unwrap_err();
            assert_eq!(e.field, "namespace", "{ns:?}");
        }
        for ns in ["default", "Polaris", "team-a.prod", "ns_1:x"] {
            assert_eq!(parse(&with(ns).to_string()).unwrap().namespace, ns);
        }
    }

    #[test]
    fn upper_case_header_is_rejected() {
        let e = parse(r#"{"polaris_cluster":"p","upstream_header":"X-Up"}"#).unwrap_err();
        assert_eq!(e.field, "upstream_header");
    }

    #[test]
    fn not_json_is_reported_at_root() {
        let e = parse("{nope").unwrap_err();
        assert_eq!(e.field, "<root>");
    }

    #[test]
    fn caller_load_balancer_and_failover_parse() {
        let c = parse(
            r#"{"polaris_cluster":"p","caller":{"service":"svc-a","metadata":{"env":"gray"}},
                "routing":{"failover":"none"},
                "load_balancer":{"policy":"ringHash","hash_key":{"from":"header","name":"X-User"}},
                "debug_trace":true}"#,
        )
        .unwrap();
        assert_eq!(c.caller.service, "svc-a");
        assert_eq!(c.caller.namespace, "default");
        assert_eq!(
            c.caller.metadata.get("env").map(String::as_str),
            Some("gray")
        );
        assert_eq!(c.failover, Failover::None);
        assert_eq!(c.load_balancing.balancer.policy, Policy::RingHash);
        assert_eq!(
            c.load_balancing.hash_key,
            Some(Arg::Header("x-user".into()))
        );
        assert!(c.debug_trace);
    }

    #[test]
    fn bad_load_balancer_fields_are_named() {
        let e = parse(r#"{"polaris_cluster":"p","load_balancer":{"policy":"roundRobin"}}"#)
            .unwrap_err();
        assert_eq!(e.field, "load_balancer.policy");
        let e = parse(r#"{"polaris_cluster":"p","load_balancer":{"hash_key":{"from":"header"}}}"#)
            .unwrap_err();
        assert_eq!(e.field, "load_balancer.hash_key.name");
        let e = parse(r#"{"polaris_cluster":"p","load_balancer":{"hash_key":{"from":"body"}}}"#)
            .unwrap_err();
        assert_eq!(e.field, "load_balancer.hash_key.from");
        let e = parse(r#"{"polaris_cluster":"p","caller":{"metadata":{}}}"#).unwrap_err();
        assert_eq!(e.field, "caller.service");
        let e = parse(r#"{"polaris_cluster":"p","caller":{"service":"a","metadata":{"k":1}}}"#)
            .unwrap_err();
        assert_eq!(e.field, "caller.metadata.k");
        let e = parse(r#"{"polaris_cluster":"p","routing":{"failover":"some"}}"#).unwrap_err();
        assert_eq!(e.field, "routing.failover");
    }

    #[test]
    fn per_service_balancers_override_the_default_and_inherit_its_key() {
        let c = parse(
            r#"{"polaris_cluster":"p","namespace":"prod",
                "load_balancer":{"policy":"weightedRandom","hash_key":{"from":"header","name":"x-user"},
                  "services":[{"service":"cart","policy":"maglev"},
                              {"service":"pay","namespace":"fin","policy":"hash",
                               "hash_key":{"from":"caller_ip"}}]}}"#,
        )
        .unwrap();
        let user = Arg::Header("x-user".into());
        assert_eq!(
            c.balancing(&ServiceKey::new("prod", "cart")),
            (Spec::from(Policy::Maglev), Some(&user))
        );
        assert_eq!(
            c.balancing(&ServiceKey::new("fin", "pay")),
            (Spec::from(Policy::Hash), Some(&Arg::CallerIp))
        );
        // `cart` without a namespace means the default namespace only.
        assert_eq!(
            c.balancing(&ServiceKey::new("other", "cart")),
            (Spec::from(Policy::WeightedRandom), Some(&user))
        );
        assert_eq!(
            c.balancing(&ServiceKey::new("prod", "pay")),
            (Spec::from(Policy::WeightedRandom), Some(&user))
        );
    }

    #[test]
    fn ring_hash_vnodes_default_to_polaris_gos_ten_and_are_inherited_per_service() {
        let c = parse(r#"{"polaris_cluster":"p","load_balancer":{"policy":"ringHash"}}"#).unwrap();
        assert_eq!(c.load_balancing.balancer.options.vnode_count, 10);
        let c = parse(
            r#"{"polaris_cluster":"p",
                "load_balancer":{"policy":"ringHash","ring_hash":{"vnodes":500},
                  "services":[{"service":"cart","policy":"ringHash"},
                              {"service":"pay","policy":"ringHash","ring_hash":{"vnodes":160}}]}}"#,
        )
        .unwrap();
        let vnodes = |name: &str| {
            c.balancing(&ServiceKey::new("default", name))
                .0
                .options
                .vnode_count
        };
        assert_eq!(vnodes("other"), 500);
        assert_eq!(vnodes("cart"), 500);
        assert_eq!(vnodes("pay"), 160);
    }

    #[test]
    fn ring_hash_vnodes_out_of_range_are_refused_by_field() {
        for (ring, field) in [
            (r#"{"vnodes":0}"#, "load_balancer.ring_hash.vnodes"),
            (r#"{"vnodes":1001}"#, "load_balancer.ring_hash.vnodes"),
            (r#"{"vnodes":-3}"#, "load_balancer.ring_hash.vnodes"),
            (r#"{"vnodes":2.5}"#, "load_balancer.ring_hash.vnodes"),
            (r#"{"vnodes":"10"}"#, "load_balancer.ring_hash.vnodes"),
            (r#"{"points":10}"#, "load_balancer.ring_hash.points"),
            (r#"10"#, "load_balancer.ring_hash"),
        ] {
            let e = parse(&format!(
                r#"{{"polaris_cluster":"p","load_balancer":{{"policy":"ringHash","ring_hash":{ring}}}}}"#
            ))
            .unwrap_err();
            assert_eq!(e.field, field, "{ring}");
        }
        let e = parse(
            r#"{"polaris_cluster":"p","load_balancer":{"services":[
                {"service":"a","policy":"ringHash","ring_hash":{"vnodes":0}}]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "load_balancer.services[0].ring_hash.vnodes");
        assert!(e.reason.contains("1 to 1000"), "{}", e.reason);
    }

    #[test]
    fn bad_per_service_balancers_are_named_by_position() {
        for (services, field) in [
            (
                r#"[{"policy":"maglev"}]"#,
                "load_balancer.services[0].service",
            ),
            (r#"[{"service":"a"}]"#, "load_balancer.services[0].policy"),
            (
                r#"[{"service":"a","policy":"maglev"},{"service":"b","policy":"rr"}]"#,
                "load_balancer.services[1].policy",
            ),
            (
                r#"[{"service":"a","policy":"hash","hash_key":{"from":"body"}}]"#,
                "load_balancer.services[0].hash_key.from",
            ),
            (
                r#"[{"service":"a","policy":"hash","weight":1}]"#,
                "load_balancer.services[0].weight",
            ),
            (r#"["a"]"#, "load_balancer.services[0]"),
            (r#"{"a":1}"#, "load_balancer.services"),
        ] {
            let e = parse(&format!(
                r#"{{"polaris_cluster":"p","load_balancer":{{"services":{services}}}}}"#
            ))
            .unwrap_err();
            assert_eq!(e.field, field, "{services}");
        }
    }

    #[test]
    fn nearby_levels_and_location_parse() {
        let c = parse(
            r#"{"polaris_cluster":"p","location":{"region":"r1","zone":"z1"},
                "nearby":{"match_level":"zone","max_match_level":"region","unhealthy_percent":50}}"#,
        )
        .unwrap();
        assert_eq!(c.nearby.location.zone, "z1");
        assert_eq!(c.nearby.max_match_level, Level::Region);
        assert_eq!(c.nearby.unhealthy_percent, 50);
        let e = parse(
            r#"{"polaris_cluster":"p","nearby":{"match_level":"region","max_match_level":"zone"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "nearby.max_match_level");
        let e = parse(r#"{"polaris_cluster":"p","nearby":{"match_level":"city"}}"#).unwrap_err();
        assert_eq!(e.field, "nearby.match_level");
    }

    #[test]
    fn metadata_routing_parses_and_names_bad_fields() {
        let c = parse(
            r#"{"polaris_cluster":"p","metadata_routing":{"headers":{"x-meta-version":"version"},"failover":"others"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.metadata.labels,
            vec![("x-meta-version".to_string(), "version".to_string())]
        );
        assert_eq!(c.metadata.failover, MetaFailover::Others);
        let e = parse(r#"{"polaris_cluster":"p","metadata_routing":{"headers":{}}}"#).unwrap_err();
        assert_eq!(e.field, "metadata_routing.headers");
        let e = parse(r#"{"polaris_cluster":"p","metadata_routing":{"headers":{"X-V":"v"}}}"#)
            .unwrap_err();
        assert_eq!(e.field, "metadata_routing.headers.X-V");
        let e = parse(r#"{"polaris_cluster":"p","metadata_routing":{"headers":{"x-v":"v"},"failover":"some"}}"#)
            .unwrap_err();
        assert_eq!(e.field, "metadata_routing.failover");
    }

    #[test]
    fn durations_parse_in_envoy_forms() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("99999999999999999999s"), None);
    }
}
