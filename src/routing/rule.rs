//! Rule routing rules (v1 `Route`s, as the server serves v2 RulePolicy rules), compiled once per
//! snapshot change.

use std::collections::HashMap;

use super::args::{Arg, RequestFacts};
use super::matcher::{Matcher, ValueSource};
use crate::polaris::proto;

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
    namespace: String,
    service: String,
    args: Vec<(Arg, Matcher)>,
}

#[derive(Clone, Debug)]
pub struct Destination {
    pub namespace: String,
    pub service: String,
    /// Instance metadata key and matcher, all of which must hold.
    pub labels: Vec<(String, Matcher)>,
    pub priority: u32,
    pub weight: u32,
    /// `rule.subrule.group` as the server names it.
    pub name: String,
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
    fn matches(&self, direction: Direction, caller: &Caller, facts: &mut dyn RequestFacts) -> bool {
        if direction == Direction::Inbound
            && !(name_matches(&self.namespace, &caller.namespace)
                && name_matches(&self.service, &caller.service))
        {
            return false;
        }
        self.args.iter().all(|(arg, matcher)| match matcher.source {
            // polaris-go: a PARAMETER source argument matches anything.
            ValueSource::Parameter => true,
            _ => matcher.matches(facts.arg(arg)),
        })
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
}

impl Route {
    /// Sources are OR-ed; a route with no sources matches every request.
    pub fn matches(
        &self,
        direction: Direction,
        caller: &Caller,
        facts: &mut dyn RequestFacts,
    ) -> bool {
        self.sources.is_empty()
            || self
                .sources
                .iter()
                .any(|s| s.matches(direction, caller, facts))
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
        let labels = compile_map(&d.metadata, caller)?;
        if labels
            .iter()
            .any(|(_, m)| m.source == ValueSource::Parameter)
        {
            return Err("PARAMETER destination labels are not supported yet".into());
        }
        destinations.push(Destination {
            namespace: text(&d.namespace),
            service: text(&d.service),
            labels,
            priority: d.priority.unwrap_or(0),
            weight: d.weight.unwrap_or(0),
            name: text(&d.name),
        });
    }
    let mut sources = Vec::with_capacity(route.sources.len());
    for s in &route.sources {
        let args = compile_map(&s.metadata, caller)?
            .into_iter()
            .map(|(k, m)| (Arg::parse(&k), m))
            .collect();
        sources.push(Source {
            namespace: text(&s.namespace),
            service: text(&s.service),
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
        let c = Caller::default();
        assert!(r.matches(Direction::Inbound, &c, &mut facts(&[("x-env", "gray")])));
        assert!(!r.matches(Direction::Inbound, &c, &mut facts(&[("x-env", "blue")])));
        assert!(!r.matches(Direction::Inbound, &c, &mut facts(&[])));
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
        assert!(r.matches(Direction::Inbound, &Caller::default(), &mut facts(&[])));
    }

    #[test]
    fn inbound_sources_check_the_caller_service() {
        let mut p = route(&[]);
        p.sources[0].service = Some("svc-a".into());
        p.sources[0].namespace = Some("default".into());
        let r = compile_route(&p, &Caller::default()).unwrap();
        let a = Caller {
            namespace: "default".into(),
            service: "svc-a".into(),
            ..Default::default()
        };
        assert!(r.matches(Direction::Inbound, &a, &mut facts(&[])));
        assert!(!r.matches(Direction::Inbound, &Caller::default(), &mut facts(&[])));
        assert!(r.matches(Direction::Outbound, &Caller::default(), &mut facts(&[])));
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
        assert!(r.matches(
            Direction::Inbound,
            &caller,
            &mut facts(&[("x-env", "gray")])
        ));
        assert!(compile_route(&route(&[("$header.x-env", m)]), &Caller::default()).is_err());
    }

    #[test]
    fn parameter_source_matches_anything() {
        let mut m = ms(T::Exact, "whatever");
        m.value_type = proto::match_string::ValueType::Parameter as i32;
        let r = compile_route(&route(&[("$header.x-env", m)]), &Caller::default()).unwrap();
        assert!(r.matches(Direction::Inbound, &Caller::default(), &mut facts(&[])));
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
        assert!(r.matches(Direction::Inbound, &Caller::default(), &mut f));
    }
}
