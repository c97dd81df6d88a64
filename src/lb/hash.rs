//! polaris-go's `hash` balancer (`plugin/loadbalancer/hash/hash.go`): `hash % totalWeight` is a
//! point in the cumulative weight space, and the instance whose interval holds it is chosen. Not
//! consistent: a change of membership moves most keys.
//!
//! One deliberate difference at interval edges. polaris-go's search maps point `p` to the first
//! instance whose cumulative weight is `>= p`, so instance 0 owns `w0 + 1` points, the last one
//! `wn - 1`, and with weights `[1, 1]` or `[2, 1]` the last instance is never picked (confirmed by
//! running polaris-go). We use half-open intervals (`WeightTable::at`: each instance owns exactly
//! its weight). The two agree on every key except those whose point is exactly a cumulative weight:
//! `n - 1` points out of `totalWeight` (about 1% of keys with polaris' default weight 100).

use super::weighted_random::WeightTable;

/// The member index for a key hash.
pub fn pick(table: &WeightTable, hash: u64) -> Option<usize> {
    let total = table.total_weight();
    if total == 0 {
        return None;
    }
    table.at(hash % total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::test_support::key_hash;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// polaris-go's edge handling, to compare against its recorded picks.
    fn polaris_pick(table: &WeightTable, hash: u64) -> Option<usize> {
        let total = table.total_weight();
        if total == 0 {
            return None;
        }
        table.at((hash % total).saturating_sub(1))
    }

    /// Picks of polaris-go v1 (hash `LoadBalancer`, murmur3) for keys `key-0..key-199` over ten
    /// instances weighted 100,100,50,200,100,30,100,100,1,100, from running its `ChooseInstance`.
    const POLARIS_MIXED: &str = "0,5,0,3,1,3,9,2,1,4,2,6,9,1,9,2,6,6,0,7,3,5,3,0,7,7,3,3,4,6,9,6,3,7,3,7,4,2,2,0,0,3,0,0,3,3,3,2,7,9,0,3,6,3,3,6,3,3,3,3,0,9,9,4,7,1,3,4,6,0,4,3,7,4,6,0,7,7,4,6,0,7,5,2,6,7,2,3,9,3,1,4,7,3,7,3,0,6,3,3,3,3,0,6,9,3,7,5,7,2,4,3,3,7,1,3,0,3,7,4,3,7,2,4,0,0,3,7,9,3,1,4,5,6,2,2,3,3,7,6,3,3,1,9,2,3,0,4,0,7,3,3,4,4,1,1,6,5,4,1,4,3,1,7,3,4,4,4,1,3,4,4,6,5,3,3,3,3,3,6,6,9,3,7,2,6,1,3,6,3,0,5,4,4,0,6,4,7,6,5";

    fn mixed() -> WeightTable {
        WeightTable::new((0..).zip([100, 100, 50, 200, 100, 30, 100, 100, 1, 100]))
    }

    #[test]
    fn agrees_with_polaris_go_except_on_interval_edges() {
        let table = mixed();
        let golden: Vec<usize> = POLARIS_MIXED
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        let mut on_edge = 0;
        for (k, &expected) in golden.iter().enumerate() {
            let hash = key_hash(k);
            assert_eq!(polaris_pick(&table, hash), Some(expected), "key-{k}");
            let point = hash % table.total_weight();
            if pick(&table, hash) != Some(expected) {
                // Only a point equal to a cumulative weight is owned differently.
                assert!(
                    table.at(point) != table.at(point.saturating_sub(1)),
                    "key-{k}"
                );
                on_edge += 1;
            }
        }
        assert!(on_edge <= 10, "{on_edge} of 200 keys on an edge");
    }

    #[test]
    fn same_key_always_lands_on_same_instance() {
        let table = mixed();
        for k in 0..1000 {
            let first = pick(&table, key_hash(k));
            assert!(first.is_some());
            assert_eq!(pick(&table, key_hash(k)), first);
        }
    }

    #[test]
    fn weights_two_to_one_give_two_to_one_shares() {
        // Even at the smallest weights, where polaris-go never picks the second instance.
        for weights in [[2, 1], [200, 100]] {
            let table = WeightTable::new((0..).zip(weights));
            let keys = 20_000;
            let heavy = (0..keys)
                .filter(|&k| pick(&table, key_hash(k)) == Some(0))
                .count();
            let share = heavy as f64 / keys as f64;
            assert!((share - 2.0 / 3.0).abs() < 0.02, "{weights:?}: {share}");
        }
    }

    #[test]
    fn every_instance_owns_exactly_its_weight_of_points() {
        let table = WeightTable::new([(7, 1), (8, 1)]);
        assert_eq!(pick(&table, 0), Some(7));
        assert_eq!(pick(&table, 1), Some(8));
        assert_eq!(pick(&table, 2), Some(7));
        assert_eq!(pick(&table, u64::MAX), Some(8));
    }

    #[test]
    fn empty_and_zero_weight_tables_pick_nothing() {
        assert_eq!(pick(&WeightTable::new(std::iter::empty()), 3), None);
        assert_eq!(pick(&WeightTable::new([(0, 0), (1, 0)]), 3), None);
    }
}
