//! Helpers shared by the hash balancers' tests.

use super::murmur3::murmur3_64;
use super::Member;

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
