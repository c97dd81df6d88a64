//! Helpers shared by the hash balancers' tests.

use super::murmur3::murmur3_64;
use super::{Balancer, Member, Options, Policy, Rng};

/// Fixed-width ids, like Polaris' 40-hex-digit ones (see the ring-hash module doc on point keys).
pub fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("inst-{i:04}")).collect()
}

/// The ids of the polaris-go recordings: `inst-0` .. `inst-9`.
pub fn golden_ids() -> Vec<String> {
    (0..10).map(|i| format!("inst-{i}")).collect()
}

pub fn members<'a>(ids: &'a [String], weights: &[u32]) -> Vec<Member<'a>> {
    ids.iter()
        .zip(weights)
        .enumerate()
        .map(|(index, (id, &weight))| Member { index, weight, id })
        .collect()
}

pub fn key_hash(k: usize) -> u64 {
    murmur3_64(format!("key-{k}").as_bytes(), 0)
}

/// `set` in the order of a seeded Fisher-Yates shuffle: the order Polaris might answer in.
pub fn shuffled<'a>(set: &[Member<'a>], seed: u64) -> Vec<Member<'a>> {
    let mut out = set.to_vec();
    let mut rng = super::Rng::new(seed);
    for i in (1..out.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        out.swap(i, j);
    }
    out
}

/// A recorded list of picks, `"0,3,3,…"`.
pub fn parse(golden: &str) -> Vec<usize> {
    golden
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

/// The weights of the mixed polaris-go recording over `golden_ids()`.
pub const GOLDEN_WEIGHTS: [u32; 10] = [100, 100, 50, 200, 100, 30, 100, 100, 1, 100];

/// Asserts that `policy` over the mixed golden set picks `golden` for keys `key-0..` whatever
/// order the instances come in.
pub fn assert_picks_in_any_order(policy: Policy, options: Options, golden: &str) {
    let mixed = golden_ids();
    let set = members(&mixed, &GOLDEN_WEIGHTS);
    for seed in 1..=4 {
        let reordered = shuffled(&set, seed);
        let balancer = Balancer::build_with(policy, &reordered, options);
        let mut rng = Rng::new(seed);
        let picks: Vec<usize> = (0..200)
            .map(|k| balancer.pick(Some(key_hash(k)), &mut rng).unwrap())
            .collect();
        assert_eq!(picks, parse(golden), "order #{seed}");
    }
}
