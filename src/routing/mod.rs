//! Routing: Polaris rule matching and the per-service routing plan.

pub mod args;
pub mod cache;
pub mod index;
pub mod matcher;
pub mod metadata;
pub mod nearby;
pub mod plan;
pub mod regex_set;
pub mod rule;

pub use args::{Arg, RequestFacts, StaticFacts};
pub use cache::Rules;
pub use matcher::Matcher;
pub use metadata::{MetaFailover, MetadataRouting};
pub use nearby::{Level, Nearby};
pub use plan::{Failover, Plan, Pool, Routed};
pub use rule::{Caller, Direction, Route};
