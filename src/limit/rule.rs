//! Rate-limit rules as the server serves them (`RateLimit.rules`), compiled once per change:
//! which requests a rule counts, under which window key, against which amounts.
//!
//! Semantics follow polaris-go (`pkg/flow/quota/assist.go`, `pkg/model/pb/assist.go`): rules
//! sorted by priority then id; disabled rules and rules without amounts skipped; `method` is
//! matched against the request path; every argument must be present and match; the window key is
//! the sorted `method|TYPE:key:value|…` label string, where with `regex_combine` a non-EXACT test
//! contributes its pattern (one counter for every matching value) and otherwise the value itself
//! (one counter per distinct value).

use std::time::Duration;

use super::global::Global;
use crate::lb::murmur3::murmur3_64;
use crate::matching::{MatchKind, Matcher, RequestFacts};
use crate::model::ServiceKey;
use crate::polaris::proto;
use crate::snapshot::{decode_rate_limits, DecodeError};

/// Where a rate-limit argument's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Header(String),
    Query(String),
    Method,
    CallerIp,
    /// The caller's service name (CALLER_SERVICE, keyed by namespace): this Envoy's `caller`.
    CallerService(String),
    /// A caller metadata key (CUSTOM and CALLER_METADATA): plugin `caller.metadata`.
    CallerMetadata(String),
}

/// One argument test of a rule.
#[derive(Clone, Debug)]
pub struct Argument {
    source: Source,
    /// `TYPE:key` as the label string names it.
    label: String,
    matcher: Matcher,
}

/// One amount: at most `max` requests per `window` (epoch-aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Amount {
    pub max: u32,
    pub window_ms: u64,
}

/// What a rule does with the requests it counts (polaris-go's `reject`, `unirate` and
/// `concurrency` plugins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Fixed QPS windows; beyond the amount, 429.
    Reject,
    /// Requests leave spaced evenly; a request waits its turn up to a bound, beyond it 429.
    Unirate(Pace),
    /// At most `max` requests in flight at once (CONCURRENCY); beyond, 429.
    Concurrency { max: u32 },
}

/// A unirate rule's spacing and how long a request may wait for its turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    /// validDuration / maxAmount of the strictest amount, in microseconds.
    pub interval_us: u64,
    pub max_delay_ms: u64,
}

/// polaris-go's unirate queueing bound when the rule gives none (`max_queue_delay` 0 or absent).
pub const DEFAULT_MAX_QUEUE_DELAY_MS: u64 = 1000;

/// Per-rule settings the OSS server cannot carry (it refuses rule `metadata`,
/// `concurrencyAmount` and `customResponse`), from the plugin configuration, by rule name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSettings {
    /// Rules evaluated and counted, never rejecting (`rate_limit.dry_run`).
    pub dry_run: Vec<String>,
    /// CONCURRENCY thresholds (`rate_limit.concurrency`).
    pub concurrency: Vec<(String, u32)>,
    /// Bodies of the 429 a rule answers (`rate_limit.bodies`).
    pub bodies: Vec<(String, String)>,
    /// The host cannot tell when a stream ends (the lean wasm build): a CONCURRENCY slot could
    /// never be given back, so such rules are skipped.
    pub no_stream_ends: bool,
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct LimitRule {
    pub id: String,
    /// `murmur3_64(id)`, computed once: the request path names counters and metrics by it.
    pub id_hash: u64,
    pub name: String,
    pub priority: u32,
    method: Option<Matcher>,
    arguments: Vec<Argument>,
    regex_combine: bool,
    /// Longest window first, as polaris-go's `reject` plugin keeps its buckets.
    pub amounts: Vec<Amount>,
    /// Evaluated and counted, never rejecting (plugin `rate_limit.dry_run`).
    pub dry_run: bool,
    pub behavior: Behavior,
    /// The body of this rule's 429, instead of the default naming the rule.
    pub body: Option<String>,
    /// A GLOBAL QPS `reject` rule: counted through polaris-limiter when the plugin names one
    /// (`rate_limit.limiter`), else locally at its amount. (CONCURRENCY and unirate are local, as
    /// in polaris-go.)
    pub global: Option<Global>,
}

/// The compiled rules of one service, in the order they apply.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    pub rules: Vec<LimitRule>,
    /// `murmur3_64` of the service's namespace and name, computed once (0 from [`Limits::compile`]).
    pub service_hash: u64,
}

/// What a caller is, for CALLER_SERVICE and caller-metadata arguments.
pub struct CallerFacts<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
}

impl Limits {
    /// Compiles `rules`; the error strings name the rules skipped and why.
    pub fn compile(rules: &[proto::Rule]) -> (Limits, Vec<String>) {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for r in rules {
            let name = r.name.clone().or_else(|| r.id.clone()).unwrap_or_default();
            match LimitRule::compile(r) {
                Ok(Some(rule)) => out.push(rule),
                Ok(None) => {}
                Err(e) => skipped.push(format!("rate-limit rule `{name}` skipped: {e}")),
            }
        }
        out.sort_by(|a, b| a.priority.cmp(&b.priority).then_with(|| a.id.cmp(&b.id)));
        (
            Limits {
                rules: out,
                service_hash: 0,
            },
            skipped,
        )
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies the plugin's per-rule settings: dry run, CONCURRENCY thresholds, bodies.
    pub fn apply(&mut self, settings: &RuleSettings) {
        for rule in &mut self.rules {
            rule.dry_run = settings.dry_run.contains(&rule.name);
            if let Behavior::Concurrency { max } = &mut rule.behavior {
                if let Some((_, n)) = settings.concurrency.iter().find(|(r, _)| *r == rule.name) {
                    *max = *n;
                }
            }
            if let Some((_, body)) = settings.bodies.iter().find(|(r, _)| *r == rule.name) {
                rule.body = Some(body.clone());
            }
        }
    }

    /// Compiles a stored RATE_LIMIT answer with the plugin's per-rule `settings`, logging the
    /// rules skipped; a malformed answer is an error (the caller keeps the last good limits).
    pub fn from_stored(
        key: &ServiceKey,
        bytes: &[u8],
        settings: &RuleSettings,
    ) -> Result<Limits, DecodeError> {
        let (mut limits, mut skipped) = Limits::compile(&decode_rate_limits(key, bytes)?);
        limits.apply(settings);
        let (ns, name) = (key.namespace.as_bytes(), key.name.as_bytes());
        limits.service_hash = murmur3_64(ns, 0) ^ murmur3_64(name, 0).rotate_left(1);
        limits.rules.retain(|r| match r.behavior {
            Behavior::Concurrency { max: 0 } => {
                skipped.push(format!(
                    "rate-limit rule `{}` skipped: a CONCURRENCY rule needs a threshold \
                     (rate_limit.concurrency, or an amount's maxAmount)",
                    r.name
                ));
                false
            }
            Behavior::Concurrency { .. } if settings.no_stream_ends => {
                skipped.push(format!(
                    "rate-limit rule `{}` skipped: CONCURRENCY gives slots back when streams \
                     end, which polaris_wasm_lean.wasm does not see: use polaris_wasm.wasm",
                    r.name
                ));
                false
            }
            _ => true,
        });
        for e in skipped {
            log::warn!("{key}: {e}");
        }
        Ok(limits)
    }
}

impl LimitRule {
    /// `Ok(None)` for a rule that does not apply (disabled, no amounts).
    fn compile(r: &proto::Rule) -> Result<Option<LimitRule>, String> {
        use proto::rule::{Resource, Type};
        if r.disable.unwrap_or(false) {
            return Ok(None);
        }
        let concurrency = r.resource == Resource::Concurrency as i32;
        let action = r.action.as_deref().unwrap_or("reject").to_ascii_lowercase();
        let unirate = match action.as_str() {
            _ if concurrency => false,
            "" | "reject" => false,
            "unirate" => true,
            _ => return Err(format!("action `{action}` is not enforced yet")),
        };
        let global =
            (!concurrency && !unirate && r.r#type == Type::Global as i32).then(|| Global {
                share_equally: r.amount_mode == proto::rule::AmountMode::ShareEqually as i32,
                pass_on_failure: r.failover == proto::rule::FailoverType::FailoverPass as i32,
                cluster: r.cluster.as_ref().and_then(|c| {
                    let ns = c.namespace.clone().filter(|s| !s.is_empty())?;
                    let svc = c.service.clone().filter(|s| !s.is_empty())?;
                    Some(ServiceKey::new(ns, svc))
                }),
            });
        let mut amounts = Vec::with_capacity(r.amounts.len());
        for a in &r.amounts {
            let max = a.max_amount.ok_or("an amount has no maxAmount")?;
            let d = a
                .valid_duration
                .as_ref()
                .ok_or("an amount has no validDuration")?;
            let window = u64::try_from(d.seconds)
                .ok()
                .and_then(|s| {
                    Duration::from_secs(s)
                        .checked_add(Duration::from_nanos(u64::try_from(d.nanos).ok()?))
                })
                .ok_or("an amount has a negative validDuration")?;
            let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
            if window_ms < 1000 {
                return Err("validDuration must be at least 1s".into());
            }
            amounts.push(Amount { max, window_ms });
        }
        let declared = r.concurrency_amount.as_ref().map_or(0, |c| c.max_amount);
        // A CONCURRENCY rule without amounts may still get its threshold from the plugin:
        // `from_stored` drops it when none comes.
        if amounts.is_empty() && !concurrency {
            return Ok(None);
        }
        amounts.sort_by_key(|a| std::cmp::Reverse(a.window_ms));
        let behavior = if concurrency {
            // The OSS server drops `concurrencyAmount`; the strictest amount stands in for it.
            let max = match declared {
                0 => amounts.iter().map(|a| a.max).min().unwrap_or(0),
                n => n,
            };
            Behavior::Concurrency { max }
        } else if unirate {
            Behavior::Unirate(Pace::of(&amounts, r.max_queue_delay))
        } else {
            Behavior::Reject
        };
        let method = match &r.method {
            Some(m) if m.value.as_deref().is_some_and(|v| !v.is_empty()) => {
                Some(Matcher::compile(m).map_err(|e| format!("method: {e}"))?)
            }
            _ => None,
        };
        let mut arguments = Vec::with_capacity(r.arguments.len());
        for a in &r.arguments {
            arguments.push(Argument::compile(a)?);
        }
        arguments.sort_by(|a, b| a.label.cmp(&b.label));
        let id = r.id.clone().unwrap_or_default();
        Ok(Some(LimitRule {
            id_hash: murmur3_64(id.as_bytes(), 0),
            id,
            name: r.name.clone().or_else(|| r.id.clone()).unwrap_or_default(),
            priority: r.priority.unwrap_or(0),
            method,
            arguments,
            regex_combine: r.regex_combine.unwrap_or(false),
            amounts,
            dry_run: false,
            behavior,
            body: r
                .custom_response
                .as_ref()
                .map(|c| c.body.clone())
                .filter(|b| !b.is_empty()),
            global,
        }))
    }

    /// The window key of this request when the rule counts it (`None`: the rule does not apply).
    pub fn key(&self, facts: &mut dyn RequestFacts, caller: &CallerFacts<'_>) -> Option<String> {
        let mut key = String::new();
        if let Some(m) = &self.method {
            let path = facts.path();
            if !m.matches(path) {
                return None;
            }
            key.push_str(self.part(m, path.unwrap_or_default()));
        }
        for a in &self.arguments {
            let value = match &a.source {
                Source::Header(h) => facts.header(h),
                Source::Query(q) => facts.query(q),
                Source::Method => facts.method(),
                Source::CallerIp => facts.caller_ip(),
                Source::CallerService(ns) => (ns == caller.namespace).then_some(caller.service),
                Source::CallerMetadata(k) => facts.custom(k),
            };
            if !a.matcher.matches(value) {
                return None;
            }
            key.push('|');
            key.push_str(&a.label);
            key.push(':');
            key.push_str(self.part(&a.matcher, value.unwrap_or_default()));
        }
        Some(key)
    }

    /// What a matched test contributes to the window key.
    fn part<'v>(&self, m: &'v Matcher, value: &'v str) -> &'v str {
        if self.regex_combine && m.kind() != MatchKind::Exact {
            &m.raw
        } else {
            value
        }
    }
}

impl Pace {
    /// The strictest amount's spacing; `max_queue_delay` is in seconds (0 or absent: 1 s).
    fn of(amounts: &[Amount], max_queue_delay: Option<u32>) -> Pace {
        let interval_us = amounts
            .iter()
            .map(|a| a.window_ms.saturating_mul(1000) / u64::from(a.max.max(1)))
            .max()
            .unwrap_or(0);
        let max_delay_ms = match max_queue_delay.unwrap_or(0) {
            0 => DEFAULT_MAX_QUEUE_DELAY_MS,
            s => u64::from(s).saturating_mul(1000),
        };
        Pace {
            interval_us,
            max_delay_ms,
        }
    }
}

impl Argument {
    fn compile(a: &proto::MatchArgument) -> Result<Argument, String> {
        use proto::match_argument::Type as T;
        let key = a.key.clone();
        let (source, name) = match T::try_from(a.r#type) {
            Ok(T::Header) => (Source::Header(key.to_ascii_lowercase()), "HEADER"),
            Ok(T::Query) => (Source::Query(key.clone()), "QUERY"),
            Ok(T::Method) => (Source::Method, "METHOD"),
            Ok(T::CallerIp) => (Source::CallerIp, "CALLER_IP"),
            Ok(T::CallerService) => (Source::CallerService(key.clone()), "CALLER_SERVICE"),
            Ok(T::Custom) => (Source::CallerMetadata(key.clone()), "CUSTOM"),
            Ok(T::CallerMetadata) => (Source::CallerMetadata(key.clone()), "CALLER_METADATA"),
            Err(_) => return Err(format!("unknown argument type {}", a.r#type)),
        };
        let matcher = match &a.value {
            Some(v) => Matcher::compile(v).map_err(|e| format!("argument `{key}`: {e}"))?,
            None => Matcher::any(),
        };
        Ok(Argument {
            source,
            label: format!("{name}:{key}"),
            matcher,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::StaticFacts;
    use proto::match_string::MatchStringType as T;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn ms(t: T, v: &str) -> proto::MatchString {
        proto::MatchString {
            r#type: t as i32,
            value: Some(v.into()),
            value_type: 0,
        }
    }

    fn amount(max: u32, secs: i64) -> proto::Amount {
        proto::Amount {
            max_amount: Some(max),
            valid_duration: Some(prost_types::Duration {
                seconds: secs,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    fn rule(name: &str, args: Vec<proto::MatchArgument>, combine: bool) -> proto::Rule {
        proto::Rule {
            id: Some(name.into()),
            name: Some(name.into()),
            r#type: proto::rule::Type::Local as i32,
            amounts: vec![amount(10, 1), amount(100, 60)],
            arguments: args,
            regex_combine: Some(combine),
            ..Default::default()
        }
    }

    fn header(key: &str, m: proto::MatchString) -> proto::MatchArgument {
        proto::MatchArgument {
            r#type: proto::match_argument::Type::Header as i32,
            key: key.into(),
            value: Some(m),
        }
    }

    const CALLER: CallerFacts<'static> = CallerFacts {
        namespace: "default",
        service: "web",
    };

    fn facts(user: &str) -> StaticFacts {
        StaticFacts {
            headers: vec![("x-user".into(), user.into())],
            path: "/echo".into(),
            method: "GET".into(),
            ..StaticFacts::default()
        }
    }

    #[test]
    fn disabled_rules_and_rules_without_amounts_do_not_apply() {
        let mut off = rule("off", vec![], false);
        off.disable = Some(true);
        let mut empty = rule("empty", vec![], false);
        empty.amounts.clear();
        let (limits, skipped) = Limits::compile(&[off, empty]);
        assert!(limits.is_empty());
        assert!(skipped.is_empty());
    }

    #[test]
    fn amounts_are_kept_longest_window_first() {
        let (limits, _) = Limits::compile(&[rule("r", vec![], false)]);
        let windows: Vec<u64> = limits.rules[0]
            .amounts
            .iter()
            .map(|a| a.window_ms)
            .collect();
        assert_eq!(windows, vec![60_000, 1000]);
    }

    #[test]
    fn rules_apply_by_priority_then_id() {
        let mut b = rule("b", vec![], false);
        b.priority = Some(0);
        let mut a = rule("a", vec![], false);
        a.priority = Some(1);
        let c = rule("c", vec![], false);
        let (limits, _) = Limits::compile(&[a, b, c]);
        let names: Vec<&str> = limits.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["b", "c", "a"]);
    }

    #[test]
    fn a_missing_argument_means_the_rule_does_not_count_the_request() {
        let (limits, _) = Limits::compile(&[rule(
            "r",
            vec![header("x-user", ms(T::Exact, "alice"))],
            false,
        )]);
        let r = &limits.rules[0];
        assert!(r.key(&mut facts("alice"), &CALLER).is_some());
        assert!(r.key(&mut facts("bob"), &CALLER).is_none());
        assert!(r.key(&mut StaticFacts::default(), &CALLER).is_none());
    }

    #[test]
    fn regex_combine_shares_one_counter_among_matching_values() {
        let arg = || vec![header("x-user", ms(T::Regex, "^u"))];
        let (apart, _) = Limits::compile(&[rule("apart", arg(), false)]);
        let (together, _) = Limits::compile(&[rule("together", arg(), true)]);
        let key = |l: &Limits, u: &str| l.rules[0].key(&mut facts(u), &CALLER);
        assert_ne!(key(&apart, "u1"), key(&apart, "u2"));
        assert_eq!(key(&together, "u1"), key(&together, "u2"));
        assert!(key(&together, "x").is_none());
    }

    #[test]
    fn the_method_is_matched_against_the_path() {
        let mut r = rule("r", vec![], false);
        r.method = Some(ms(T::Exact, "/echo"));
        let (limits, _) = Limits::compile(&[r]);
        assert!(limits.rules[0].key(&mut facts("a"), &CALLER).is_some());
        let mut other = facts("a");
        other.path = "/other".into();
        assert!(limits.rules[0].key(&mut other, &CALLER).is_none());
    }

    #[test]
    fn rules_the_filter_cannot_enforce_are_skipped_by_name() {
        let mut warm = rule("warm", vec![], false);
        warm.action = Some("WARMUP".into());
        let mut short = rule("short", vec![], false);
        short.amounts = vec![amount(1, 0)];
        let (limits, skipped) = Limits::compile(&[warm, short, rule("ok", vec![], false)]);
        assert_eq!(limits.rules.len(), 1);
        assert_eq!(skipped.len(), 2);
        assert!(skipped.iter().any(|s| s.contains("`warm`")));
    }

    #[test]
    fn a_unirate_rule_spaces_requests_by_its_strictest_amount() {
        let mut uni = rule("uni", vec![], false);
        uni.action = Some("UNIRATE".into());
        uni.max_queue_delay = Some(3);
        // 10/1s is one per 100 ms, 100/60s one per 600 ms: the latter is stricter.
        let (limits, _) = Limits::compile(&[uni.clone()]);
        assert_eq!(
            limits.rules[0].behavior,
            Behavior::Unirate(Pace {
                interval_us: 600_000,
                max_delay_ms: 3000
            })
        );
        uni.max_queue_delay = Some(0);
        let (limits, _) = Limits::compile(&[uni]);
        let Behavior::Unirate(pace) = limits.rules[0].behavior else {
            panic!("not unirate");
        };
        assert_eq!(pace.max_delay_ms, DEFAULT_MAX_QUEUE_DELAY_MS);
    }

    #[test]
    fn a_concurrency_threshold_comes_from_the_plugin_else_the_strictest_amount() {
        let mut conc = rule("conc", vec![], false);
        conc.resource = proto::rule::Resource::Concurrency as i32;
        let (mut limits, _) = Limits::compile(&[conc]);
        assert_eq!(limits.rules[0].behavior, Behavior::Concurrency { max: 10 });
        limits.apply(&RuleSettings {
            concurrency: vec![("conc".into(), 3)],
            bodies: vec![("conc".into(), "busy".into())],
            ..RuleSettings::default()
        });
        assert_eq!(limits.rules[0].behavior, Behavior::Concurrency { max: 3 });
        assert_eq!(limits.rules[0].body.as_deref(), Some("busy"));
    }

    #[test]
    fn a_concurrency_rule_without_a_threshold_or_stream_ends_is_skipped() {
        let key = ServiceKey::new("default", "echo");
        let mut conc = rule("conc", vec![], false);
        conc.resource = proto::rule::Resource::Concurrency as i32;
        conc.amounts.clear();
        let answer = proto::DiscoverResponse {
            code: Some(200_000),
            r#type: proto::discover_response::DiscoverResponseType::RateLimit as i32,
            service: Some(proto::Service {
                name: Some("echo".into()),
                namespace: Some("default".into()),
                ..Default::default()
            }),
            rate_limit: Some(proto::RateLimit {
                rules: vec![conc],
                revision: Some("r1".into()),
            }),
            ..Default::default()
        };
        let bytes = prost::Message::encode_to_vec(&answer);
        let none = Limits::from_stored(&key, &bytes, &RuleSettings::default()).unwrap();
        assert!(none.is_empty());
        let settings = RuleSettings {
            concurrency: vec![("conc".into(), 2)],
            ..RuleSettings::default()
        };
        let two = Limits::from_stored(&key, &bytes, &settings).unwrap();
        assert_eq!(two.rules[0].behavior, Behavior::Concurrency { max: 2 });
        let lean = RuleSettings {
            no_stream_ends: true,
            ..settings
        };
        let skipped = Limits::from_stored(&key, &bytes, &lean).unwrap();
        assert!(
            skipped.is_empty(),
            "a host that sees no stream ends could never free a slot"
        );
    }
}
