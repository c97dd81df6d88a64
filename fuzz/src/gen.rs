//! Well-typed but arbitrary inputs, built with `arbitrary`: Polaris routes, instances, request
//! facts and the routing options of the plugin configuration.
//!
//! Strings are either words the filter gives a meaning to (match values, argument keys, label
//! keys), picked from small dictionaries, or anything at all, so the fuzzer reaches both the
//! meaningful paths and the odd inputs (`$header.`, `(`, non-ASCII, control characters).

use std::collections::HashMap;

use arbitrary::Arbitrary;
use polaris_wasm::lb::{ring_hash, Options, Policy, Spec};
use polaris_wasm::matching::{Arg, StaticFacts};
use polaris_wasm::model::Location;
use polaris_wasm::polaris::proto;
use polaris_wasm::routing::{Caller, Failover, Level, MetaFailover, MetadataRouting, Nearby};

/// Match values: every match type's syntax, valid and not.
pub const VALUES: &[&str] = &[
    "",
    "*",
    "v1",
    "v2",
    "v1,v2",
    "x,y",
    "1~5",
    "9~1",
    "a~b",
    "-3~2",
    "0~18446744073709551615",
    "1~",
    "~",
    "(",
    "^v[0-9]+$",
    ".*",
    "^(?!prod).*$",
    "(a)\\1",
    "(a+)+$",
    "\\p{L}",
    "$header.x-v",
    "$query.q",
    "$cookie.c",
    "$method",
    "$path",
    "$caller_ip",
    "team",
    "blue",
    "GET",
    "/p",
    "127.0.0.1",
    "true",
    "ünï",
    "\u{1f}",
];

/// Rule argument keys and instance label keys, as the server sends them and not.
pub const KEYS: &[&str] = &[
    "$header.x-v",
    "$header.X-V",
    "$header.",
    "$query.q",
    "$query.",
    "$cookie.c",
    "$method",
    "$path",
    "$Path",
    "$caller_ip",
    "team",
    "version",
    "env",
    "",
    "*",
    "(",
    "ünï",
];

/// Request header names the rules and the configuration above read.
pub const HEADERS: &[&str] = &["x-v", "X-V", "cookie", "x-env", "x-meta", "x-hash", ""];

const SERVICES: &[&str] = &["echo", "*", "", "other", "me"];
const NAMESPACES: &[&str] = &["default", "*", "", "prod"];
const PLACES: &[&str] = &["", "r1", "r2", "z1", "z2", "c1"];
const HOSTS: &[&str] = &["127.0.0.1", "::1", "[::1]", "10.0.0.1", "", "h"];

/// A word from a dictionary, or any string.
#[derive(Arbitrary, Clone, Debug)]
pub enum Text {
    Word(u8),
    Raw(String),
}

impl Text {
    pub fn pick(&self, words: &[&str]) -> String {
        match self {
            Text::Word(n) => words
                .get(usize::from(*n) % words.len().max(1))
                .copied()
                .unwrap_or_default()
                .to_string(),
            Text::Raw(s) => s.clone(),
        }
    }
}

/// At most `n` items of a generated list: keeps one input's work small.
fn first<T>(items: &[T], n: usize) -> &[T] {
    items.get(..n.min(items.len())).unwrap_or_default()
}

#[derive(Arbitrary, Clone, Debug)]
pub struct MatchSpec {
    kind: u8,
    value: Option<Text>,
    value_type: u8,
}

impl MatchSpec {
    pub fn to_proto(&self) -> proto::MatchString {
        // 0..=5 are the match types; 6, -1 and i32::MAX are not.
        let kind = match self.kind % 9 {
            k @ 0..=6 => i32::from(k),
            7 => -1,
            _ => i32::MAX,
        };
        // 0..=2 are the value types (TEXT, PARAMETER, VARIABLE); 3 and -1 are not.
        let value_type = match self.value_type % 5 {
            t @ 0..=3 => i32::from(t),
            _ => -1,
        };
        proto::MatchString {
            r#type: kind,
            value: self.value.as_ref().map(|v| v.pick(VALUES)),
            value_type,
        }
    }
}

fn labels(specs: &[(Text, MatchSpec)]) -> HashMap<String, proto::MatchString> {
    first(specs, 3)
        .iter()
        .map(|(k, m)| (k.pick(KEYS), m.to_proto()))
        .collect()
}

#[derive(Arbitrary, Clone, Debug)]
pub struct SourceSpec {
    service: Option<Text>,
    namespace: Option<Text>,
    args: Vec<(Text, MatchSpec)>,
}

#[derive(Arbitrary, Clone, Debug)]
pub struct DestinationSpec {
    service: Option<Text>,
    namespace: Option<Text>,
    labels: Vec<(Text, MatchSpec)>,
    priority: Option<u32>,
    weight: Option<u32>,
    name: Option<Text>,
}

#[derive(Arbitrary, Clone, Debug)]
pub struct RouteSpec {
    sources: Vec<SourceSpec>,
    destinations: Vec<DestinationSpec>,
}

impl RouteSpec {
    pub fn to_proto(&self) -> proto::Route {
        proto::Route {
            sources: first(&self.sources, 3)
                .iter()
                .map(|s| proto::Source {
                    service: s.service.as_ref().map(|t| t.pick(SERVICES)),
                    namespace: s.namespace.as_ref().map(|t| t.pick(NAMESPACES)),
                    metadata: labels(&s.args),
                })
                .collect(),
            destinations: first(&self.destinations, 4)
                .iter()
                .map(|d| proto::Destination {
                    service: d.service.as_ref().map(|t| t.pick(SERVICES)),
                    namespace: d.namespace.as_ref().map(|t| t.pick(NAMESPACES)),
                    metadata: labels(&d.labels),
                    // Small numbers mostly, so groups tie and weights decide.
                    priority: d.priority.map(|p| if p > 1000 { p } else { p % 3 }),
                    weight: d.weight,
                    name: d
                        .name
                        .as_ref()
                        .map(|t| t.pick(&["gray.s0.g0", "gray.s0.g1", "r.s1.g0", "", "."])),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

pub fn routes(specs: &[RouteSpec]) -> Vec<proto::Route> {
    first(specs, 4).iter().map(RouteSpec::to_proto).collect()
}

#[derive(Arbitrary, Clone, Debug)]
pub struct InstanceSpec {
    id: Option<Text>,
    host: Option<Text>,
    port: Option<u32>,
    weight: Option<u32>,
    healthy: Option<bool>,
    isolate: Option<bool>,
    metadata: Vec<(Text, Text)>,
    location: Option<(Text, Text, Text)>,
}

impl InstanceSpec {
    pub fn to_proto(&self, n: usize) -> proto::Instance {
        proto::Instance {
            id: self
                .id
                .as_ref()
                .map(|t| t.pick(&["a", "b", "c", "", "a"]))
                .or_else(|| Some(format!("i{n}"))),
            // An instance without a host or port is dropped: most have them, so decisions are
            // made among several.
            host: Some(
                self.host
                    .as_ref()
                    .map_or("127.0.0.1".into(), |t| t.pick(HOSTS)),
            ),
            // Mostly valid ports; sometimes 0 or out of range.
            port: Some(
                self.port
                    .map_or(8000 + n as u32, |p| if p > 70_000 { p % 70_000 } else { p }),
            ),
            weight: self.weight.map(|w| match w % 4 {
                0 => 0,
                1 => 100,
                2 => w % 1000,
                _ => w,
            }),
            healthy: self.healthy,
            isolate: self.isolate,
            metadata: first(&self.metadata, 3)
                .iter()
                .map(|(k, v)| (k.pick(KEYS), v.pick(VALUES)))
                .collect(),
            location: self.location.as_ref().map(|(r, z, c)| proto::Location {
                region: Some(r.pick(PLACES)),
                zone: Some(z.pick(PLACES)),
                campus: Some(c.pick(PLACES)),
            }),
            ..Default::default()
        }
    }
}

/// A DiscoverResponse (INSTANCE) for `default/echo` with these instances.
pub fn instance_answer(
    specs: &[InstanceSpec],
    nearby_enabled: Option<bool>,
) -> proto::DiscoverResponse {
    let mut metadata = HashMap::new();
    if let Some(on) = nearby_enabled {
        metadata.insert(
            "internal-enable-nearby".to_string(),
            if on { "TRUE" } else { "false" }.to_string(),
        );
    }
    proto::DiscoverResponse {
        code: Some(200_000),
        r#type: proto::discover_response::DiscoverResponseType::Instance as i32,
        service: Some(proto::Service {
            name: Some("echo".into()),
            namespace: Some("default".into()),
            revision: Some("r".into()),
            metadata,
            ..Default::default()
        }),
        instances: first(specs, 8)
            .iter()
            .enumerate()
            .map(|(n, s)| s.to_proto(n))
            .collect(),
        ..Default::default()
    }
}

#[derive(Arbitrary, Clone, Debug)]
pub struct FactsSpec {
    headers: Vec<(Text, Text)>,
    method: Text,
    path: Text,
    query: Vec<(Text, Text)>,
    cookies: Vec<(Text, Text)>,
    caller_ip: Text,
}

/// A header value as Envoy hands it over: never NUL, CR or LF (its codecs reject them).
pub fn on_the_wire(s: String) -> String {
    if s.contains(['\0', '\r', '\n']) {
        s.replace(['\0', '\r', '\n'], "")
    } else {
        s
    }
}

impl FactsSpec {
    pub fn to_facts(&self, caller: &Caller) -> StaticFacts {
        let mut headers: Vec<(String, String)> = first(&self.headers, 4)
            .iter()
            .map(|(k, v)| (k.pick(HEADERS), on_the_wire(v.pick(VALUES))))
            .collect();
        if !self.cookies.is_empty() {
            let cookie = first(&self.cookies, 3)
                .iter()
                .map(|(k, v)| format!("{}={}", k.pick(&["c", "d", ""]), v.pick(VALUES)))
                .collect::<Vec<_>>()
                .join("; ");
            headers.push(("cookie".into(), on_the_wire(cookie)));
        }
        let mut path = self.path.pick(&["/p", "/", "", "/P/q"]);
        for (n, (k, v)) in first(&self.query, 3).iter().enumerate() {
            path.push(if n == 0 { '?' } else { '&' });
            path.push_str(&k.pick(&["q", "x", ""]));
            path.push('=');
            path.push_str(&v.pick(VALUES));
        }
        StaticFacts {
            headers,
            method: on_the_wire(self.method.pick(&["GET", "POST", "", "get"])),
            path: on_the_wire(path),
            caller_ip: self.caller_ip.pick(&["127.0.0.1", "::1", ""]),
            custom: caller
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

#[derive(Arbitrary, Clone, Debug)]
pub struct CallerSpec {
    service: Text,
    namespace: Text,
    metadata: Vec<(Text, Text)>,
}

impl CallerSpec {
    pub fn to_caller(&self) -> Caller {
        Caller {
            service: self.service.pick(&["me", "", "echo"]),
            namespace: self.namespace.pick(&["default", "prod"]),
            metadata: first(&self.metadata, 3)
                .iter()
                .map(|(k, v)| (k.pick(KEYS), v.pick(VALUES)))
                .collect(),
        }
    }
}

fn level(n: u8) -> Level {
    [Level::Campus, Level::Zone, Level::Region, Level::All]
        .get(usize::from(n % 4))
        .copied()
        .unwrap_or(Level::All)
}

/// The routing half of the plugin configuration: balancer, failovers, nearby and metadata routing.
#[derive(Arbitrary, Clone, Debug)]
pub struct RoutingOptions {
    policy: u8,
    vnodes: u16,
    failover_none: bool,
    nearby: Option<(Text, Text, Text, u8, u8, u8)>,
    metadata: Option<(Vec<(Text, Text)>, u8)>,
    hash_key: Option<(u8, Text)>,
}

impl RoutingOptions {
    pub fn spec(&self) -> Spec {
        let policy = Policy::ALL
            .get(usize::from(self.policy % 4))
            .copied()
            .unwrap_or_default();
        Spec {
            policy,
            options: Options {
                vnode_count: 1 + usize::from(self.vnodes) % ring_hash::MAX_VNODE_COUNT,
            },
        }
    }

    pub fn failover(&self) -> Failover {
        if self.failover_none {
            Failover::None
        } else {
            Failover::All
        }
    }

    /// Nearby settings as the configuration validates them (max level no nearer than the first).
    pub fn nearby(&self) -> Option<Nearby> {
        let (r, z, c, first, widest, percent) = self.nearby.as_ref()?;
        let match_level = level(*first);
        let max_match_level = level(*widest).min(match_level);
        Some(Nearby {
            location: Location {
                region: r.pick(PLACES),
                zone: z.pick(PLACES),
                campus: c.pick(PLACES),
            },
            match_level,
            max_match_level,
            unhealthy_percent: 1 + u32::from(*percent) % 100,
        })
    }

    /// Metadata routing as the configuration validates it (1 to 3 headers).
    pub fn metadata(&self) -> Option<MetadataRouting> {
        let (labels, failover) = self.metadata.as_ref()?;
        let labels: Vec<(String, String)> = first(labels, 3)
            .iter()
            .map(|(h, k)| (h.pick(&["x-v", "x-meta", "x-env"]), k.pick(KEYS)))
            .filter(|(_, k)| !k.is_empty())
            .collect();
        let failover = [
            MetaFailover::None,
            MetaFailover::All,
            MetaFailover::Others,
            MetaFailover::NotContainKey,
        ]
        .get(usize::from(failover % 4))
        .copied()
        .unwrap_or_default();
        (!labels.is_empty()).then_some(MetadataRouting { labels, failover })
    }

    pub fn hash_key(&self) -> Option<Arg> {
        let (from, name) = self.hash_key.as_ref()?;
        let name = name.pick(&["x-hash", "x-v", "c", "q"]);
        Some(match from % 4 {
            0 => Arg::Header(name.to_ascii_lowercase()),
            1 => Arg::Cookie(name),
            2 => Arg::Query(name),
            _ => Arg::CallerIp,
        })
    }
}
