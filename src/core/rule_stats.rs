//! Per-rule rate-limit metrics: `polaris_wasm.rate_limit.<namespace>.<service>.<rule>.allowed`,
//! `.limited` and `.dry_run_limited`, defined when a rule first counts a request, at most
//! [`MAX_RULES`] rules per worker (later rules only show in the aggregate counters). Counted in
//! the VM, handed to the host on the tick like the other counters.

use rustc_hash::FxHashMap;
use std::cell::Cell;
use std::collections::hash_map::Entry;

use super::host::Metrics;
use crate::model::ServiceKey;

/// Rules with their own metrics, per worker.
pub const MAX_RULES: usize = 256;

/// What a rule did with a request it counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed = 0,
    Limited = 1,
    /// A dry-run rule would have limited it.
    DryRunLimited = 2,
}

const SUFFIXES: [&str; 3] = ["allowed", "limited", "dry_run_limited"];

#[derive(Debug, Default)]
struct Slot {
    ids: [Option<u32>; 3],
    pending: [Cell<u64>; 3],
}

#[derive(Debug, Default)]
pub struct RuleStats {
    /// By the rule's id hash (rule ids are unique in Polaris).
    slots: FxHashMap<u64, Slot>,
}

impl RuleStats {
    /// Counts `outcome` for the rule `rule_id` (hash) named `name` of `service`, defining its
    /// metrics on first use.
    pub fn note<M: Metrics + ?Sized>(
        &mut self,
        host: &M,
        service: &ServiceKey,
        rule_id: u64,
        name: &str,
        outcome: Outcome,
    ) {
        let full = self.slots.len() >= MAX_RULES;
        let slot = match self.slots.entry(rule_id) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(_) if full => return,
            Entry::Vacant(v) => v.insert(define(host, service, name)),
        };
        if let Some(c) = slot.pending.get(outcome as usize) {
            c.set(c.get().wrapping_add(1));
        }
    }

    /// Hands the counted increments to the host.
    pub fn flush<M: Metrics + ?Sized>(&self, host: &M) {
        for slot in self.slots.values() {
            for (id, pending) in slot.ids.iter().zip(slot.pending.iter()) {
                let n = pending.take();
                if let (Some(id), true) = (id, n > 0) {
                    host.add(*id, n);
                }
            }
        }
    }
}

fn define<M: Metrics + ?Sized>(host: &M, service: &ServiceKey, name: &str) -> Slot {
    let mut slot = Slot::default();
    let base = format!(
        "polaris_wasm.rate_limit.{}.{}.{}",
        stat_part(&service.namespace),
        stat_part(&service.name),
        stat_part(name)
    );
    for (id, suffix) in slot.ids.iter_mut().zip(SUFFIXES) {
        let metric = format!("{base}.{suffix}");
        match host.define_counter(&metric) {
            Ok(n) => *id = Some(n),
            Err(e) => log::warn!("cannot define metric {metric}: {e}"),
        }
    }
    slot
}

/// A name as one stat-name segment: dots and anything unusual become `_`.
fn stat_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fake::{Call, FakeHost};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_rule_gets_its_metrics_on_first_use_with_a_safe_name() {
        let host = FakeHost::new(0);
        let mut stats = RuleStats::default();
        let svc = ServiceKey::new("default", "echo");
        stats.note(&host, &svc, 7, "ten.per second", Outcome::Limited);
        stats.note(&host, &svc, 7, "ten.per second", Outcome::Limited);
        let defined: Vec<Call> = host
            .take_calls()
            .into_iter()
            .filter(|c| matches!(c, Call::DefineMetric(_)))
            .collect();
        assert_eq!(
            defined,
            vec![
                Call::DefineMetric(
                    "polaris_wasm.rate_limit.default.echo.ten_per_second.allowed".into()
                ),
                Call::DefineMetric(
                    "polaris_wasm.rate_limit.default.echo.ten_per_second.limited".into()
                ),
                Call::DefineMetric(
                    "polaris_wasm.rate_limit.default.echo.ten_per_second.dry_run_limited".into()
                ),
            ]
        );
        stats.flush(&host);
        assert_eq!(host.take_calls(), vec![Call::AddMetric { id: 2, n: 2 }]);
    }

    #[test]
    fn metrics_are_bounded_in_rules() {
        let host = FakeHost::new(0);
        let mut stats = RuleStats::default();
        let svc = ServiceKey::new("default", "echo");
        for r in 0..(MAX_RULES as u64 + 5) {
            stats.note(&host, &svc, r, "r", Outcome::Allowed);
        }
        assert_eq!(stats.slots.len(), MAX_RULES);
    }
}
