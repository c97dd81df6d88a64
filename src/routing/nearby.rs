//! Nearby routing (polaris-go `nearbybase`): prefer instances in this Envoy's campus, then zone,
//! then region, degrading to the next level when too many instances nearby are unhealthy.
//!
//! Enabled per service by the service metadata `internal-enable-nearby: true`, as Polaris does,
//! and only when this Envoy knows its location. Levels are hierarchical: a zone match also needs
//! the region to match, a campus match the region and zone. As in polaris-go (`matchLocation`), a
//! field left empty, on the instance or on this Envoy, matches anything: an instance registered
//! without a location is near at every level.

use std::fmt;
use std::str::FromStr;

use crate::snapshot::Location;

/// Service metadata key that turns nearby routing on (`pkg/model/cluster.go`).
pub const ENABLE_KEY: &str = "internal-enable-nearby";

/// How near an instance is; a larger value is nearer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    All = 0,
    Region = 1,
    Zone = 2,
    Campus = 3,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::All => "all",
            Level::Region => "region",
            Level::Zone => "zone",
            Level::Campus => "campus",
        }
    }

    /// The next wider level.
    pub fn wider(self) -> Option<Level> {
        match self {
            Level::Campus => Some(Level::Zone),
            Level::Zone => Some(Level::Region),
            Level::Region => Some(Level::All),
            Level::All => None,
        }
    }

    /// Whether `instance` is as near as this level to `here`: polaris-go's `matchLocation` with
    /// `here` cut to the level (region; region and zone; all three). Each field compared must be
    /// equal unless it is empty on either side.
    pub fn holds(self, here: &Location, instance: &Location) -> bool {
        let same = |a: &str, b: &str| a.is_empty() || b.is_empty() || a == b;
        let region = same(&here.region, &instance.region);
        let zone = region && same(&here.zone, &instance.zone);
        match self {
            Level::All => true,
            Level::Region => region,
            Level::Zone => zone,
            Level::Campus => zone && same(&here.campus, &instance.campus),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Level, String> {
        match s.to_ascii_lowercase().as_str() {
            "campus" => Ok(Level::Campus),
            "zone" => Ok(Level::Zone),
            "region" => Ok(Level::Region),
            "all" | "" => Ok(Level::All),
            other => Err(format!(
                "`{other}` is not one of \"campus\", \"zone\", \"region\", \"all\""
            )),
        }
    }
}

/// Nearby settings (polaris-go's SDK-side `nearbyBasedRouter` config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nearby {
    /// Where this Envoy runs.
    pub location: Location,
    /// The nearest level tried first (polaris-go default: zone).
    pub match_level: Level,
    /// The widest level allowed (polaris-go default: all).
    pub max_match_level: Level,
    /// A level is used while fewer than this percent of its instances are unhealthy
    /// (polaris-go default 100: any healthy instance keeps traffic at the level).
    pub unhealthy_percent: u32,
}

impl Default for Nearby {
    fn default() -> Nearby {
        Nearby {
            location: Location::default(),
            match_level: Level::Zone,
            max_match_level: Level::All,
            unhealthy_percent: 100,
        }
    }
}

impl Nearby {
    /// Whether this Envoy has a location to be near to. (polaris-go also runs nearby routing
    /// with an all-empty location, where every instance matches every level: the same as off.)
    pub fn has_location(&self) -> bool {
        !self.location.is_empty()
    }

    /// Levels to try, nearest first.
    pub fn levels(&self) -> impl Iterator<Item = Level> + '_ {
        std::iter::successors(Some(self.match_level), |l| l.wider())
            .take_while(|l| *l >= self.max_match_level)
    }

    /// Whether a level with `total` instances, `healthy` of them healthy, keeps the traffic.
    pub fn satisfied(&self, total: usize, healthy: usize) -> bool {
        let total = total as u64;
        let unhealthy = total.saturating_sub(healthy as u64);
        total > 0 && unhealthy * 100 < u64::from(self.unhealthy_percent) * total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn loc(region: &str, zone: &str, campus: &str) -> Location {
        Location {
            region: region.into(),
            zone: zone.into(),
            campus: campus.into(),
        }
    }

    #[test]
    fn an_empty_field_on_either_side_is_a_wildcard_as_in_polaris_go() {
        let here = loc("r1", "z1", "c1");
        let nowhere = loc("", "", "");
        for level in [Level::Region, Level::Zone, Level::Campus] {
            assert!(level.holds(&here, &nowhere), "{level}");
        }
        // An instance with only a zone: near down to the campus level when that zone is ours.
        assert!(Level::Campus.holds(&here, &loc("", "z1", "")));
        assert!(!Level::Zone.holds(&here, &loc("", "z2", "")));
        assert!(!Level::Zone.holds(&here, &loc("r2", "z1", "")));
        assert!(Level::Campus.holds(&here, &loc("r1", "z1", "")));
        // This Envoy without a zone: any zone of its region is as near as the zone level.
        let region_only = loc("r1", "", "");
        assert!(Level::Zone.holds(&region_only, &loc("r1", "z9", "c9")));
        assert!(!Level::Zone.holds(&region_only, &loc("r2", "z9", "")));
    }

    #[test]
    fn a_zone_without_a_region_is_a_location() {
        let n = Nearby {
            location: loc("", "z1", ""),
            ..Nearby::default()
        };
        assert!(n.has_location());
        assert!(!Nearby::default().has_location());
    }

    #[test]
    fn levels_are_hierarchical() {
        let here = loc("r1", "z1", "c1");
        assert!(Level::Zone.holds(&here, &loc("r1", "z1", "c9")));
        assert!(!Level::Zone.holds(&here, &loc("r2", "z1", "c1")));
        assert!(Level::Region.holds(&here, &loc("r1", "z2", "c2")));
        assert!(!Level::Campus.holds(&here, &loc("r1", "z1", "c2")));
        assert!(Level::All.holds(&here, &loc("", "", "")));
    }

    #[test]
    fn levels_run_from_match_level_to_max_match_level() {
        let n = Nearby::default();
        assert_eq!(
            n.levels().collect::<Vec<_>>(),
            [Level::Zone, Level::Region, Level::All]
        );
        let strict = Nearby {
            max_match_level: Level::Zone,
            ..Nearby::default()
        };
        assert_eq!(strict.levels().collect::<Vec<_>>(), [Level::Zone]);
    }

    #[test]
    fn default_threshold_keeps_a_level_while_one_instance_is_healthy() {
        let n = Nearby::default();
        assert!(n.satisfied(3, 1));
        assert!(!n.satisfied(3, 0));
        assert!(!n.satisfied(0, 0));
        let half = Nearby {
            unhealthy_percent: 50,
            ..Nearby::default()
        };
        assert!(half.satisfied(4, 3));
        assert!(!half.satisfied(4, 2));
    }

    #[test]
    fn level_names_parse() {
        assert_eq!("ZONE".parse::<Level>(), Ok(Level::Zone));
        assert!("planet".parse::<Level>().is_err());
    }
}
