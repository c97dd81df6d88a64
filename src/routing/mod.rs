//! Routing: Polaris rule matching and the per-service routing plan.

pub mod cache;
pub mod group;
pub mod index;
pub mod metadata;
pub mod nearby;
pub mod plan;
pub mod pool;
pub mod rule;

pub use cache::Rules;
pub use metadata::{MetaFailover, MetadataRouting};
pub use nearby::{Level, Nearby};
pub use plan::{Failover, Plan, Routed};
pub use pool::Pool;
pub use rule::{Caller, Direction, Route};
