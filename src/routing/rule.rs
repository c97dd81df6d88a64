//! Rule routing rules (v1 `Route`s, as the server serves v2 RulePolicy rules), compiled once per
//! snapshot change.

use std::collections::{HashMap, HashSet};

use super::args::{Arg, RequestFacts};
use super::matcher::{LimitHit, MatchKind, Matcher, ValueSource, BACKTRACK_LIMIT};
use super::regex_set::{RegexEval, RegexSets};
use crate::polaris::proto;
use crate::snapshot::Instance;

/// Who is calling: this Envoy's own service (plugin `caller`), possibly anonymous.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service: String,
    pub metadata: HashMap<String, String>,
}

/// Inbound rules (the callee's) check the caller's service; outbound rules (the caller's own)
/// do not, and must name the callee in their destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Clone, Debug)]
pub struct Source {
    /// Whether the source's namespace and service name this Envoy's caller: fixed by the plugin
    /// configuration, so settled when the rule is compiled.
    names_caller: bool,
    args: Vec<(Arg, Matcher)>,
}

#[derive(Clone, Debug)]
pub struct Destination {
    pub namespace: String,
    pub service: String,
    /// Instance metadata key and matcher, all of which must hold.
    pub labels: Vec<(String, Matcher)>,
    /// Labels whose value comes from the request (PARAMETER), sorted by key.
    pub parameters: Vec<Parameter>,
    pub priority: u32,
    pub weight: u32,
    /// `rule.subrule.group` as the server names it.
    pub name: String,
}

/// A destination label whose value the request supplies (value type PARAMETER): instances must
/// carry `key` equal to the request's `arg` or, with `negate` (NOT_EQUALS), different from it.
/// As in polaris-go, every other match type compares exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parameter {
    pub key: String,
    pub arg: Arg,
    pub negate: bool,
}

#[derive(Clone, Debug)]
pub struct Route {
    /// For logs and the debug trace: the v2 rule name, from the first destination's name.
    pub rule: String,
    pub sources: Vec<Source>,
    pub destinations: Vec<Destination>,
}

fn name_matches(rule: &str, actual: &str) -> bool {
    rule.is_empty() || rule == "*" || rule == actual
}

impl Source {
    /// Every argument must be present and match (polaris-go `matchSourceMetadata`: a key the
    /// request lacks fails the source, whatever the match type, PARAMETER included).
    fn matches(
        &self,
        direction: Direction,
        facts: &mut dyn RequestFacts,
        regexes: &mut RegexEval<'_>,
    ) -> Result<bool, LimitHit> {
        if direction == Direction::Inbound && !self.names_caller {
            return Ok(false);
        }
        for (arg, matcher) in &self.args {
            let matched = match matcher.source {
                // polaris-go: a PARAMETER source argument matches any value the request has.
                ValueSource::Parameter => facts.arg(arg).is_some(),
                _ => regexes.check(arg, matcher, facts)?,
            };
            if !matched {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Source {
    /// The value this source requires `arg` to equal exactly, if it does.
    pub fn exact(&self, arg: &Arg) -> Option<&str> {
        self.args
            .iter()
            .find(|(a, _)| a == arg)
            .and_then(|(_, m)| m.exact_value())
    }

    pub fn args(&self) -> impl Iterator<Item = &Arg> {
        self.args.iter().map(|(a, _)| a)
    }
}

impl Destination {
    /// Whether this destination is about `namespace/service`.
    pub fn targets(&self, namespace: &str, service: &str) -> bool {
        name_matches(&self.namespace, namespace) && name_matches(&self.service, service)
    }

    /// The destination's fixed labels settled against one instance set (see [`Admission`]).
    pub fn admission<'a>(&'a self, instances: &'a [Instance]) -> Admission<'a> {
        let not_equals = self
            .labels
            .iter()
            .map(|(key, m)| {
                if m.kind() != MatchKind::NotEquals || m.is_any() {
                    return HashSet::new();
                }
                instances
                    .iter()
                    .filter(|i| i.is_selectable() && i.healthy)
                    .filter_map(|i| i.metadata.get(key).map(String::as_str))
                    .filter(|v| m.matches(Some(v)))
                    .collect()
            })
            .collect();
        Admission {
            destination: self,
            not_equals,
        }
    }
}

/// Which instances a destination's fixed labels let in, as polaris-go's `matchDstMetadata`:
/// - only `*` admits an instance that lacks the key, whatever the match type;
/// - a NOT_EQUALS label admits the values, other than its own, that some *healthy* instance (not
///   isolated, weight > 0) of the service carries (`GetInstancesWithMetaValuesNotEqual`; every
///   other match type looks at healthy and unhealthy values alike, `GetInstanceMetaValues`). An
///   unhealthy instance whose value no healthy one shares is left out, so when only unhealthy
///   instances differ the group is empty and the next group or rule decides, instead of
///   recover-all inside the group;
/// - a REGEX needs a non-empty leftmost match.
pub struct Admission<'a> {
    destination: &'a Destination,
    /// Per label, in label order: the values a NOT_EQUALS label admits (empty for the others).
    not_equals: Vec<HashSet<&'a str>>,
}

impl Admission<'_> {
    pub fn admits(&self, metadata: &HashMap<String, String>) -> bool {
        let d = self.destination;
        d.labels
            .iter()
            .zip(&self.not_equals)
            .all(|((key, m), allowed)| {
                if m.is_any() {
                    return true;
                }
                let Some(value) = metadata.get(key) else {
                    return false;
                };
                if m.kind() == MatchKind::NotEquals {
                    return allowed.contains(value.as_str());
                }
                m.check_label(value).unwrap_or_else(|hit| {
                    log_limit_hit(hit, &d.name);
                    false
                })
            })
    }
}

/// Logs a REGEX that ran out of backtracking steps, once per counter period (the metric counts
/// every hit), so a stream of hostile values cannot flood the log.
fn log_limit_hit(hit: LimitHit, rule: &str) {
    if hit.first {
        log::warn!(
            "rule {rule}: a REGEX ran out of its {BACKTRACK_LIMIT} backtracking steps and was \
             counted as no match (metric regex_backtrack_limit)"
        );
    }
}

impl Route {
    /// Sources are OR-ed; a route with no sources matches every request.
    pub fn matches(
        &self,
        direction: Direction,
        facts: &mut dyn RequestFacts,
        regexes: &mut RegexEval<'_>,
    ) -> bool {
        self.sources.is_empty()
            || self.sources.iter().any(|s| {
                s.matches(direction, facts, regexes).unwrap_or_else(|hit| {
                    log_limit_hit(hit, &self.rule);
                    false
                })
            })
    }

    /// Gives each text REGEX source test a slot in `sets`, so a plan runs each argument's
    /// regexes as one set.
    pub fn file_regexes(&mut self, sets: &mut RegexSets) {
        for source in &mut self.sources {
            for (arg, matcher) in &mut source.args {
                matcher.slot = sets.file(arg, matcher);
            }
        }
    }
}

fn text(v: &Option<String>) -> String {
    v.clone().unwrap_or_default()
}

/// Resolves a VARIABLE matcher from the caller's metadata (our stand-in for polaris-go's SDK
/// variables): the value is fixed per configuration, so it is compiled here, not per request.
fn resolve(matcher: Matcher, caller: &Caller) -> Result<Matcher, String> {
    match matcher.source {
        ValueSource::Variable => {
            let value = caller.metadata.get(&matcher.raw).ok_or_else(|| {
                format!("VARIABLE `{}` is not set in caller.metadata", matcher.raw)
            })?;
            matcher.with_value(value).map_err(|e| e.to_string())
        }
        _ => Ok(matcher),
    }
}

fn compile_map(
    map: &HashMap<String, proto::MatchString>,
    caller: &Caller,
) -> Result<Vec<(String, Matcher)>, String> {
    let mut out = Vec::with_capacity(map.len());
    for (key, m) in map {
        let matcher = Matcher::compile(m).map_err(|e| format!("key `{key}`: {e}"))?;
        out.push((
            key.clone(),
            resolve(matcher, caller).map_err(|e| format!("key `{key}`: {e}"))?,
        ));
    }
    // Stable order, so a rule matches and logs the same way on every worker.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Compiles one route; the error says which part is unusable.
pub fn compile_route(route: &proto::Route, caller: &Caller) -> Result<Route, String> {
    let mut destinations = Vec::with_capacity(route.destinations.len());
    for d in &route.destinations {
        let mut labels = Vec::new();
        let mut parameters = Vec::new();
        for (key, m) in compile_map(&d.metadata, caller)? {
            if m.source != ValueSource::Parameter {
                labels.push((key, m));
            } else if m.raw.is_empty() {
                return Err(format!("key `{key}`: PARAMETER names no request key"));
            } else if m.kind() == MatchKind::Regex {
                // A pattern taken from the request would be compiled per request.
                return Err(format!("key `{key}`: a PARAMETER value cannot be a REGEX"));
            } else {
                parameters.push(Parameter {
                    arg: Arg::parse(&m.raw),
                    negate: m.kind() == MatchKind::NotEquals,
                    key,
                });
            }
        }
        if parameters.len() > 1 && parameters.iter().any(|p| p.negate) {
            return Err("a NOT_EQUALS PARAMETER label must be the only PARAMETER label".into());
        }
        destinations.push(Destination {
            namespace: text(&d.namespace),
            service: text(&d.service),
            labels,
            parameters,
            priority: d.priority.unwrap_or(0),
            weight: d.weight.unwrap_or(0),
            name: text(&d.name),
        });
    }
    let mut sources = Vec::with_capacity(route.sources.len());
    for s in &route.sources {
        let args = compile_map(&s.metadata, caller)?
            .into_iter()
            // polaris-go skips a source key `*`.
            .filter(|(k, _)| k != "*")
            .map(|(k, m)| (Arg::parse(&k), m))
            .collect();
        sources.push(Source {
            names_caller: name_matches(&text(&s.namespace), &caller.namespace)
                && name_matches(&text(&s.service), &caller.service),
            args,
        });
    }
    let rule = destinations
        .first()
        .map(|d| d.name.split('.').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    Ok(Route {
        rule,
        sources,
        destinations,
    })
}

/// Compiles routes in order, skipping (and reporting) the unusable ones.
pub fn compile_routes(routes: &[proto::Route], caller: &Caller) -> (Vec<Route>, Vec<String>) {
    let mut ok = Vec::with_capacity(routes.len());
    let mut errors = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        match compile_route(r, caller) {
            Ok(route) => ok.push(route),
            Err(e) => {
                let name = r
                    .destinations
                    .first()
                    .and_then(|d| d.name.as_deref())
                    .and_then(|n| n.split('.').next())
                    .unwrap_or("?");
                errors.push(format!("rule {name} (route #{i}) skipped: {e}"));
            }
        }
    }
    (ok, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::args::StaticFacts;
    use proto::match_string::MatchStringType as T;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    pub fn ms(kind: T, value: &str) -> proto::MatchString {
        proto::MatchString {
            r#type: kind as i32,
            value: Some(value.into()),
            value_type: 0,
        }
    }

    fn route(source_meta: &[(&str, proto::MatchString)]) -> proto::Route {
        proto::Route {
            sources: vec![proto::Source {
                service: Some("*".into()),
                namespace: Some("*".into()),
                metadata: source_meta
                    .iter()
                    .cloned()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }],
            destinations: vec![proto::Destination {
                service: Some("svc-b".into()),
                namespace: Some("default".into()),
                metadata: [("version".to_string(), ms(T::Exact, "v2"))].into(),
                priority: Some(0),
                weight: Some(100),
                name: Some("gray.s0.g0".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn matches(r: &Route, d: Direction, f: &mut StaticFacts) -> bool {
        r.matches(d, f, &mut RegexEval::new(&RegexSets::default()))
    }

    fn facts(headers: &[(&str, &str)]) -> StaticFacts {
        StaticFacts {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            method: "GET".into(),
            path: "/p?q=abc".into(),
            caller_ip: "127.0.0.1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn header_rule_matches_only_gray_requests() {
        let r = compile_route(
            &route(&[("$header.x-env", ms(T::Exact, "gray"))]),
            &Caller::default(),
        )
        .unwrap();
        assert_eq!(r.rule, "gray");
        assert!(matches(
            &r,
            Direction::Inbound,
            &mut facts(&[("x-env", "gray")])
        ));
        assert!(!matches(
            &r,
            Direction::Inbound,
            &mut facts(&[("x-env", "blue")])
        ));
        assert!(!matches(&r, Direction::Inbound, &mut facts(&[])));
    }

    #[test]
    fn every_argument_kind_is_read_from_the_request() {
        let r = compile_route(
            &route(&[
                ("$method", ms(T::NotEquals, "DELETE")),
                ("$path", ms(T::Exact, "/p")),
                ("$query.q", ms(T::Regex, "^a")),
                ("$caller_ip", ms(T::In, "127.0.0.1,::1")),
            ]),
            &Caller::default(),
        )
        .unwrap();
        assert!(matches(&r, Direction::Inbound, &mut facts(&[])));
    }

    #[test]
    fn inbound_sources_check_the_caller_service() {
        let mut p = route(&[]);
        p.sources[0].service = Some("svc-a".into());
        p.sources[0].namespace = Some("default".into());
        let a = Caller {
            namespace: "default".into(),
            service: "svc-a".into(),
            ..Default::default()
        };
        let from_a = compile_route(&p, &a).unwrap();
        let anonymous = compile_route(&p, &Caller::default()).unwrap();
        assert!(matches(&from_a, Direction::Inbound, &mut facts(&[])));
        assert!(!matches(&anonymous, Direction::Inbound, &mut facts(&[])));
        assert!(matches(&anonymous, Direction::Outbound, &mut facts(&[])));
    }

    #[test]
    fn bad_regex_rule_is_skipped_and_named_while_others_compile() {
        let bad = route(&[("$header.x", ms(T::Regex, "(oops"))]);
        let good = route(&[("$header.x", ms(T::Exact, "1"))]);
        let (routes, errors) = compile_routes(&[bad, good], &Caller::default());
        assert_eq!(routes.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("rule gray"), "{errors:?}");
        assert!(errors[0].contains("bad regex"), "{errors:?}");
    }

    #[test]
    fn variable_values_come_from_caller_metadata() {
        let mut m = ms(T::Exact, "ENV");
        m.value_type = proto::match_string::ValueType::Variable as i32;
        let caller = Caller {
            metadata: [("ENV".to_string(), "gray".to_string())].into(),
            ..Default::default()
        };
        let r = compile_route(&route(&[("$header.x-env", m.clone())]), &caller).unwrap();
        assert!(matches(
            &r,
            Direction::Inbound,
            &mut facts(&[("x-env", "gray")])
        ));
        assert!(compile_route(&route(&[("$header.x-env", m)]), &Caller::default()).is_err());
    }

    #[test]
    fn parameter_source_matches_any_present_value_but_not_an_absent_one() {
        let mut m = ms(T::Exact, "whatever");
        m.value_type = proto::match_string::ValueType::Parameter as i32;
        let r = compile_route(&route(&[("$header.x-env", m)]), &Caller::default()).unwrap();
        assert!(matches(
            &r,
            Direction::Inbound,
            &mut facts(&[("x-env", "anything")])
        ));
        assert!(!matches(&r, Direction::Inbound, &mut facts(&[])));
    }

    #[test]
    fn not_equals_and_not_in_sources_fail_when_the_request_lacks_the_key() {
        for m in [
            ms(T::NotEquals, "prod"),
            ms(T::NotIn, "prod,stage"),
            ms(T::Exact, "*"),
        ] {
            let r =
                compile_route(&route(&[("$header.x-env", m.clone())]), &Caller::default()).unwrap();
            assert!(
                matches(&r, Direction::Inbound, &mut facts(&[("x-env", "gray")])),
                "{m:?}"
            );
            assert!(!matches(&r, Direction::Inbound, &mut facts(&[])), "{m:?}");
        }
    }

    #[test]
    fn a_source_key_star_is_ignored_as_in_polaris_go() {
        let r = compile_route(
            &route(&[("*", ms(T::Exact, "x")), ("$method", ms(T::Exact, "GET"))]),
            &Caller::default(),
        )
        .unwrap();
        assert!(matches(&r, Direction::Inbound, &mut facts(&[])));
    }

    #[test]
    fn a_look_ahead_source_regex_is_kept_and_matches_as_in_polaris_go() {
        let (routes, errors) = compile_routes(
            &[route(&[("$header.x-env", ms(T::Regex, "^(?!prod).*$"))])],
            &Caller::default(),
        );
        assert!(errors.is_empty(), "{errors:?}");
        let r = &routes[0];
        assert!(matches(
            r,
            Direction::Inbound,
            &mut facts(&[("x-env", "gray")])
        ));
        assert!(!matches(
            r,
            Direction::Inbound,
            &mut facts(&[("x-env", "prod-2")])
        ));
        assert!(!matches(r, Direction::Inbound, &mut facts(&[])));
    }

    fn instance(version: &str, healthy: bool) -> Instance {
        Instance {
            id: version.into(),
            host: "127.0.0.1".into(),
            port: 1,
            weight: 100,
            healthy,
            isolated: false,
            metadata: [("version".to_string(), version.to_string())].into(),
            location: Default::default(),
            upstream: String::new(),
        }
    }

    #[test]
    fn not_equals_labels_admit_only_values_a_healthy_instance_carries() {
        let r = compile_route(
            &with_destination_labels(&[("version", ms(T::NotEquals, "v1"))]),
            &Caller::default(),
        )
        .unwrap();
        let instances = vec![
            instance("v1", true),
            instance("v2", false),
            instance("v2", true),
            instance("v3", false),
        ];
        let admission = r.destinations[0].admission(&instances);
        let admitted: Vec<bool> = instances
            .iter()
            .map(|i| admission.admits(&i.metadata))
            .collect();
        // v2 has a healthy carrier, so its unhealthy one stays; v3 has none.
        assert_eq!(admitted, [false, true, true, false]);
    }

    #[test]
    fn a_destination_regex_with_look_ahead_selects_instances() {
        let r = compile_route(
            &with_destination_labels(&[("version", ms(T::Regex, "^(?!v1)v"))]),
            &Caller::default(),
        )
        .unwrap();
        let instances = vec![instance("v1", true), instance("v2", true)];
        let admission = r.destinations[0].admission(&instances);
        assert!(!admission.admits(&instances[0].metadata));
        assert!(admission.admits(&instances[1].metadata));
    }

    fn with_destination_labels(labels: &[(&str, proto::MatchString)]) -> proto::Route {
        let mut r = route(&[]);
        r.destinations[0].metadata = labels
            .iter()
            .cloned()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        r
    }

    fn param(kind: T, key: &str) -> proto::MatchString {
        proto::MatchString {
            value_type: proto::match_string::ValueType::Parameter as i32,
            ..ms(kind, key)
        }
    }

    #[test]
    fn parameter_destination_labels_name_the_request_argument() {
        let r = compile_route(
            &with_destination_labels(&[
                ("version", param(T::Exact, "$header.X-Version")),
                ("lane", param(T::Range, "lane")),
                ("zone", ms(T::Exact, "z1")),
            ]),
            &Caller::default(),
        )
        .unwrap();
        let d = &r.destinations[0];
        assert_eq!(d.labels.len(), 1);
        assert_eq!(
            d.parameters,
            vec![
                Parameter {
                    key: "lane".into(),
                    arg: Arg::Custom("lane".into()),
                    negate: false
                },
                Parameter {
                    key: "version".into(),
                    arg: Arg::Header("x-version".into()),
                    negate: false
                },
            ]
        );
    }

    #[test]
    fn unusable_parameter_labels_skip_the_rule_with_the_reason() {
        for (labels, reason) in [
            (
                vec![("version", param(T::Regex, "$header.x"))],
                "cannot be a REGEX",
            ),
            (
                vec![("version", param(T::Exact, ""))],
                "names no request key",
            ),
            (
                vec![
                    ("version", param(T::NotEquals, "$header.x")),
                    ("lane", param(T::Exact, "$header.y")),
                ],
                "must be the only PARAMETER label",
            ),
        ] {
            let (routes, errors) =
                compile_routes(&[with_destination_labels(&labels)], &Caller::default());
            assert!(routes.is_empty());
            assert!(errors[0].contains(reason), "{errors:?}");
        }
    }

    #[test]
    fn custom_keys_read_caller_metadata() {
        let r = compile_route(
            &route(&[("team", ms(T::Exact, "blue"))]),
            &Caller::default(),
        )
        .unwrap();
        let mut f = facts(&[]);
        f.custom = vec![("team".into(), "blue".into())];
        assert!(matches(&r, Direction::Inbound, &mut f));
    }
}
