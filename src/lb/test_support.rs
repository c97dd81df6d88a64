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
