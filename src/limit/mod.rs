//! Rate limiting: Polaris RATE_LIMIT rules compiled per snapshot, and the QPS windows they count
//! in: QPS windows (`reject`), the unirate schedule and the CONCURRENCY count. The shared-data
//! counting lives in `core::limiter`.

pub mod concurrency;
pub mod rule;
pub mod unirate;
pub mod window;

pub use rule::{Amount, Behavior, CallerFacts, LimitRule, Limits, Pace, RuleSettings};
pub use window::{grant_size, window_start, Window};
