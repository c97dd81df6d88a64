//! Routing: Polaris rule matching and the per-service routing plan.

pub mod cache;
pub mod index;
pub mod metadata;
pub mod nearby;
pub mod plan;
pub mod rule;

pub use cache::Rules;
pub use metadata::{MetaFailover, MetadataRouting};
pub use nearby::{Level, Nearby};
pub use plan::{Failover, Plan, Pool, Routed};
pub use rule::{Caller, Direction, Route};
