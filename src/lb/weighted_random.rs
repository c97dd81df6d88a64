//! Weighted random choice (polaris-go's default `weightedRandom` balancer).
//!
//! The cumulative weight table is built once per snapshot; a pick is one random draw and a
//! binary search, with no allocation.

use super::rng::Rng;

/// Instances (by index into the snapshot) with their cumulative weights.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightTable {
    indices: Vec<usize>,
    cumulative: Vec<u64>,
}

impl WeightTable {
    /// Builds a table from `(index, weight)` pairs; zero weights are left out.
    pub fn new(entries: impl IntoIterator<Item = (usize, u32)>) -> WeightTable {
        let mut table = WeightTable::default();
        let mut total = 0u64;
        for (index, weight) in entries {
            if weight == 0 {
                continue;
            }
            total += u64::from(weight);
            table.indices.push(index);
            table.cumulative.push(total);
        }
        table
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Indices in the table, in order.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// The instance whose weight interval holds `point` (`0 <= point < total_weight`).
    pub fn at(&self, point: u64) -> Option<usize> {
        let slot = self.cumulative.partition_point(|&c| c <= point);
        self.indices.get(slot).copied()
    }

    /// A weighted random pick.
    pub fn pick(&self, rng: &mut Rng) -> Option<usize> {
        let total = self.total_weight();
        if total == 0 {
            return None;
        }
        self.at(rng.below(total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn point_maps_to_weight_interval() {
        let t = WeightTable::new([(0, 1), (1, 2), (2, 7)]);
        assert_eq!(t.total_weight(), 10);
        assert_eq!(t.at(0), Some(0));
        assert_eq!(t.at(1), Some(1));
        assert_eq!(t.at(2), Some(1));
        assert_eq!(t.at(3), Some(2));
        assert_eq!(t.at(9), Some(2));
        assert_eq!(t.at(10), None);
    }

    #[test]
    fn zero_weights_never_picked() {
        let t = WeightTable::new([(0, 0), (1, 5), (2, 0)]);
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            assert_eq!(t.pick(&mut rng), Some(1));
        }
    }

    #[test]
    fn empty_table_picks_nothing() {
        let t = WeightTable::new(std::iter::empty());
        assert!(t.is_empty());
        assert_eq!(t.pick(&mut Rng::new(1)), None);
    }

    #[test]
    fn shares_follow_weights_1_2_7() {
        let t = WeightTable::new([(0, 1), (1, 2), (2, 7)]);
        let mut rng = Rng::new(99);
        let mut counts = [0u32; 3];
        let n = 100_000;
        for _ in 0..n {
            counts[t.pick(&mut rng).unwrap()] += 1;
        }
        for (count, expected) in counts.iter().zip([0.1, 0.2, 0.7]) {
            let share = f64::from(*count) / f64::from(n);
            assert!((share - expected).abs() < 0.01, "{counts:?}");
        }
    }
}
