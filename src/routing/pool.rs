//! An instance pool: the selectable instances of one subset of a service, with its balancers,
//! its metadata-routing sub-pools and its nearby sub-pools, each built once per snapshot change.

use std::cell::OnceCell;
use std::collections::HashMap;

use super::metadata::{tuple_key, MetaFailover, MetaOutcome, MetadataRouting};
use super::nearby::{Level, Nearby};
use crate::lb::{Balancer, Member, Rng, Spec, WeightTable};
use crate::model::{Instance, ServiceSnapshot};

/// Selectable instances (not isolated, weight > 0) of one subset, with the balancers over its
/// healthy part and over all of it (recover-all), each built on first use.
#[derive(Debug)]
pub struct Pool {
    members: Vec<usize>,
    healthy: Vec<usize>,
    balancers: [OnceCell<Balancer>; 2],
    /// With nearby routing: the members at each level nearer than `all`, nearest first.
    near: Vec<(Level, Pool)>,
    /// With metadata routing: the sub-pools a request's wanted labels select.
    meta: Option<Box<MetaIndex>>,
}

/// Metadata-routing sub-pools of a pool, prebuilt per snapshot change.
#[derive(Debug, Default)]
struct MetaIndex {
    /// Wanted-label tuple (`metadata::tuple_key`) -> (members carrying it, the other members).
    by_tuple: HashMap<String, (Pool, Pool)>,
    /// Key subset (bit mask) -> members carrying none of those keys.
    lacking: Vec<(u8, Pool)>,
}

/// The instance a pool gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Picked {
    pub index: usize,
    /// No healthy member was left, so all were used (polaris-go recover-all).
    pub recovered_all: bool,
}

impl Pool {
    pub fn new(snapshot: &ServiceSnapshot, keep: impl Fn(&Instance) -> bool) -> Pool {
        let members: Vec<usize> = snapshot
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.is_selectable() && keep(i))
            .map(|(n, _)| n)
            .collect();
        let healthy = members
            .iter()
            .copied()
            .filter(|&n| snapshot.instances.get(n).is_some_and(|i| i.healthy))
            .collect();
        Pool {
            members,
            healthy,
            ..Pool::default()
        }
    }

    /// The members (and healthy members) whose instance passes `keep`.
    pub fn sub(&self, snapshot: &ServiceSnapshot, keep: impl Fn(&Instance) -> bool) -> Pool {
        self.sub_at(|n| snapshot.instances.get(n).is_some_and(&keep))
    }

    /// The members (and healthy members) whose instance index passes `keep`.
    pub fn sub_at(&self, keep: impl Fn(usize) -> bool) -> Pool {
        Pool {
            members: self.members.iter().copied().filter(|n| keep(*n)).collect(),
            healthy: self.healthy.iter().copied().filter(|n| keep(*n)).collect(),
            ..Pool::default()
        }
    }

    /// Adds the sub-pools metadata routing chooses between, each with its nearby levels.
    pub fn with_metadata(
        mut self,
        snapshot: &ServiceSnapshot,
        metadata: Option<&MetadataRouting>,
        nearby: Option<&Nearby>,
    ) -> Pool {
        let Some(metadata) = metadata.filter(|m| !m.labels.is_empty()) else {
            return self;
        };
        let keys: Vec<&str> = metadata.labels.iter().map(|(_, k)| k.as_str()).collect();
        let mut index = MetaIndex::default();
        for mask in 1..(1u8 << keys.len()) {
            let in_mask = |i: usize| mask & (1 << i) != 0;
            let tuple = |inst: &Instance| -> Option<String> {
                let values: Option<Vec<&str>> = keys
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| in_mask(*i))
                    .map(|(_, k)| inst.metadata.get(*k).map(String::as_str))
                    .collect();
                values.map(|v| tuple_key(mask, &v))
            };
            let mut tuples: Vec<String> = self
                .members
                .iter()
                .filter_map(|n| snapshot.instances.get(*n).and_then(&tuple))
                .collect();
            tuples.sort_unstable();
            tuples.dedup();
            for t in tuples {
                let matched = self
                    .sub(snapshot, |i| tuple(i).as_ref() == Some(&t))
                    .with_levels(snapshot, nearby);
                let others = self
                    .sub(snapshot, |i| tuple(i).as_ref() != Some(&t))
                    .with_levels(snapshot, nearby);
                index.by_tuple.insert(t, (matched, others));
            }
            let lacking = self
                .sub(snapshot, |i| {
                    keys.iter()
                        .enumerate()
                        .filter(|(n, _)| in_mask(*n))
                        .all(|(_, k)| !i.metadata.contains_key(*k))
                })
                .with_levels(snapshot, nearby);
            index.lacking.push((mask, lacking));
        }
        self.meta = Some(Box::new(index));
        self
    }

    /// Adds the per-level sub-pools nearby routing chooses between.
    pub fn with_levels(mut self, snapshot: &ServiceSnapshot, nearby: Option<&Nearby>) -> Pool {
        let Some(nearby) = nearby else {
            return self;
        };
        self.near = nearby
            .levels()
            .filter(|l| *l != Level::All)
            .map(|level| {
                let here = &nearby.location;
                (
                    level,
                    self.sub(snapshot, |i| level.holds(here, &i.location)),
                )
            })
            .collect();
        self
    }

    fn at(&self, level: Level) -> Option<&Pool> {
        if level == Level::All {
            return Some(self);
        }
        self.near.iter().find(|(l, _)| *l == level).map(|(_, p)| p)
    }

    /// Metadata routing over this pool, for a wanted-label tuple (mask of configured keys present,
    /// tuple key). Healthy carriers of the labels win; otherwise the failover decides, falling
    /// back to unhealthy carriers (recover-all) before giving up.
    pub fn by_metadata(
        &self,
        config: &MetadataRouting,
        wanted: (u8, &str),
    ) -> Option<(&Pool, Option<MetaOutcome>)> {
        let (mask, key) = wanted;
        let Some(index) = &self.meta else {
            return Some((self, None));
        };
        let entry = index.by_tuple.get(key);
        let matched = entry.map(|(m, _)| m).filter(|m| !m.is_empty());
        if let Some(m) = matched.filter(|m| !m.healthy.is_empty()) {
            return Some((m, Some(MetaOutcome::Matched)));
        }
        let failover = match config.failover {
            MetaFailover::None => None,
            MetaFailover::All => Some(self),
            MetaFailover::Others => Some(entry.map_or(self, |(_, others)| others)),
            MetaFailover::NotContainKey => index
                .lacking
                .iter()
                .find(|(m, _)| *m == mask)
                .map(|(_, p)| p),
        };
        match failover.filter(|p| !p.is_empty()) {
            Some(p) => Some((p, Some(MetaOutcome::Failover(config.failover)))),
            None => matched.map(|m| (m, Some(MetaOutcome::UnhealthyCarriers))),
        }
    }

    /// Nearby routing over this pool: the nearest level whose unhealthy share is under the
    /// threshold, else the nearest non-empty level in range. `None` when nothing is in range.
    pub fn narrow(&self, nearby: &Nearby) -> Option<(&Pool, Option<Level>)> {
        let mut first_non_empty = None;
        for level in nearby.levels() {
            let Some(p) = self.at(level) else { continue };
            if nearby.satisfied(p.members.len(), p.healthy.len()) {
                return Some((p, Some(level)));
            }
            if first_non_empty.is_none() && !p.is_empty() {
                first_non_empty = Some((p, Some(level)));
            }
        }
        first_non_empty
    }

    /// Indexes (into the snapshot's instances) of the members.
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Health filter, recover-all, then the balancer.
    pub fn pick(
        &self,
        snapshot: &ServiceSnapshot,
        balancer: Spec,
        key: Option<u64>,
        rng: &mut Rng,
    ) -> Option<Picked> {
        let recovered_all = self.healthy.is_empty();
        let (slot, list) = if recovered_all {
            (1, &self.members)
        } else {
            (0, &self.healthy)
        };
        let balancer = self.balancers.get(slot)?.get_or_init(|| {
            let members: Vec<Member<'_>> = list
                .iter()
                .filter_map(|&n| {
                    snapshot.instances.get(n).map(|i| Member {
                        index: n,
                        weight: i.weight,
                        id: &i.id,
                    })
                })
                .collect();
            Balancer::build_with(balancer.policy, &members, balancer.options)
        });
        balancer.pick(key, rng).map(|index| Picked {
            index,
            recovered_all,
        })
    }

    /// [`Pool::pick`] around the members `avoid` rejects (open circuit breakers), without
    /// rebuilding any balancer: the balancer's own pick first, then up to three re-picks (a hash
    /// key is re-mixed, so each key still lands on one instance), then a weighted pick among the
    /// members left. `avoid(index)` returning false means the member takes the request (it may
    /// take a half-open probe), so it is asked once per member at most. When every member is
    /// avoided, the balancer's pick stands and `recovered_all` is set (polaris-go's recover-all
    /// keeps circuit-broken instances when nothing else is left).
    pub fn pick_avoiding(
        &self,
        snapshot: &ServiceSnapshot,
        balancer: Spec,
        key: Option<u64>,
        rng: &mut Rng,
        avoid: &mut dyn FnMut(usize) -> bool,
    ) -> Option<Picked> {
        let first = self.pick(snapshot, balancer, key, rng)?;
        let mut avoided: Vec<usize> = Vec::new();
        let mut try_one = |index: usize, avoided: &mut Vec<usize>| -> bool {
            if avoided.contains(&index) {
                return false;
            }
            if avoid(index) {
                avoided.push(index);
                return false;
            }
            true
        };
        if try_one(first.index, &mut avoided) {
            return Some(first);
        }
        for attempt in 1..=3u64 {
            let remixed =
                key.map(|k| (k ^ attempt.wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(17));
            let again = self.pick(snapshot, balancer, remixed, rng)?;
            if try_one(again.index, &mut avoided) {
                return Some(again);
            }
        }
        let list = if first.recovered_all {
            &self.members
        } else {
            &self.healthy
        };
        loop {
            let left = WeightTable::new(
                list.iter()
                    .filter(|n| !avoided.contains(n))
                    .map(|&n| (n, snapshot.instances.get(n).map_or(0, |i| i.weight))),
            );
            let Some(index) = (match key {
                Some(k) if left.total_weight() > 0 => left.at(k % left.total_weight()),
                _ => left.pick(rng),
            }) else {
                return Some(Picked {
                    index: first.index,
                    recovered_all: true,
                });
            };
            if try_one(index, &mut avoided) {
                return Some(Picked {
                    index,
                    recovered_all: first.recovered_all,
                });
            }
            if !avoided.contains(&index) {
                // `avoid` said no without being recorded: cannot happen, but never loop forever.
                avoided.push(index);
            }
        }
    }
}

impl Default for Pool {
    fn default() -> Pool {
        Pool {
            members: Vec::new(),
            healthy: Vec::new(),
            balancers: [OnceCell::new(), OnceCell::new()],
            near: Vec::new(),
            meta: None,
        }
    }
}
