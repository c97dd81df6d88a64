//! CIRCUIT_BREAKER rules compiled for one destination service and this Envoy's caller, once per
//! change of the service's shared entry.
//!
//! Selection follows polaris-go (`composite/rule.go: selectCircuitBreakerRule`, HEAD): rules are
//! sorted by priority, then the more specific destination first, then id; a rule applies when it
//! is enabled, its level is SERVICE, METHOD or INSTANCE, its destination names this service (empty
//! or `*` = any) and its source names this Envoy's caller (without a configured caller only `*` or
//! empty sources match). The first such rule of a level is that level's rule; METHOD rules are
//! kept in order and the first whose API (block_configs `api`, else the deprecated
//! `destination.method`) matches the request path applies to it. When no enabled rule of any level
//! applies, polaris-go's default INSTANCE rule does (unless turned off).
//!
//! A rule that cannot be compiled (a MatchString that does not compile, a DELAY that is not a
//! number) is skipped and logged by name; the others apply.

use std::cmp::Ordering;
use std::rc::Rc;

use super::outcome::Outcome;
use crate::matching::Matcher;
use crate::model::ServiceKey;
use crate::polaris::proto;
use crate::routing::Caller;
use crate::snapshot::{decode_circuit_breaker, DecodeError};

/// polaris-go's default rule name (`composite/default.go`).
pub const DEFAULT_RULE_NAME: &str = "default-polaris-instance-circuit-breaker";

/// What a rule breaks: one instance, the whole service, or one method (request path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    Instance,
    Service,
    Method,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Instance => "instance",
            Level::Service => "service",
            Level::Method => "method",
        }
    }
}

/// When an outcome counts as a failure (`ErrorCondition`).
#[derive(Clone, Debug)]
pub enum ErrorTest {
    /// RET_CODE: the MatchString on the status (`-1` for a reset or connect failure, which every
    /// RET_CODE condition counts as a failure, as polaris-go's sentinel does).
    RetCode(Matcher),
    /// DELAY: slower than this many milliseconds.
    Delay(u64),
}

/// What opens a closed breaker (`TriggerCondition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// CONSECUTIVE_ERROR: this many failures in a row.
    Consecutive(u32),
    /// ERROR_RATE: at least `percent` % failures among at least `minimum` requests over `interval_ms`,
    /// checked one interval after a failure.
    ErrorRate {
        percent: u32,
        interval_ms: u64,
        minimum: u32,
    },
}

/// The API a METHOD rule covers.
#[derive(Clone, Debug)]
pub struct Api {
    /// `http` (any case), empty or `*`.
    pub protocol: String,
    /// The HTTP method, empty or `*` for any.
    pub method: String,
    pub path: Matcher,
}

impl Api {
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let any = |t: &str| t.is_empty() || t == "*";
        (any(&self.protocol) || self.protocol.eq_ignore_ascii_case("http"))
            && (any(&self.method) || self.method.eq_ignore_ascii_case(method))
            && self.path.matches(Some(path))
    }
}

/// The reply an open SERVICE or METHOD breaker gives (`fallbackConfig.response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// One compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    /// Names this version of the rule (id and revision) in shared state: a state written under
    /// another tag is stale and counts as closed.
    pub tag: String,
    pub level: Level,
    /// METHOD level: the APIs it covers (any of them).
    pub apis: Vec<Api>,
    pub errors: Vec<ErrorTest>,
    pub triggers: Vec<Trigger>,
    pub sleep_window_ms: u64,
    /// Half-open probes: `consecutiveSuccess` (at least 1).
    pub probes: u32,
    /// `faultDetectConfig.enable`.
    pub fault_detect: bool,
    pub fallback: Option<Fallback>,
    /// Evaluated and counted, never enforced.
    pub dry_run: bool,
}

impl Rule {
    /// Whether this rule counts `outcome` as a failure (polaris-go `parseRetStatus`). With no error
    /// conditions, a reset or a 5xx is a failure.
    pub fn is_failure(&self, outcome: &Outcome) -> bool {
        if self.errors.is_empty() {
            return outcome.code < 0 || outcome.code >= 500;
        }
        let mut buf = [0u8; 12];
        let code = outcome.code_str(&mut buf);
        self.errors.iter().any(|e| match e {
            ErrorTest::RetCode(m) => outcome.code == -1 || m.matches(Some(code)),
            ErrorTest::Delay(ms) => outcome.latency_ms > *ms,
        })
    }

    /// The smallest CONSECUTIVE_ERROR count, if the rule has one.
    pub fn consecutive(&self) -> Option<u32> {
        self.triggers
            .iter()
            .filter_map(|t| match t {
                Trigger::Consecutive(n) => Some(*n),
                Trigger::ErrorRate { .. } => None,
            })
            .min()
    }

    /// The ERROR_RATE trigger, if the rule has one (the first, when it has several).
    pub fn error_rate(&self) -> Option<Trigger> {
        self.triggers
            .iter()
            .copied()
            .find(|t| matches!(t, Trigger::ErrorRate { .. }))
    }

    /// Whether the rule needs the latency of each outcome.
    pub fn needs_latency(&self) -> bool {
        self.errors.iter().any(|e| matches!(e, ErrorTest::Delay(_)))
    }

    /// polaris-go's default INSTANCE rule (`composite/default.go`): 5xx (and resets) are failures;
    /// ERROR_RATE 50 % over 60 s with at least 10 requests, or 10 consecutive failures, open it;
    /// 30 s later three probes decide.
    pub fn polaris_default() -> Rule {
        Rule {
            name: DEFAULT_RULE_NAME.to_string(),
            tag: "default".to_string(),
            level: Level::Instance,
            apis: Vec::new(),
            errors: vec![ErrorTest::RetCode(range_5xx())],
            triggers: vec![
                Trigger::ErrorRate {
                    percent: 50,
                    interval_ms: 60_000,
                    minimum: 10,
                },
                Trigger::Consecutive(10),
            ],
            sleep_window_ms: 30_000,
            probes: 3,
            fault_detect: false,
            fallback: None,
            dry_run: false,
        }
    }
}

fn range_5xx() -> Matcher {
    let m = proto::MatchString {
        r#type: proto::match_string::MatchStringType::Range as i32,
        value: Some("500~599".into()),
        value_type: 0,
    };
    Matcher::compile(&m).unwrap_or_else(|_| Matcher::any())
}

/// How the plugin configuration shapes breaking.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// polaris-go's default INSTANCE rule for services without an applicable rule.
    pub default_rule: bool,
    /// Rule names evaluated and counted but never enforced.
    pub dry_run: Vec<String>,
}

/// The rules that apply to one destination service, at each level.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub instance: Option<Rc<Rule>>,
    pub service: Option<Rc<Rule>>,
    /// In selection order; the first whose API matches a request's path applies.
    pub methods: Vec<Rc<Rule>>,
}

impl Rules {
    /// No breaker applies to the service.
    pub fn is_empty(&self) -> bool {
        self.instance.is_none() && self.service.is_none() && self.methods.is_empty()
    }

    /// The METHOD rule for a request, if any.
    pub fn method(&self, method: &str, path: &str) -> Option<&Rc<Rule>> {
        self.methods
            .iter()
            .find(|r| r.apis.iter().any(|a| a.matches(method, path)))
    }

    /// Every rule, for views over all levels.
    pub fn all(&self) -> impl Iterator<Item = &Rc<Rule>> {
        self.instance
            .iter()
            .chain(self.service.iter())
            .chain(self.methods.iter())
    }

    /// Compiles a stored CIRCUIT_BREAKER answer for `key`. A malformed answer is an error (the
    /// caller keeps the last good rules); a bad rule is skipped and logged by name.
    pub fn compile(
        key: &ServiceKey,
        bytes: &[u8],
        caller: &Caller,
        settings: &Settings,
    ) -> Result<Rules, DecodeError> {
        let rules = decode_circuit_breaker(key, bytes)?;
        let (compiled, skipped) = select(key, &rules, caller, settings);
        for e in skipped {
            log::warn!("circuit breaker of {key}: {e}");
        }
        Ok(compiled)
    }
}

/// Picks and compiles the rules for `key`; the second list names the rules skipped and why.
pub fn select(
    key: &ServiceKey,
    rules: &[proto::CircuitBreakerRule],
    caller: &Caller,
    settings: &Settings,
) -> (Rules, Vec<String>) {
    let mut sorted: Vec<&proto::CircuitBreakerRule> = rules.iter().collect();
    sorted.sort_by(|a, b| order(a, b));
    let mut out = Rules::default();
    let mut skipped = Vec::new();
    let mut any_applies = false;
    for raw in sorted {
        let Some(level) = level_of(raw.level) else {
            continue;
        };
        if !raw.enable || !applies(raw, key, caller) {
            continue;
        }
        any_applies = true;
        let slot_taken = match level {
            Level::Instance => out.instance.is_some(),
            Level::Service => out.service.is_some(),
            Level::Method => false,
        };
        if slot_taken {
            continue;
        }
        let rule = match compile_rule(raw, level, settings) {
            Ok(r) => Rc::new(r),
            Err(e) => {
                skipped.push(format!("rule {} skipped: {e}", raw.name));
                continue;
            }
        };
        match level {
            Level::Instance => out.instance = Some(rule),
            Level::Service => out.service = Some(rule),
            Level::Method => out.methods.push(rule),
        }
    }
    if !any_applies && settings.default_rule {
        let mut rule = Rule::polaris_default();
        rule.dry_run = settings.dry_run.contains(&rule.name);
        out.instance = Some(Rc::new(rule));
    }
    (out, skipped)
}

fn level_of(level: i32) -> Option<Level> {
    match proto::Level::try_from(level).ok()? {
        proto::Level::Instance => Some(Level::Instance),
        proto::Level::Service => Some(Level::Service),
        proto::Level::Method => Some(Level::Method),
        proto::Level::Unknown | proto::Level::Group => None,
    }
}

fn is_any(s: &str) -> bool {
    let s = s.trim();
    s.is_empty() || s == "*"
}

/// polaris-go `match.MatchService`.
fn names(namespace: &str, service: &str, key_namespace: &str, key_service: &str) -> bool {
    (is_any(namespace) || namespace.trim() == key_namespace)
        && (is_any(service) || service.trim() == key_service)
}

fn applies(rule: &proto::CircuitBreakerRule, key: &ServiceKey, caller: &Caller) -> bool {
    let matcher = rule.rule_matcher.clone().unwrap_or_default();
    let dst = matcher.destination.unwrap_or_default();
    let src = matcher.source.unwrap_or_default();
    names(&dst.namespace, &dst.service, &key.namespace, &key.name)
        && names(
            &src.namespace,
            &src.service,
            &caller.namespace,
            &caller.service,
        )
}

/// polaris-go `sortCircuitBreakerRules` (HEAD): priority, then the specific destination before
/// the wildcard, then id.
fn order(a: &proto::CircuitBreakerRule, b: &proto::CircuitBreakerRule) -> Ordering {
    let dst = |r: &proto::CircuitBreakerRule| {
        let d = r
            .rule_matcher
            .as_ref()
            .and_then(|m| m.destination.clone())
            .unwrap_or_default();
        (d.namespace, d.service)
    };
    let specific = |v: &str| -> (bool, String) { (is_any(v), v.to_string()) };
    let (an, asvc) = dst(a);
    let (bn, bsvc) = dst(b);
    a.priority
        .cmp(&b.priority)
        .then_with(|| specific(&an).cmp(&specific(&bn)))
        .then_with(|| specific(&asvc).cmp(&specific(&bsvc)))
        .then_with(|| a.id.cmp(&b.id))
}

/// A short stable name for one version of a rule (FNV-1a of id and revision).
fn tag(rule: &proto::CircuitBreakerRule) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule
        .id
        .bytes()
        .chain(std::iter::once(0))
        .chain(rule.revision.bytes())
        .chain(std::iter::once(0))
        .chain(rule.name.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn compile_rule(
    raw: &proto::CircuitBreakerRule,
    level: Level,
    settings: &Settings,
) -> Result<Rule, String> {
    // block_configs (newer servers) carry their own conditions; the top-level (deprecated)
    // fields are what server v1.18.1 stores and serves.
    let mut errors = Vec::new();
    let mut triggers = Vec::new();
    let mut apis = Vec::new();
    for block in &raw.block_configs {
        for e in &block.error_conditions {
            errors.push(error_test(e)?);
        }
        for t in &block.trigger_conditions {
            triggers.extend(trigger(t)?);
        }
        if let Some(api) = &block.api {
            apis.push(compile_api(api)?);
        }
    }
    if raw
        .block_configs
        .iter()
        .all(|b| b.error_conditions.is_empty())
    {
        for e in &raw.error_conditions {
            errors.push(error_test(e)?);
        }
    }
    if raw
        .block_configs
        .iter()
        .all(|b| b.trigger_conditions.is_empty())
    {
        for t in &raw.trigger_condition {
            triggers.extend(trigger(t)?);
        }
    }
    if level == Level::Method && apis.is_empty() {
        let method = raw
            .rule_matcher
            .as_ref()
            .and_then(|m| m.destination.as_ref())
            .and_then(|d| d.method.clone())
            .unwrap_or_default();
        let path = Matcher::compile(&method).map_err(|e| format!("method: {e}"))?;
        apis.push(Api {
            protocol: String::new(),
            method: String::new(),
            path,
        });
    }
    let recover = raw.recover_condition.unwrap_or_default();
    let fallback = raw
        .fallback_config
        .as_ref()
        .filter(|f| f.enable && level != Level::Instance)
        .and_then(|f| f.response.as_ref())
        .map(|r| Fallback {
            // A code outside 100-599 cannot be sent: 503, as with no fallback.
            status: u32::try_from(r.code)
                .ok()
                .filter(|c| (100..=599).contains(c))
                .unwrap_or(503),
            headers: r
                .headers
                .iter()
                .filter(|h| valid_header(&h.key, &h.value))
                .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
                .collect(),
            body: r.body.clone(),
        });
    Ok(Rule {
        name: raw.name.clone(),
        tag: tag(raw),
        level,
        apis,
        errors,
        triggers,
        sleep_window_ms: u64::from(recover.sleep_window).saturating_mul(1000),
        probes: recover.consecutive_success.max(1),
        fault_detect: raw.fault_detect_config.as_ref().is_some_and(|f| f.enable),
        fallback,
        dry_run: settings.dry_run.contains(&raw.name),
    })
}

/// A header the fallback may send: a token name (not a pseudo-header) and a value without CR/LF.
fn valid_header(key: &str, value: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn error_test(e: &proto::ErrorCondition) -> Result<ErrorTest, String> {
    use proto::error_condition::InputType;
    let condition = e.condition.clone().unwrap_or_default();
    match InputType::try_from(e.input_type) {
        Ok(InputType::RetCode) => Matcher::compile(&condition)
            .map(ErrorTest::RetCode)
            .map_err(|err| format!("RET_CODE condition: {err}")),
        Ok(InputType::Delay) => {
            let raw = condition.value.unwrap_or_default();
            raw.trim()
                .parse::<u64>()
                .map(ErrorTest::Delay)
                .map_err(|_| format!("DELAY condition `{raw}` is not a number of milliseconds"))
        }
        _ => Err(format!("unknown error condition type {}", e.input_type)),
    }
}

fn trigger(t: &proto::TriggerCondition) -> Result<Option<Trigger>, String> {
    use proto::trigger_condition::TriggerType;
    match TriggerType::try_from(t.trigger_type) {
        // polaris-go never reaches a count of 0 (it compares for equality after an increment).
        Ok(TriggerType::ConsecutiveError) if t.error_count == 0 => Ok(None),
        Ok(TriggerType::ConsecutiveError) => Ok(Some(Trigger::Consecutive(t.error_count))),
        Ok(TriggerType::ErrorRate) if t.interval == 0 => {
            Err("ERROR_RATE trigger with interval 0".into())
        }
        Ok(TriggerType::ErrorRate) => Ok(Some(Trigger::ErrorRate {
            percent: t.error_percent,
            interval_ms: u64::from(t.interval).saturating_mul(1000),
            minimum: t.minimum_request,
        })),
        _ => Err(format!("unknown trigger type {}", t.trigger_type)),
    }
}

fn compile_api(api: &proto::Api) -> Result<Api, String> {
    let path = match &api.path {
        Some(p) => Matcher::compile(p).map_err(|e| format!("api path: {e}"))?,
        None => Matcher::any(),
    };
    Ok(Api {
        protocol: api.protocol.clone(),
        method: api.method.clone(),
        path,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::polaris::proto::match_string::MatchStringType;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn ms(kind: MatchStringType, value: &str) -> proto::MatchString {
        proto::MatchString {
            r#type: kind as i32,
            value: Some(value.into()),
            value_type: 0,
        }
    }

    pub(crate) fn raw_rule(
        name: &str,
        level: proto::Level,
        dst: &str,
    ) -> proto::CircuitBreakerRule {
        use proto::error_condition::InputType;
        use proto::trigger_condition::TriggerType;
        proto::CircuitBreakerRule {
            id: format!("id-{name}"),
            name: name.into(),
            enable: true,
            revision: "r1".into(),
            level: level as i32,
            rule_matcher: Some(proto::RuleMatcher {
                source: Some(proto::rule_matcher::SourceService {
                    service: "*".into(),
                    namespace: "*".into(),
                }),
                destination: Some(proto::rule_matcher::DestinationService {
                    service: dst.into(),
                    namespace: "default".into(),
                    method: None,
                }),
            }),
            error_conditions: vec![proto::ErrorCondition {
                input_type: InputType::RetCode as i32,
                condition: Some(ms(MatchStringType::Range, "500~599")),
            }],
            trigger_condition: vec![proto::TriggerCondition {
                trigger_type: TriggerType::ConsecutiveError as i32,
                error_count: 5,
                ..Default::default()
            }],
            recover_condition: Some(proto::RecoverCondition {
                sleep_window: 3,
                consecutive_success: 2,
            }),
            ..Default::default()
        }
    }

    fn key() -> ServiceKey {
        ServiceKey::new("default", "echo")
    }

    fn settings() -> Settings {
        Settings {
            default_rule: true,
            dry_run: Vec::new(),
        }
    }

    fn outcome(code: i32, latency_ms: u64) -> Outcome {
        Outcome { code, latency_ms }
    }

    #[test]
    fn a_5xx_range_rule_counts_5xx_and_resets_as_failures() {
        let (rules, skipped) = select(
            &key(),
            &[raw_rule("cb", proto::Level::Instance, "echo")],
            &Caller::default(),
            &settings(),
        );
        assert!(skipped.is_empty());
        let rule = rules.instance.unwrap();
        assert_eq!(rule.name, "cb");
        assert_eq!(rule.consecutive(), Some(5));
        assert_eq!((rule.sleep_window_ms, rule.probes), (3000, 2));
        assert!(rule.is_failure(&outcome(500, 1)));
        assert!(rule.is_failure(&outcome(503, 1)));
        assert!(rule.is_failure(&outcome(-1, 1)), "reset: polaris-go's -1");
        assert!(!rule.is_failure(&outcome(200, 1)));
        assert!(!rule.is_failure(&outcome(404, 1)));
    }

    #[test]
    fn delay_counts_slower_outcomes_only() {
        let mut raw = raw_rule("slow", proto::Level::Instance, "echo");
        raw.error_conditions = vec![proto::ErrorCondition {
            input_type: proto::error_condition::InputType::Delay as i32,
            condition: Some(ms(MatchStringType::Exact, "300")),
        }];
        let (rules, _) = select(&key(), &[raw], &Caller::default(), &settings());
        let rule = rules.instance.unwrap();
        assert!(rule.needs_latency());
        assert!(!rule.is_failure(&outcome(200, 300)));
        assert!(rule.is_failure(&outcome(200, 301)));
        assert!(
            !rule.is_failure(&outcome(500, 10)),
            "only DELAY is a condition"
        );
    }

    #[test]
    fn without_error_conditions_resets_and_5xx_fail() {
        let mut raw = raw_rule("plain", proto::Level::Instance, "echo");
        raw.error_conditions.clear();
        let (rules, _) = select(&key(), &[raw], &Caller::default(), &settings());
        let rule = rules.instance.unwrap();
        assert!(rule.is_failure(&outcome(-1, 0)));
        assert!(rule.is_failure(&outcome(502, 0)));
        assert!(!rule.is_failure(&outcome(429, 0)));
    }

    #[test]
    fn disabled_rules_and_other_services_do_not_apply_and_the_default_rule_fills_in() {
        let mut off = raw_rule("off", proto::Level::Instance, "echo");
        off.enable = false;
        let other = raw_rule("other", proto::Level::Instance, "cart");
        let (rules, _) = select(&key(), &[off, other], &Caller::default(), &settings());
        let rule = rules.instance.unwrap();
        assert_eq!(rule.name, DEFAULT_RULE_NAME);
        assert_eq!(rule.consecutive(), Some(10));
        assert_eq!(
            rule.error_rate(),
            Some(Trigger::ErrorRate {
                percent: 50,
                interval_ms: 60_000,
                minimum: 10
            })
        );
        assert_eq!((rule.sleep_window_ms, rule.probes), (30_000, 3));
    }

    #[test]
    fn the_default_rule_can_be_turned_off_and_yields_to_any_applicable_rule() {
        let no_default = Settings {
            default_rule: false,
            dry_run: Vec::new(),
        };
        let (rules, _) = select(&key(), &[], &Caller::default(), &no_default);
        assert!(rules.is_empty());
        // A SERVICE rule applies: no default INSTANCE rule beside it (polaris-go HEAD).
        let svc = raw_rule("svc", proto::Level::Service, "echo");
        let (rules, _) = select(&key(), &[svc], &Caller::default(), &settings());
        assert!(rules.instance.is_none());
        assert_eq!(rules.service.unwrap().name, "svc");
    }

    #[test]
    fn the_first_rule_by_priority_then_specific_destination_then_id_wins() {
        let wildcard = raw_rule("a-wild", proto::Level::Instance, "*");
        let specific = raw_rule("b-specific", proto::Level::Instance, "echo");
        let (rules, _) = select(
            &key(),
            &[wildcard.clone(), specific.clone()],
            &Caller::default(),
            &settings(),
        );
        assert_eq!(rules.instance.unwrap().name, "b-specific");
        let mut urgent = wildcard;
        urgent.priority = 0;
        let mut later = specific;
        later.priority = 1;
        let (rules, _) = select(&key(), &[later, urgent], &Caller::default(), &settings());
        assert_eq!(rules.instance.unwrap().name, "a-wild");
    }

    #[test]
    fn sources_are_matched_against_the_configured_caller() {
        let mut only_a = raw_rule("from-a", proto::Level::Instance, "echo");
        if let Some(m) = only_a.rule_matcher.as_mut() {
            m.source = Some(proto::rule_matcher::SourceService {
                service: "svc-a".into(),
                namespace: "default".into(),
            });
        }
        let anonymous = Caller::default();
        let (rules, _) = select(&key(), &[only_a.clone()], &anonymous, &settings());
        assert_eq!(rules.instance.unwrap().name, DEFAULT_RULE_NAME);
        let a = Caller {
            namespace: "default".into(),
            service: "svc-a".into(),
            ..Default::default()
        };
        let (rules, _) = select(&key(), &[only_a], &a, &settings());
        assert_eq!(rules.instance.unwrap().name, "from-a");
    }

    #[test]
    fn method_rules_match_the_path_by_the_deprecated_destination_method_or_block_api() {
        let mut old = raw_rule("old", proto::Level::Method, "echo");
        if let Some(d) = old
            .rule_matcher
            .as_mut()
            .and_then(|m| m.destination.as_mut())
        {
            d.method = Some(ms(MatchStringType::Exact, "/pay"));
        }
        let mut new = raw_rule("new", proto::Level::Method, "echo");
        new.block_configs = vec![proto::BlockConfig {
            name: "b".into(),
            api: Some(proto::Api {
                protocol: "HTTP".into(),
                method: "POST".into(),
                path: Some(ms(MatchStringType::Regex, "^/cart/.*$")),
            }),
            ..Default::default()
        }];
        let (rules, _) = select(&key(), &[old, new], &Caller::default(), &settings());
        assert_eq!(rules.method("GET", "/pay").unwrap().name, "old");
        assert!(rules.method("GET", "/payx").is_none());
        assert_eq!(rules.method("POST", "/cart/1").unwrap().name, "new");
        assert!(
            rules.method("GET", "/cart/1").is_none(),
            "api.method is POST"
        );
        // block_configs keep the rule's top-level conditions when they carry none.
        assert!(rules.method("POST", "/cart/1").unwrap().consecutive() == Some(5));
    }

    #[test]
    fn a_rule_that_cannot_be_compiled_is_skipped_by_name_and_the_next_applies() {
        let mut bad = raw_rule("bad", proto::Level::Instance, "echo");
        bad.error_conditions[0].condition = Some(ms(MatchStringType::Range, "9~1"));
        bad.priority = 0;
        let mut good = raw_rule("good", proto::Level::Instance, "echo");
        good.priority = 1;
        let mut slow = raw_rule("slow", proto::Level::Service, "echo");
        slow.error_conditions = vec![proto::ErrorCondition {
            input_type: proto::error_condition::InputType::Delay as i32,
            condition: Some(ms(MatchStringType::Exact, "fast")),
        }];
        let (rules, skipped) = select(&key(), &[bad, good, slow], &Caller::default(), &settings());
        assert_eq!(rules.instance.unwrap().name, "good");
        assert!(rules.service.is_none());
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].contains("rule bad skipped"), "{skipped:?}");
        assert!(skipped[1].contains("rule slow skipped"), "{skipped:?}");
    }

    #[test]
    fn fallback_responses_are_kept_for_service_and_method_levels() {
        let mut svc = raw_rule("svc", proto::Level::Service, "echo");
        svc.fallback_config = Some(proto::FallbackConfig {
            enable: true,
            response: Some(proto::FallbackResponse {
                code: 418,
                headers: vec![
                    proto::fallback_response::MessageHeader {
                        key: "X-Fallback".into(),
                        value: "yes".into(),
                    },
                    proto::fallback_response::MessageHeader {
                        key: "bad header".into(),
                        value: "dropped".into(),
                    },
                ],
                body: "later".into(),
            }),
        });
        let (rules, _) = select(&key(), &[svc], &Caller::default(), &settings());
        assert_eq!(
            rules.service.unwrap().fallback,
            Some(Fallback {
                status: 418,
                headers: vec![("x-fallback".into(), "yes".into())],
                body: "later".into()
            })
        );
    }

    #[test]
    fn dry_run_rules_are_named_in_the_settings() {
        let s = Settings {
            default_rule: true,
            dry_run: vec!["watch".into()],
        };
        let (rules, _) = select(
            &key(),
            &[raw_rule("watch", proto::Level::Instance, "echo")],
            &Caller::default(),
            &s,
        );
        assert!(rules.instance.unwrap().dry_run);
    }

    #[test]
    fn a_changed_revision_changes_the_tag() {
        let a = raw_rule("cb", proto::Level::Instance, "echo");
        let mut b = a.clone();
        b.revision = "r2".into();
        assert_ne!(tag(&a), tag(&b));
        assert_eq!(tag(&a), tag(&a.clone()));
        assert!(!tag(&a).contains(['\t', '\n']));
    }
}
