//! Plugin configuration: the JSON given to `on_configure`, validated into a typed [`Config`].
//!
//! Every error names the field and the reason, because the only place an operator sees it is an
//! Envoy log line (or `envoy --mode validate`). Unknown fields are rejected so a typo is not
//! silently ignored.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::allow::{AllowList, ServicePattern};
use crate::breaker::Settings;
use crate::destination::valid_name;
use crate::lb::{ring_hash, Options, Policy, Spec};
use crate::limit::RuleSettings;
use crate::matching::Arg;
use crate::model::{Kind, Location, ServiceKey};
use crate::polaris::client::MAX_CLUSTER_NAME;
use crate::provider::{ProviderConfig, Readiness};
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
    /// How the pick reaches Envoy.
    pub upstream_handover: Handover,
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
    /// Whose RATE_LIMIT rules this Envoy enforces; `None`: rate limiting is off.
    pub rate_limit: Option<RateLimitSide>,
    /// Per-rule settings by rule name (`rate_limit.dry_run`, `.concurrency`, `.bodies`): the OSS
    /// server refuses rule metadata, `concurrencyAmount` and `customResponse`.
    pub rate_limit_rules: RuleSettings,
    /// How GLOBAL rate-limit rules reach polaris-limiter (`rate_limit.limiter`); without it they
    /// are counted locally at the rule's amount.
    pub limiter: Option<LimiterConfig>,
    /// Circuit breaking (`circuit_breaker`): off when absent.
    pub breaker: Option<BreakerConfig>,
    /// The instance this Envoy registers for the service it fronts. With it, the filter's
    /// listener is that service's inbound side: requests pass to the route's cluster untouched
    /// (no pick), and only the offline and status paths are answered by the filter.
    pub provider: Option<ProviderConfig>,
    /// What a request for a service not yet known may cost (`admission`): the allow-list, the
    /// budget of first discoveries, how long "not found" is remembered, when idle services go.
    pub admission: AdmissionConfig,
}

/// `admission` in the plugin configuration: bounds on what clients naming unknown or many
/// services can make this Envoy do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// `allowed_services`: the only destinations requests may name; `None`: any.
    pub allowed: Option<AllowList>,
    /// `new_services_per_second`: first discoveries this Envoy starts per second, all workers
    /// together; requests beyond it are answered 503 at once.
    pub new_services_per_second: u32,
    /// `not_found_ttl`: how long each worker remembers that Polaris does not know a service
    /// (default: `refresh_interval`).
    pub not_found_ttl: Duration,
    /// `idle_timeout`: a watched service no request named for this long leaves the watch list
    /// and shared data (this Envoy's own service never does).
    pub idle_timeout: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> AdmissionConfig {
        AdmissionConfig {
            allowed: None,
            new_services_per_second: 20,
            not_found_ttl: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Whose rate-limit rules apply (`rate_limit.rules_of`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitSide {
    /// Each request's destination service (an outbound or gateway listener).
    Destination,
    /// This Envoy's own service, `caller` (an inbound, provider-side listener).
    Local,
}

/// `rate_limit.limiter`: where polaris-limiter is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimiterConfig {
    /// `cluster`: an HTTP/2 Envoy cluster that reaches the limiter (rules' `cluster` unused).
    Cluster(String),
    /// `address_cluster`: the limiter's instances are discovered from Polaris as polaris-go finds
    /// them (the rule's `cluster`, else `service`, default `Polaris/polaris.limiter`) and reached
    /// through this ORIGINAL_DST HTTP/2 cluster, the picked `ip:port` sent in `header`.
    Discovered {
        via: String,
        header: String,
        service: ServiceKey,
    },
}

/// `circuit_breaker` in the plugin configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BreakerConfig {
    /// `default_rule` (polaris-go's default INSTANCE rule, on by default) and `dry_run` rule names.
    pub settings: Settings,
    /// `probe_cluster`: the ORIGINAL_DST cluster fault-detection probes go through; without it no
    /// instance is probed.
    pub probe_cluster: Option<String>,
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
        let mut kinds = vec![Kind::Instances, Kind::Routing];
        if self.rate_limit == Some(RateLimitSide::Destination) {
            kinds.push(Kind::RateLimit);
        }
        if self.breaker.is_some() {
            kinds.push(Kind::CircuitBreaker);
        }
        kinds
    }

    /// The kinds a request for a service not yet loaded waits for: what its decision needs,
    /// never more. Breaker rules are not among them: every breaker starts closed, so a first
    /// request is decided the same without them; the leader fetches them on its next tick, and
    /// outcomes count from then on.
    pub fn first_load_kinds(&self) -> Vec<Kind> {
        let mut kinds = vec![Kind::Instances, Kind::Routing];
        if self.rate_limit == Some(RateLimitSide::Destination) {
            // A first request must not escape its service's limits.
            kinds.push(Kind::RateLimit);
        }
        kinds
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

/// How the picked instance reaches Envoy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Handover {
    /// The upstream header, which an ORIGINAL_DST cluster reads (both builds).
    #[default]
    Header,
    /// Envoy's upstream override host, for the native module's own cluster, which holds every
    /// instance as a host: no header and no address parsed per request (native build only).
    OverrideHost,
    /// The native module's own cluster decides in its load balancer, with no HTTP filter on the
    /// request path (the filter stays in the chain, `disabled: true`, for its leader): Envoy
    /// runs no per-stream filter. Nothing that needs the stream is available: no local replies
    /// (a request that cannot be routed gets Envoy's 503 `no healthy upstream`), so rate
    /// limits, breakers, the trace and the provider side are refused (native build only).
    LoadBalancer,
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
    "upstream_handover",
    "destination",
    "max_services",
    "caller",
    "routing",
    "load_balancer",
    "debug_trace",
    "location",
    "nearby",
    "metadata_routing",
    "rate_limit",
    "circuit_breaker",
    "provider",
    "admission",
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
        let upstream_handover = match string(&map, "upstream_handover")?.as_deref() {
            None | Some("header") => Handover::Header,
            Some("override_host") => Handover::OverrideHost,
            Some("load_balancer") => Handover::LoadBalancer,
            Some(other) => {
                return Err(err(
                    "upstream_handover",
                    format!("`{other}` is not \"header\", \"override_host\" or \"load_balancer\""),
                ))
            }
        };
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
        let (rate_limit, rate_limit_rules) = rate_limit(&map)?;
        let limiter = limiter(&map)?;
        if rate_limit == Some(RateLimitSide::Local)
            && caller.service.is_empty()
            && !map.contains_key("provider")
        {
            return Err(err(
                "rate_limit.rules_of",
                "`local` needs `caller.service` or `provider`: the service whose rules apply",
            ));
        }
        let breaker = circuit_breaker(&map)?;
        let provider = provider(&map, &namespace)?;
        let admission = admission(&map, &namespace, refresh_interval)?;
        if upstream_handover == Handover::LoadBalancer {
            let needs_stream = [
                ("rate_limit", rate_limit.is_some()),
                ("circuit_breaker", breaker.is_some()),
                ("debug_trace", debug_trace),
                ("provider", provider.is_some()),
            ];
            if let Some(field) = needs_stream.iter().find(|(_, on)| *on).map(|(f, _)| *f) {
                return Err(err(
                    field,
                    "needs the HTTP filter on the request path, which `upstream_handover: \
                     load_balancer` leaves out: use `override_host`",
                ));
            }
        }

        Ok(Config {
            polaris_cluster,
            namespace,
            refresh_interval,
            discover_timeout,
            lazy_load_timeout,
            token,
            upstream_header,
            upstream_handover,
            destination,
            max_services,
            caller,
            failover,
            load_balancing,
            debug_trace,
            nearby,
            metadata,
            rate_limit,
            rate_limit_rules,
            limiter,
            breaker,
            provider,
            admission,
        })
    }
}

/// `admission`; "not found" is remembered for `refresh_interval` unless it says otherwise.
fn admission(
    map: &Map<String, Value>,
    namespace: &str,
    refresh_interval: Duration,
) -> Result<AdmissionConfig, ConfigError> {
    let mut out = AdmissionConfig {
        not_found_ttl: refresh_interval,
        ..AdmissionConfig::default()
    };
    let Some(obj) = object(
        map,
        "admission",
        &[
            "allowed_services",
            "new_services_per_second",
            "not_found_ttl",
            "idle_timeout",
        ],
    )?
    else {
        return Ok(out);
    };
    match obj.get("allowed_services") {
        None | Some(Value::Null) => {}
        Some(Value::Array(entries)) if !entries.is_empty() => {
            let mut patterns = Vec::with_capacity(entries.len());
            for (n, entry) in entries.iter().enumerate() {
                let field = format!("admission.allowed_services[{n}]");
                let Value::String(s) = entry else {
                    return Err(err(
                        &field,
                        format!(
                            "must be a service name or pattern (a string), got {}",
                            kind(entry)
                        ),
                    ));
                };
                patterns.push(ServicePattern::parse(s, namespace).map_err(|e| err(&field, e))?);
            }
            out.allowed = Some(AllowList::new(patterns));
        }
        Some(other) => {
            return Err(err(
                "admission.allowed_services",
                format!(
                    "must be a non-empty array of service names or patterns \
                     (`name`, `namespace/name`, `*` for any run), got {}",
                    match other {
                        Value::Array(_) => "an empty array",
                        v => kind(v),
                    }
                ),
            ))
        }
    }
    if let Some(v) = obj.get("new_services_per_second") {
        out.new_services_per_second = v
            .as_u64()
            .filter(|n| (1..=10_000).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                err(
                    "admission.new_services_per_second",
                    "must be an integer from 1 to 10000",
                )
            })?;
    }
    let field = |f: &str| format!("admission.{f}");
    if let Some(d) =
        duration(obj, "not_found_ttl").map_err(|e| err(&field("not_found_ttl"), e.reason))?
    {
        if d > Duration::from_secs(600) {
            return Err(err(&field("not_found_ttl"), "must be at most 600s"));
        }
        out.not_found_ttl = d;
    }
    if let Some(d) =
        duration(obj, "idle_timeout").map_err(|e| err(&field("idle_timeout"), e.reason))?
    {
        if d < Duration::from_secs(1) || d > Duration::from_secs(7 * 24 * 3600) {
            return Err(err(&field("idle_timeout"), "must be between 1s and 7 days"));
        }
        out.idle_timeout = d;
    }
    Ok(out)
}

fn circuit_breaker(map: &Map<String, Value>) -> Result<Option<BreakerConfig>, ConfigError> {
    let Some(obj) = object(
        map,
        "circuit_breaker",
        &["default_rule", "dry_run", "probe_cluster"],
    )?
    else {
        return Ok(None);
    };
    let default_rule = match obj.get("default_rule") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(err(
                "circuit_breaker.default_rule",
                format!("must be a boolean, got {}", kind(other)),
            ))
        }
    };
    let mut dry_run = Vec::new();
    match obj.get("dry_run") {
        None | Some(Value::Null) => {}
        Some(Value::Array(names)) => {
            for (n, name) in names.iter().enumerate() {
                match name {
                    Value::String(s) if !s.is_empty() => dry_run.push(s.clone()),
                    other => {
                        return Err(err(
                            &format!("circuit_breaker.dry_run[{n}]"),
                            format!(
                                "must be a rule name (a non-empty string), got {}",
                                kind(other)
                            ),
                        ))
                    }
                }
            }
        }
        Some(other) => {
            return Err(err(
                "circuit_breaker.dry_run",
                format!("must be an array of rule names, got {}", kind(other)),
            ))
        }
    }
    let probe_cluster = nested_string(obj, "circuit_breaker", "probe_cluster")?;
    if let Some(c) = &probe_cluster {
        if c.is_empty() || c.len() > MAX_CLUSTER_NAME || !c.is_ascii() {
            return Err(err(
                "circuit_breaker.probe_cluster",
                format!("must be 1 to {MAX_CLUSTER_NAME} ASCII characters"),
            ));
        }
    }
    Ok(Some(BreakerConfig {
        settings: Settings {
            default_rule,
            dry_run,
        },
        probe_cluster,
    }))
}

const PROVIDER_FIELDS: &[&str] = &[
    "service",
    "namespace",
    "host",
    "port",
    "protocol",
    "version",
    "weight",
    "metadata",
    "location",
    "ttl",
    "token",
    "offline_path",
    "status_path",
    "metrics_port",
    "metrics_path",
    "readiness",
];

/// Polaris' limits on an instance (`service/utils.go`): names, metadata count.
const MAX_NAME: usize = 128;
const MAX_METADATA: usize = 64;

fn provider(
    map: &Map<String, Value>,
    namespace: &str,
) -> Result<Option<ProviderConfig>, ConfigError> {
    let Some(obj) = object(map, "provider", PROVIDER_FIELDS)? else {
        return Ok(None);
    };
    let text = |field: &str| nested_string(obj, "provider", field);
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_NAME
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
    };
    let service = text("service")?.ok_or_else(|| {
        err(
            "provider.service",
            "is required (the service this Envoy fronts)",
        )
    })?;
    if !name_ok(&service) {
        return Err(err(
            "provider.service",
            format!("`{service}` must be 1 to {MAX_NAME} of A-Z a-z 0-9 - . _ :"),
        ));
    }
    let ns = text("namespace")?.unwrap_or_else(|| namespace.to_string());
    if !name_ok(&ns) {
        return Err(err(
            "provider.namespace",
            format!("`{ns}` must be 1 to {MAX_NAME} of A-Z a-z 0-9 - . _ :"),
        ));
    }
    let port = obj
        .get("port")
        .ok_or_else(|| {
            err(
                "provider.port",
                "is required (the port consumers call: this Envoy's inbound listener)",
            )
        })?
        .as_u64()
        .filter(|p| (1..=65_535).contains(p))
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| err("provider.port", "must be an integer from 1 to 65535"))?;
    let mut p = ProviderConfig::new(ServiceKey::new(ns, service), port);
    if let Some(host) = text("host")? {
        let ok = !host.is_empty()
            && host.len() <= MAX_NAME
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
        if !ok {
            return Err(err(
                "provider.host",
                format!("`{host}` is not an IP address or host name"),
            ));
        }
        p.host = Some(host);
    }
    for (field, slot) in [("protocol", &mut p.protocol), ("version", &mut p.version)] {
        if let Some(v) = text(field)? {
            if v.len() > MAX_NAME {
                return Err(err(
                    &format!("provider.{field}"),
                    format!("must be at most {MAX_NAME} characters"),
                ));
            }
            *slot = v;
        }
    }
    if let Some(w) = obj.get("weight") {
        p.weight = w
            .as_u64()
            .filter(|w| *w <= 10_000)
            .and_then(|w| u32::try_from(w).ok())
            .ok_or_else(|| err("provider.weight", "must be an integer from 0 to 10000"))?;
    }
    match obj.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(meta)) if meta.len() <= MAX_METADATA => {
            for (k, v) in meta {
                let field = format!("provider.metadata.{k}");
                let Value::String(v) = v else {
                    return Err(err(&field, format!("must be a string, got {}", kind(v))));
                };
                if k.is_empty() || k.len() > MAX_NAME || v.len() > 4096 {
                    return Err(err(
                        &field,
                        format!("keys are 1 to {MAX_NAME} characters, values at most 4096"),
                    ));
                }
                p.metadata.insert(k.clone(), v.clone());
            }
        }
        Some(_) => {
            return Err(err(
                "provider.metadata",
                format!("must be an object of at most {MAX_METADATA} strings"),
            ))
        }
    }
    if let Some(loc) = object(obj, "location", &["region", "zone", "campus"])
        .map_err(|e| err(&format!("provider.{}", e.field), e.reason))?
    {
        let part =
            |f: &str| nested_string(loc, "provider.location", f).map(Option::unwrap_or_default);
        p.location = Some(Location {
            region: part("region")?,
            zone: part("zone")?,
            campus: part("campus")?,
        });
    }
    if let Some(ttl) = duration(obj, "ttl").map_err(|e| err("provider.ttl", e.reason))? {
        if ttl.subsec_nanos() != 0 || !(1..=60).contains(&ttl.as_secs()) {
            return Err(err(
                "provider.ttl",
                "must be whole seconds from 1s to 60s (Polaris replaces anything else with 5s)",
            ));
        }
        p.ttl = ttl;
    }
    p.token = text("token")?.filter(|t| !t.is_empty());
    for (field, slot) in [
        ("offline_path", &mut p.offline_path),
        ("status_path", &mut p.status_path),
    ] {
        if let Some(path) = text(field)? {
            let ok = path.starts_with('/')
                && path.len() <= 256
                && path
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
            if !ok {
                return Err(err(
                    &format!("provider.{field}"),
                    format!("`{path}` must be an absolute path without query"),
                ));
            }
            *slot = path;
        }
    }
    let metrics_path = text("metrics_path")?;
    match obj.get("metrics_port") {
        None | Some(Value::Null) if metrics_path.is_some() => {
            return Err(err(
                "provider.metrics_port",
                "is required when provider.metrics_path is given",
            ))
        }
        None | Some(Value::Null) => {}
        Some(v) => {
            let port = v
                .as_u64()
                .filter(|p| (1..=65_535).contains(p))
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| {
                    err(
                        "provider.metrics_port",
                        "must be an integer from 1 to 65535",
                    )
                })?;
            let path = metrics_path.unwrap_or_else(|| "/stats/prometheus".to_string());
            if !path.starts_with('/') {
                return Err(err("provider.metrics_path", "must be an absolute path"));
            }
            p.metrics = Some((port, path));
        }
    }
    if let Some(r) = object(obj, "readiness", &["cluster", "path", "timeout"])
        .map_err(|e| err(&format!("provider.{}", e.field), e.reason))?
    {
        let part = |f: &str| nested_string(r, "provider.readiness", f);
        let cluster = part("cluster")?.filter(|c| !c.is_empty()).ok_or_else(|| {
            err(
                "provider.readiness.cluster",
                "is required (the Envoy cluster of the local service)",
            )
        })?;
        let path = part("path")?.unwrap_or_else(|| "/".to_string());
        if !path.starts_with('/') {
            return Err(err("provider.readiness.path", "must be an absolute path"));
        }
        let timeout = duration(r, "timeout")
            .map_err(|e| err("provider.readiness.timeout", e.reason))?
            .unwrap_or(Duration::from_secs(1));
        if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(10) {
            return Err(err(
                "provider.readiness.timeout",
                "must be between 10ms and 10s",
            ));
        }
        p.readiness = Some(Readiness {
            cluster,
            path,
            timeout,
        });
    }
    if p.offline_path == p.status_path {
        return Err(err(
            "provider.status_path",
            "must differ from provider.offline_path",
        ));
    }
    Ok(Some(p))
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

fn rate_limit(
    map: &Map<String, Value>,
) -> Result<(Option<RateLimitSide>, RuleSettings), ConfigError> {
    let known = ["rules_of", "dry_run", "concurrency", "bodies", "limiter"];
    let Some(obj) = object(map, "rate_limit", &known)? else {
        return Ok((None, RuleSettings::default()));
    };
    let side = match nested_string(obj, "rate_limit", "rules_of")?.as_deref() {
        None | Some("destination") => RateLimitSide::Destination,
        Some("local") => RateLimitSide::Local,
        Some(other) => {
            return Err(err(
                "rate_limit.rules_of",
                format!("`{other}` is not one of \"destination\", \"local\""),
            ))
        }
    };
    let dry_run = match obj.get("dry_run") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| match n {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(err(
                    "rate_limit.dry_run",
                    "must be a list of rule names (non-empty strings)",
                )),
            })
            .collect::<Result<Vec<String>, ConfigError>>()?,
        Some(_) => {
            return Err(err(
                "rate_limit.dry_run",
                "must be a list of rule names (non-empty strings)",
            ))
        }
    };
    let concurrency = by_rule(obj, "concurrency", |v| {
        v.as_u64()
            .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or("must be a whole number of requests, at least 1")
    })?;
    let bodies = by_rule(obj, "bodies", |v| match v {
        Value::String(s) if s.len() <= MAX_BODY => Ok(s.clone()),
        _ => Err("must be a string of at most 4096 bytes"),
    })?;
    Ok((
        Some(side),
        RuleSettings {
            dry_run,
            concurrency,
            bodies,
            no_stream_ends: false,
        },
    ))
}

/// The longest custom 429 body (`rate_limit.bodies`).
const MAX_BODY: usize = 4096;

/// A `{"rule name": value}` object under `rate_limit`, each value checked by `read`.
fn by_rule<T>(
    obj: &Map<String, Value>,
    field: &str,
    read: impl Fn(&Value) -> Result<T, &'static str>,
) -> Result<Vec<(String, T)>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(rules)) => rules
            .iter()
            .map(|(name, v)| {
                read(v)
                    .map(|t| (name.clone(), t))
                    .map_err(|e| err(&format!("rate_limit.{field}.{name}"), e))
            })
            .collect(),
        Some(_) => Err(err(
            &format!("rate_limit.{field}"),
            "must be an object of rule names",
        )),
    }
}

/// `rate_limit.limiter`: exactly one of `cluster` and `address_cluster`.
fn limiter(map: &Map<String, Value>) -> Result<Option<LimiterConfig>, ConfigError> {
    let Some(Value::Object(rl)) = map.get("rate_limit") else {
        return Ok(None);
    };
    let Some(obj) = object(
        rl,
        "limiter",
        &[
            "cluster",
            "address_cluster",
            "address_header",
            "service",
            "namespace",
        ],
    )
    .map_err(|e| err(&format!("rate_limit.{}", e.field), e.reason))?
    else {
        return Ok(None);
    };
    let field = |name: &str| -> Result<Option<String>, ConfigError> {
        let v = nested_string(obj, "rate_limit.limiter", name)?;
        match v {
            Some(c) if c.is_empty() || c.len() > MAX_CLUSTER_NAME || !c.is_ascii() => Err(err(
                &format!("rate_limit.limiter.{name}"),
                format!("must be 1 to {MAX_CLUSTER_NAME} ASCII characters"),
            )),
            other => Ok(other),
        }
    };
    match (field("cluster")?, field("address_cluster")?) {
        (Some(c), None) => {
            for extra in ["address_header", "service", "namespace"] {
                if obj.contains_key(extra) {
                    return Err(err(
                        &format!("rate_limit.limiter.{extra}"),
                        "only applies with `address_cluster` (the limiter discovered from Polaris)",
                    ));
                }
            }
            Ok(Some(LimiterConfig::Cluster(c)))
        }
        (None, Some(via)) => {
            let header =
                field("address_header")?.unwrap_or_else(|| "x-envoy-original-dst-host".to_string());
            validate_header_name("rate_limit.limiter.address_header", &header)?;
            let service = field("service")?.unwrap_or_else(|| "polaris.limiter".to_string());
            let namespace = field("namespace")?.unwrap_or_else(|| "Polaris".to_string());
            Ok(Some(LimiterConfig::Discovered {
                via,
                header,
                service: ServiceKey::new(namespace, service),
            }))
        }
        (Some(_), Some(_)) => Err(err(
            "rate_limit.limiter",
            "give either `cluster` or `address_cluster`, not both",
        )),
        (None, None) => Err(err(
            "rate_limit.limiter",
            "needs `cluster` (an HTTP/2 cluster reaching polaris-limiter) or `address_cluster` \
             (an ORIGINAL_DST HTTP/2 cluster; the limiter is discovered from Polaris)",
        )),
    }
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
    fn load_balancer_handover_refuses_what_needs_the_filter_on_the_request_path_naming_it() {
        for (extra, field) in [
            (r#""rate_limit":{"rules_of":"destination"}"#, "rate_limit"),
            (r#""circuit_breaker":{}"#, "circuit_breaker"),
            (r#""debug_trace":true"#, "debug_trace"),
        ] {
            let text =
                format!(r#"{{"polaris_cluster":"p","upstream_handover":"load_balancer",{extra}}}"#);
            assert_eq!(parse(&text).unwrap_err().field, field, "{extra}");
        }
    }

    #[test]
    fn the_pick_is_handed_over_as_the_header_unless_override_host_is_asked_for() {
        let c = parse(r#"{"polaris_cluster":"p"}"#).unwrap();
        assert_eq!(c.upstream_handover, Handover::Header);
        let c = parse(r#"{"polaris_cluster":"p","upstream_handover":"override_host"}"#).unwrap();
        assert_eq!(c.upstream_handover, Handover::OverrideHost);
        let c = parse(r#"{"polaris_cluster":"p","upstream_handover":"load_balancer"}"#).unwrap();
        assert_eq!(c.upstream_handover, Handover::LoadBalancer);
        let e = parse(r#"{"polaris_cluster":"p","upstream_handover":"cluster"}"#).unwrap_err();
        assert_eq!(e.field, "upstream_handover");
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
    fn provider_parses_with_sidecar_defaults() {
        let c = parse(
            r#"{"polaris_cluster":"p","namespace":"prod",
                "provider":{"service":"echo","port":10001,"metadata":{"env":"gray"},
                            "location":{"zone":"z1"},"ttl":"2s","version":"v2"}}"#,
        )
        .unwrap();
        let p = c.provider.unwrap();
        assert_eq!(p.service, ServiceKey::new("prod", "echo"));
        assert_eq!((p.host, p.port, p.weight), (None, 10001, 100));
        assert_eq!(p.ttl, Duration::from_secs(2));
        assert_eq!(p.metadata.get("env").map(String::as_str), Some("gray"));
        assert_eq!(p.location.unwrap().zone, "z1");
        assert_eq!(p.offline_path, "/polaris-wasm/offline");
        assert_eq!(p.status_path, "/polaris-wasm/status");
        assert!(parse(r#"{"polaris_cluster":"p"}"#)
            .unwrap()
            .provider
            .is_none());
    }

    #[test]
    fn bad_provider_fields_are_named() {
        for (provider, field) in [
            (r#"{"port":1}"#, "provider.service"),
            (r#"{"service":"a b","port":1}"#, "provider.service"),
            (r#"{"service":"a"}"#, "provider.port"),
            (r#"{"service":"a","port":70000}"#, "provider.port"),
            (r#"{"service":"a","port":"80"}"#, "provider.port"),
            (r#"{"service":"a","port":1,"host":""}"#, "provider.host"),
            (r#"{"service":"a","port":1,"host":"a/b"}"#, "provider.host"),
            (
                r#"{"service":"a","port":1,"weight":10001}"#,
                "provider.weight",
            ),
            (r#"{"service":"a","port":1,"ttl":"500ms"}"#, "provider.ttl"),
            (r#"{"service":"a","port":1,"ttl":"61s"}"#, "provider.ttl"),
            (r#"{"service":"a","port":1,"ttl":5}"#, "provider.ttl"),
            (
                r#"{"service":"a","port":1,"metadata":{"k":1}}"#,
                "provider.metadata.k",
            ),
            (
                r#"{"service":"a","port":1,"metadata":[]}"#,
                "provider.metadata",
            ),
            (
                r#"{"service":"a","port":1,"location":{"city":"x"}}"#,
                "provider.location.city",
            ),
            (
                r#"{"service":"a","port":1,"offline_path":"x"}"#,
                "provider.offline_path",
            ),
            (
                r#"{"service":"a","port":1,"status_path":"/polaris-wasm/offline"}"#,
                "provider.status_path",
            ),
            (r#"{"service":"a","port":1,"ports":1}"#, "provider.ports"),
            (
                r#"{"service":"a","port":1,"namespace":""}"#,
                "provider.namespace",
            ),
            (r#""a""#, "provider"),
            (
                r#"{"service":"a","port":1,"readiness":{}}"#,
                "provider.readiness.cluster",
            ),
            (
                r#"{"service":"a","port":1,"readiness":{"cluster":"c","path":"x"}}"#,
                "provider.readiness.path",
            ),
            (
                r#"{"service":"a","port":1,"readiness":{"cluster":"c","timeout":"1m"}}"#,
                "provider.readiness.timeout",
            ),
            (
                r#"{"service":"a","port":1,"readiness":{"cluster":"c","url":"/"}}"#,
                "provider.readiness.url",
            ),
            (
                r#"{"service":"a","port":1,"metrics_port":0}"#,
                "provider.metrics_port",
            ),
            (
                r#"{"service":"a","port":1,"metrics_path":"/m"}"#,
                "provider.metrics_port",
            ),
            (
                r#"{"service":"a","port":1,"metrics_port":9,"metrics_path":"m"}"#,
                "provider.metrics_path",
            ),
        ] {
            let e = parse(&format!(
                r#"{{"polaris_cluster":"p","provider":{provider}}}"#
            ))
            .unwrap_err();
            assert_eq!(e.field, field, "{provider}: {e}");
        }
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

    #[test]
    fn rate_limit_chooses_whose_rules_apply_and_names_bad_fields() {
        let c = parse(r#"{"polaris_cluster":"p","rate_limit":{"dry_run":["a"]}}"#).unwrap();
        assert_eq!(c.rate_limit, Some(RateLimitSide::Destination));
        assert_eq!(c.rate_limit_rules.dry_run, vec!["a".to_string()]);
        assert_eq!(
            c.kinds(),
            vec![Kind::Instances, Kind::Routing, Kind::RateLimit]
        );
        let off = parse(r#"{"polaris_cluster":"p"}"#).unwrap();
        assert_eq!(off.kinds(), vec![Kind::Instances, Kind::Routing]);
        for (json, field) in [
            (
                r#"{"polaris_cluster":"p","rate_limit":{"rules_of":"both"}}"#,
                "rate_limit.rules_of",
            ),
            (
                r#"{"polaris_cluster":"p","rate_limit":{"rules_of":"local"}}"#,
                "rate_limit.rules_of",
            ),
            (
                r#"{"polaris_cluster":"p","rate_limit":{"dry_run":"a"}}"#,
                "rate_limit.dry_run",
            ),
            (
                r#"{"polaris_cluster":"p","rate_limit":{"dry":[]}}"#,
                "rate_limit.dry",
            ),
        ] {
            let e = parse(json).unwrap_err();
            assert_eq!(e.field, field, "{json}");
        }
    }

    #[test]
    fn the_limiter_is_a_named_cluster_or_discovered_through_an_address_cluster() {
        let c = parse(
            r#"{"polaris_cluster":"p","rate_limit":{"limiter":{"cluster":"polaris_limiter"}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.limiter,
            Some(LimiterConfig::Cluster("polaris_limiter".into()))
        );
        let d =
            parse(r#"{"polaris_cluster":"p","rate_limit":{"limiter":{"address_cluster":"dst"}}}"#)
                .unwrap();
        assert_eq!(
            d.limiter,
            Some(LimiterConfig::Discovered {
                via: "dst".into(),
                header: "x-envoy-original-dst-host".into(),
                service: ServiceKey::new("Polaris", "polaris.limiter"),
            })
        );
        assert_eq!(parse(r#"{"polaris_cluster":"p"}"#).unwrap().limiter, None);
        for (limiter, field) in [
            (r#"{}"#, "rate_limit.limiter"),
            (
                r#"{"cluster":"a","address_cluster":"b"}"#,
                "rate_limit.limiter",
            ),
            (r#"{"cluster":""}"#, "rate_limit.limiter.cluster"),
            (
                r#"{"cluster":"a","service":"s"}"#,
                "rate_limit.limiter.service",
            ),
            (
                r#"{"address_cluster":"a","address_header":"Bad Header"}"#,
                "rate_limit.limiter.address_header",
            ),
            (r#"{"clusters":"a"}"#, "rate_limit.limiter.clusters"),
            (r#""a""#, "rate_limit.limiter"),
        ] {
            let json = format!(r#"{{"polaris_cluster":"p","rate_limit":{{"limiter":{limiter}}}}}"#);
            let e = parse(&json).unwrap_err();
            assert_eq!(e.field, field, "{json}");
        }
    }

    #[test]
    fn rate_limit_takes_concurrency_thresholds_and_bodies_by_rule_name() {
        let c = parse(
            r#"{"polaris_cluster":"p","rate_limit":{"concurrency":{"c":3},"bodies":{"c":"busy"}}}"#,
        )
        .unwrap();
        assert_eq!(c.rate_limit_rules.concurrency, vec![("c".to_string(), 3)]);
        assert_eq!(
            c.rate_limit_rules.bodies,
            vec![("c".to_string(), "busy".to_string())]
        );
        for (rl, field) in [
            (r#"{"concurrency":{"c":0}}"#, "rate_limit.concurrency.c"),
            (r#"{"concurrency":{"c":"3"}}"#, "rate_limit.concurrency.c"),
            (r#"{"concurrency":[3]}"#, "rate_limit.concurrency"),
            (r#"{"bodies":{"c":1}}"#, "rate_limit.bodies.c"),
        ] {
            let e = parse(&format!(r#"{{"polaris_cluster":"p","rate_limit":{rl}}}"#)).unwrap_err();
            assert_eq!(e.field, field, "{rl}: {e}");
        }
    }

    #[test]
    fn circuit_breaking_is_off_unless_configured_and_then_refreshes_breaker_rules() {
        let off = parse(r#"{"polaris_cluster":"p"}"#).unwrap();
        assert_eq!(off.breaker, None);
        assert!(!off.kinds().contains(&Kind::CircuitBreaker));
        let on = parse(r#"{"polaris_cluster":"p","circuit_breaker":{}}"#).unwrap();
        let b = on.breaker.clone().unwrap();
        assert!(
            b.settings.default_rule,
            "polaris-go's default rule is on by default"
        );
        assert!(on.kinds().contains(&Kind::CircuitBreaker));
        assert!(!on.first_load_kinds().contains(&Kind::CircuitBreaker));
        let tuned = parse(
            r#"{"polaris_cluster":"p","circuit_breaker":{"default_rule":false,"dry_run":["a","b"],"probe_cluster":"polaris_probe"}}"#,
        )
        .unwrap()
        .breaker
        .unwrap();
        assert!(!tuned.settings.default_rule);
        assert_eq!(
            tuned.settings.dry_run,
            vec!["a".to_string(), "b".to_string()]
        );
        assert_eq!(tuned.probe_cluster.as_deref(), Some("polaris_probe"));
    }

    #[test]
    fn circuit_breaker_errors_name_the_field() {
        for (json, field) in [
            (r#"{"default_rule":"yes"}"#, "circuit_breaker.default_rule"),
            (r#"{"dry_run":"a"}"#, "circuit_breaker.dry_run"),
            (r#"{"dry_run":[""]}"#, "circuit_breaker.dry_run[0]"),
            (r#"{"probe_cluster":""}"#, "circuit_breaker.probe_cluster"),
            (r#"{"sleep":1}"#, "circuit_breaker.sleep"),
        ] {
            let e = parse(&format!(
                r#"{{"polaris_cluster":"p","circuit_breaker":{json}}}"#
            ))
            .unwrap_err();
            assert_eq!(e.field, field, "{json}");
        }
    }

    #[test]
    fn admission_defaults_bound_first_discoveries_and_allow_any_service() {
        let c = parse(r#"{"polaris_cluster":"p"}"#).unwrap();
        assert_eq!(c.admission, AdmissionConfig::default());
        assert_eq!(c.admission.allowed, None);
        let c = parse(
            r#"{"polaris_cluster":"p","namespace":"prod","admission":{"allowed_services":
            ["echo","*/shop-*"],"new_services_per_second":5,"not_found_ttl":"2s",
            "idle_timeout":"1m"}}"#,
        )
        .unwrap();
        let allowed = c.admission.allowed.unwrap();
        assert!(allowed.allows(&ServiceKey::new("prod", "echo")));
        assert!(!allowed.allows(&ServiceKey::new("default", "echo")));
        assert!(allowed.allows(&ServiceKey::new("x", "shop-cart")));
        assert_eq!(c.admission.new_services_per_second, 5);
        assert_eq!(c.admission.not_found_ttl, Duration::from_secs(2));
        assert_eq!(c.admission.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn bad_admission_settings_name_the_field() {
        for (admission, field) in [
            (
                r#"{"allowed_services":"echo"}"#,
                "admission.allowed_services",
            ),
            (r#"{"allowed_services":[]}"#, "admission.allowed_services"),
            (
                r#"{"allowed_services":["ok",3]}"#,
                "admission.allowed_services[1]",
            ),
            (
                r#"{"allowed_services":["a b"]}"#,
                "admission.allowed_services[0]",
            ),
            (
                r#"{"new_services_per_second":0}"#,
                "admission.new_services_per_second",
            ),
            (r#"{"not_found_ttl":"soon"}"#, "admission.not_found_ttl"),
            (r#"{"idle_timeout":"10ms"}"#, "admission.idle_timeout"),
            (r#"{"allow":[]}"#, "admission.allow"),
        ] {
            let json = format!(r#"{{"polaris_cluster":"p","admission":{admission}}}"#);
            let e = parse(&json).unwrap_err();
            assert_eq!(e.field, field, "{json}");
        }
    }
}
