//! Load balancers: choose one instance from the set the router chain left.
//!
//! A [`Balancer`] is built once per instance set with one of polaris-go's policies and then picks
//! without allocating. The hash policies take the request's key already hashed by [`hash_key`].
//!
//! Every balancer is a function of the instance *set*: members are sorted by instance id before a
//! balancer is built, as polaris-go sorts a service's instances by id when it decodes them
//! (`pkg/model/pb/service.go`) and builds every balancer in that order. Polaris answers Discover
//! in no stable order, so without it two Envoys (or one Envoy after a refresh) would map a key
//! differently: the `hash` balancer's cumulative weights and Maglev's contested slots depend on
//! the order members are visited in.

pub mod hash;
pub mod maglev;
pub mod murmur3;
pub mod ring_hash;
pub mod rng;
#[cfg(test)]
mod test_support;
pub mod weighted_random;

use std::fmt;
use std::str::FromStr;

pub use rng::Rng;
pub use weighted_random::WeightTable;

/// A load-balancing policy, named as in polaris-go (`consumer.loadbalancer.type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Random pick weighted by instance weight (polaris-go's default).
    #[default]
    WeightedRandom,
    /// Consistent hashing on a ketama ring.
    RingHash,
    /// Consistent hashing with a Maglev lookup table.
    Maglev,
    /// `hash % totalWeight` over cumulative weights (not consistent).
    Hash,
}

impl Policy {
    pub const ALL: [Policy; 4] = [
        Policy::WeightedRandom,
        Policy::RingHash,
        Policy::Maglev,
        Policy::Hash,
    ];

    /// polaris-go's name for the policy.
    pub fn name(self) -> &'static str {
        match self {
            Policy::WeightedRandom => "weightedRandom",
            Policy::RingHash => "ringHash",
            Policy::Maglev => "maglev",
            Policy::Hash => "hash",
        }
    }

    /// Whether picks depend on the request's hash key.
    pub fn uses_key(self) -> bool {
        self != Policy::WeightedRandom
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = UnknownPolicy;

    /// polaris-go's names, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Policy, UnknownPolicy> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}

/// A policy name that is not one of polaris-go's balancers we implement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownPolicy(pub String);

impl fmt::Display for UnknownPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown load balancer `{}`: expected one of ", self.0)?;
        for (n, policy) in Policy::ALL.iter().enumerate() {
            let sep = if n == 0 { "" } else { ", " };
            write!(f, "{sep}\"{policy}\"")?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownPolicy {}

/// One candidate instance: `index` is what a pick returns (e.g. its place in the snapshot), `id`
/// the instance id the consistent hashes place it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    pub index: usize,
    pub weight: u32,
    pub id: &'a str,
}

/// Tuning of the balancers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Ring points of the heaviest instance (polaris-go `ringHash.vnodeCount`, default 10). A key
    /// lands on the same instance for an Envoy and a polaris-go caller only when both use the
    /// same count.
    pub vnode_count: usize,
}

/// A policy with its tuning: what the balancers of one service are built with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spec {
    pub policy: Policy,
    pub options: Options,
}

impl From<Policy> for Spec {
    fn from(policy: Policy) -> Spec {
        Spec {
            policy,
            options: Options::default(),
        }
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            vnode_count: ring_hash::DEFAULT_VNODE_COUNT,
        }
    }
}

/// How a request's hash-key bytes become the `u64` the hash policies take: polaris-go's murmur3
/// (x64_128, first half, seed 0). Empty bytes hash to 0, the same as no key, as in polaris-go.
pub fn hash_key(bytes: &[u8]) -> u64 {
    murmur3::murmur3_64(bytes, 0)
}

/// A policy's lookup structure over one instance set, built once.
#[derive(Clone, Debug)]
pub enum Balancer {
    WeightedRandom(WeightTable),
    RingHash(ring_hash::Ring),
    Maglev(maglev::Table),
    Hash(WeightTable),
}

impl Balancer {
    /// Builds with the default [`Options`]. Members of weight 0 are left out.
    pub fn build(policy: Policy, members: &[Member<'_>]) -> Balancer {
        Balancer::build_with(policy, members, Options::default())
    }

    /// Builds over `members` in instance-id order, whatever order they come in (see the module
    /// doc). Members sharing an id (which Polaris never serves) keep their given order.
    pub fn build_with(policy: Policy, members: &[Member<'_>], options: Options) -> Balancer {
        let mut sorted = members.to_vec();
        sorted.sort_by(|a, b| a.id.cmp(b.id));
        let members = sorted.as_slice();
        let weights = || members.iter().map(|m| (m.index, m.weight));
        match policy {
            Policy::WeightedRandom => Balancer::WeightedRandom(WeightTable::new(weights())),
            Policy::RingHash => {
                Balancer::RingHash(ring_hash::Ring::build(members, options.vnode_count))
            }
            Policy::Maglev => Balancer::Maglev(maglev::Table::build(members)),
            Policy::Hash => Balancer::Hash(WeightTable::new(weights())),
        }
    }

    pub fn policy(&self) -> Policy {
        match self {
            Balancer::WeightedRandom(_) => Policy::WeightedRandom,
            Balancer::RingHash(_) => Policy::RingHash,
            Balancer::Maglev(_) => Policy::Maglev,
            Balancer::Hash(_) => Policy::Hash,
        }
    }

    /// Nothing to pick from (no member, or all of weight 0).
    pub fn is_empty(&self) -> bool {
        match self {
            Balancer::WeightedRandom(table) | Balancer::Hash(table) => table.is_empty(),
            Balancer::RingHash(ring) => ring.is_empty(),
            Balancer::Maglev(table) => table.is_empty(),
        }
    }

    /// A member's `index`, or `None` if there is nothing to pick from.
    ///
    /// `key`: the request's hash key already hashed by [`hash_key`]. Weighted random ignores it
    /// and draws from `rng`. A request without a key gets a random point, so keyless traffic
    /// spreads by weight as Envoy's own hash balancers do. (polaris-go instead hashes its
    /// `Criteria.HashValue`, 0 by default, and sends every keyless request to one instance, which
    /// an operator would see as one instance taking all traffic whenever the key header is missing.)
    pub fn pick(&self, key: Option<u64>, rng: &mut Rng) -> Option<usize> {
        let hash = key.unwrap_or_else(|| rng.next_u64());
        match self {
            Balancer::WeightedRandom(table) => table.pick(rng),
            Balancer::RingHash(ring) => ring.pick(hash),
            Balancer::Maglev(table) => table.pick(hash),
            Balancer::Hash(table) => hash::pick(table, hash),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("inst-{i}")).collect()
    }

    fn members<'a>(ids: &'a [String], weights: &[u32]) -> Vec<Member<'a>> {
        ids.iter()
            .zip(weights)
            .enumerate()
            // Indices that are not positions, to check picks return `index`.
            .map(|(n, (id, &weight))| Member {
                index: 100 + n,
                weight,
                id,
            })
            .collect()
    }

    #[test]
    fn policies_parse_from_polaris_go_names_in_any_case() {
        for policy in Policy::ALL {
            assert_eq!(policy.name().parse(), Ok(policy));
            assert_eq!(policy.name().to_uppercase().parse(), Ok(policy));
            assert_eq!(policy.to_string(), policy.name());
        }
        assert_eq!("RingHash".parse(), Ok(Policy::RingHash));
        assert_eq!("weightedrandom".parse(), Ok(Policy::WeightedRandom));
    }

    #[test]
    fn unknown_policy_names_are_refused_with_the_valid_ones() {
        let err = "l5cst".parse::<Policy>().unwrap_err();
        assert_eq!(err, UnknownPolicy("l5cst".into()));
        assert_eq!(
            err.to_string(),
            "unknown load balancer `l5cst`: expected one of \"weightedRandom\", \"ringHash\", \
             \"maglev\", \"hash\""
        );
        assert!("".parse::<Policy>().is_err());
        assert!("ring_hash".parse::<Policy>().is_err());
    }

    #[test]
    fn hash_key_is_polaris_go_murmur3() {
        assert_eq!(hash_key(b"hello"), 0xcbd8_a7b3_41bd_9b02);
        assert_eq!(hash_key(b""), 0);
    }

    #[test]
    fn empty_and_all_zero_weight_sets_pick_none() {
        let names = ids(3);
        let zero = members(&names, &[0, 0, 0]);
        let mut rng = Rng::new(1);
        for policy in Policy::ALL {
            for set in [&[][..], &zero[..]] {
                let balancer = Balancer::build(policy, set);
                assert!(balancer.is_empty(), "{policy}");
                assert_eq!(balancer.pick(Some(42), &mut rng), None, "{policy}");
                assert_eq!(balancer.pick(None, &mut rng), None, "{policy}");
            }
        }
    }

    #[test]
    fn a_single_member_gets_every_pick() {
        let names = ids(1);
        let one = members(&names, &[7]);
        let mut rng = Rng::new(2);
        for policy in Policy::ALL {
            let balancer = Balancer::build(policy, &one);
            assert_eq!(balancer.policy(), policy);
            assert!(!balancer.is_empty());
            for key in [None, Some(0), Some(1), Some(u64::MAX)] {
                assert_eq!(balancer.pick(key, &mut rng), Some(100), "{policy}");
            }
        }
    }

    #[test]
    fn zero_weight_members_are_never_picked() {
        let names = ids(3);
        let set = members(&names, &[0, 5, 0]);
        let mut rng = Rng::new(3);
        for policy in Policy::ALL {
            let balancer = Balancer::build(policy, &set);
            for k in 0..200 {
                let key = Some(hash_key(format!("k{k}").as_bytes()));
                assert_eq!(balancer.pick(key, &mut rng), Some(101), "{policy}");
            }
        }
    }

    #[test]
    fn duplicate_ids_do_not_panic_and_every_pick_is_a_member() {
        let names = vec!["same".to_string(); 4];
        let set = members(&names, &[1, 2, 3, 4]);
        let mut rng = Rng::new(4);
        for policy in Policy::ALL {
            let balancer = Balancer::build(policy, &set);
            for k in 0..200 {
                let key = Some(hash_key(format!("k{k}").as_bytes()));
                let picked = balancer.pick(key, &mut rng);
                assert!(picked.is_some_and(|i| (100..104).contains(&i)), "{policy}");
            }
        }
    }

    #[test]
    fn same_key_always_lands_on_same_instance() {
        let names = ids(20);
        let set = members(&names, &[100; 20]);
        let mut rng = Rng::new(5);
        for policy in Policy::ALL.into_iter().filter(|p| p.uses_key()) {
            let balancer = Balancer::build(policy, &set);
            let rebuilt = Balancer::build(policy, &set);
            for k in 0..300 {
                let key = Some(hash_key(format!("user-{k}").as_bytes()));
                let first = balancer.pick(key, &mut rng);
                assert!(first.is_some());
                assert_eq!(balancer.pick(key, &mut rng), first, "{policy}");
                assert_eq!(rebuilt.pick(key, &mut rng), first, "{policy}");
            }
        }
    }

    #[test]
    fn keyless_requests_spread_instead_of_pinning_one_instance() {
        let names = ids(10);
        let set = members(&names, &[100; 10]);
        let mut rng = Rng::new(6);
        for policy in Policy::ALL.into_iter().filter(|p| p.uses_key()) {
            let balancer = Balancer::build(policy, &set);
            let spread: std::collections::HashSet<_> =
                (0..200).map(|_| balancer.pick(None, &mut rng)).collect();
            assert!(spread.len() > 5, "{policy}: {spread:?}");
        }
        // Weighted random ignores keys altogether.
        let balancer = Balancer::build(Policy::WeightedRandom, &set);
        let spread: std::collections::HashSet<_> =
            (0..200).map(|_| balancer.pick(Some(9), &mut rng)).collect();
        assert!(spread.len() > 5);
    }

    #[test]
    fn weights_two_to_one_give_two_to_one_shares_under_every_policy() {
        let names = ids(2);
        let set = members(&names, &[200, 100]);
        let mut rng = Rng::new(7);
        let picks = 12_000;
        // Ring hash at 160 points per heaviest instance (320 + 160 points); polaris-go's default
        // of 10 is much coarser (see `ring_hash::DEFAULT_VNODE_COUNT`).
        let fine = Options { vnode_count: 160 };
        for policy in Policy::ALL {
            let balancer = Balancer::build_with(policy, &set, fine);
            let heavy = (0..picks)
                .filter(|k| {
                    let key = Some(hash_key(format!("req-{k}").as_bytes()));
                    balancer.pick(key, &mut rng) == Some(100)
                })
                .count();
            let share = heavy as f64 / f64::from(picks);
            // Ring hash is the coarsest: allow ±0.05 everywhere.
            assert!((share - 2.0 / 3.0).abs() < 0.05, "{policy}: {share}");
        }
    }

    #[test]
    fn ring_hash_defaults_to_polaris_gos_ten_points_per_instance() {
        let names = ids(3);
        let set = members(&names, &[100, 100, 50]);
        let Balancer::RingHash(ring) = Balancer::build(Policy::RingHash, &set) else {
            unreachable!()
        };
        assert_eq!(ring.len(), 10 + 10 + 5);
        let Balancer::RingHash(ring) =
            Balancer::build_with(Policy::RingHash, &set, Options { vnode_count: 500 })
        else {
            unreachable!()
        };
        assert_eq!(ring.len(), 500 + 500 + 250);
    }

    /// The weights of polaris-go's recordings (`test_support::golden_ids`).
    const MIXED: [u32; 10] = [100, 100, 50, 200, 100, 30, 100, 100, 1, 100];

    #[test]
    fn hash_balancer_ignores_the_order_polaris_answered_in() {
        let names = ids(10);
        let answered = members(&names, &MIXED);
        let sorted = Balancer::build(Policy::Hash, &answered);
        let mut rng = Rng::new(10);
        for seed in 1..=8 {
            let reordered = super::test_support::shuffled(&answered, seed);
            let balancer = Balancer::build(Policy::Hash, &reordered);
            for k in 0..2000 {
                let key = Some(hash_key(format!("user-{k}").as_bytes()));
                assert_eq!(
                    balancer.pick(key, &mut rng),
                    sorted.pick(key, &mut rng),
                    "order #{seed}, user-{k}"
                );
            }
        }
    }

    #[test]
    fn every_balancer_is_a_function_of_the_instance_set() {
        let names = ids(10);
        let answered = members(&names, &MIXED);
        for policy in Policy::ALL {
            let reference = Balancer::build(policy, &answered);
            for seed in 1..=5 {
                let balancer =
                    Balancer::build(policy, &super::test_support::shuffled(&answered, seed));
                // Weighted random too: the same draws pick the same instances.
                let (mut a, mut b) = (Rng::new(seed), Rng::new(seed));
                for k in 0..1000 {
                    let key = Some(hash_key(format!("user-{k}").as_bytes()));
                    assert_eq!(
                        balancer.pick(key, &mut a),
                        reference.pick(key, &mut b),
                        "{policy}, order #{seed}, user-{k}"
                    );
                }
            }
        }
    }

    #[test]
    fn balancers_build_in_instance_id_order_like_polaris_go() {
        // `b` before `a` in the answer: polaris-go's sorted order puts `a` first, so with weights
        // 1 and 1 the `hash` point 0 belongs to `a`.
        let names = ["b".to_string(), "a".to_string()];
        let set = members(&names, &[1, 1]);
        let balancer = Balancer::build(Policy::Hash, &set);
        let mut rng = Rng::new(11);
        assert_eq!(balancer.pick(Some(0), &mut rng), Some(101));
        assert_eq!(balancer.pick(Some(1), &mut rng), Some(100));
    }

    #[test]
    fn a_maglev_table_alone_depends_on_the_order_members_come_in() {
        // Why the balancer sorts: contested slots go to whoever is visited first.
        let names = ids(10);
        let answered = members(&names, &MIXED);
        let reordered = super::test_support::shuffled(&answered, 3);
        let (a, b) = (
            maglev::Table::build(&answered),
            maglev::Table::build(&reordered),
        );
        let differ = (0..maglev::TABLE_SIZE)
            .filter(|&h| a.pick(h) != b.pick(h))
            .count();
        assert!(differ > 0);
    }

    /// Native cost: `cargo test --release --lib lb::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        use std::hint::black_box;
        use std::time::{Duration, Instant};
        let keys: Vec<u64> = (0..4096)
            .map(|k| hash_key(format!("user-{k}").as_bytes()))
            .collect();
        let mut rng = Rng::new(8);
        for n in [10, 100, 1000] {
            let names: Vec<String> = (0..n).map(|i| format!("{i:040x}")).collect();
            let set = members(&names, &vec![100; n]);
            for policy in Policy::ALL {
                // Best of 5 builds.
                let mut build = Duration::MAX;
                for _ in 0..5 {
                    let start = Instant::now();
                    black_box(Balancer::build(policy, black_box(&set)));
                    build = build.min(start.elapsed());
                }
                let balancer = Balancer::build(policy, &set);
                let picks = 1_000_000u32;
                let start = Instant::now();
                let mut sum = 0usize;
                for i in 0..picks {
                    let key = keys.get(i as usize % keys.len()).copied();
                    sum = sum.wrapping_add(balancer.pick(black_box(key), &mut rng).unwrap_or(0));
                }
                let pick = start.elapsed() / picks;
                black_box(sum);
                println!("{n:>5} x {policy:<14} build {build:>12.3?}  pick {pick:?}");
            }
        }
        let start = Instant::now();
        for key in 0..1_000_000u32 {
            black_box(hash_key(black_box(&key.to_le_bytes())));
        }
        println!("hash_key(4 bytes) {:?}", start.elapsed() / 1_000_000);
        let long = [b'x'; 36];
        let start = Instant::now();
        for _ in 0..1_000_000u32 {
            black_box(hash_key(black_box(&long)));
        }
        println!("hash_key(36 bytes) {:?}", start.elapsed() / 1_000_000);
    }
}
