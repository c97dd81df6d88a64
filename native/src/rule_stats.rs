//! Per-rule rate-limit counters in the native build. The core names them
//! `polaris_wasm.rate_limit.<namespace>.<service>.<rule>.<outcome>` and defines them when a rule
//! first counts, on any worker; Envoy freezes stat creation once the config is loaded. So the
//! config defines one counter vector per outcome, labelled by namespace, service and rule, and a
//! rule's counter is the vector's with its label values (Envoy makes it on first increment).

use crate::ffi::abi::ConfigHandle;

/// The outcomes, as the core's name suffixes; each is one vector.
const OUTCOMES: [&str; 3] = ["allowed", "limited", "dry_run_limited"];
const PREFIX: &str = "polaris_wasm.rate_limit.";
pub const LABELS: [&str; 3] = ["namespace", "service", "rule"];
/// Our ids for labelled counters start here (Envoy's own ids are small indices).
pub const FIRST_ID: u32 = 0x8000_0000;

/// The three vectors' Envoy ids (`None`: Envoy refused one).
#[derive(Debug, Default)]
pub struct RuleVecs([Option<usize>; 3]);

impl RuleVecs {
    /// Defines the vectors on `config` (at config time, before stat creation is frozen).
    pub fn define(config: &ConfigHandle) -> RuleVecs {
        RuleVecs(OUTCOMES.map(|o| {
            let name = format!("{PREFIX}{o}");
            let id = config.define_counter_vec(&name, &LABELS);
            if id.is_none() {
                log::warn!("Envoy refused counter vector {name}");
            }
            id
        }))
    }

    /// The Envoy id of vector `outcome` (an index from [`parse`]).
    pub fn id(&self, outcome: usize) -> Option<usize> {
        self.0.get(outcome).copied().flatten()
    }
}

/// The vector (outcome index) and label values a core per-rule counter name stands for, or
/// `None` for any other counter.
pub fn parse(name: &str) -> Option<(usize, [String; 3])> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.split('.');
    let (ns, svc, rule, outcome) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let i = OUTCOMES.iter().position(|o| *o == outcome)?;
    Some((i, [ns.to_owned(), svc.to_owned(), rule.to_owned()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_per_rule_counter_name_reads_as_its_vector_and_labels() {
        assert_eq!(
            parse("polaris_wasm.rate_limit.default.echo.ten-per-s.dry_run_limited"),
            Some((2, ["default".into(), "echo".into(), "ten-per-s".into()]))
        );
    }

    #[test]
    fn other_counters_are_not_per_rule() {
        assert_eq!(parse("polaris_wasm.rate_limited"), None);
        assert_eq!(parse("polaris_wasm.rate_limit_queued"), None);
        assert_eq!(
            parse("polaris_wasm.rate_limit.default.echo.r.allowed.x"),
            None
        );
        assert_eq!(parse("polaris_wasm.rate_limit.default.echo.r.passed"), None);
    }
}
