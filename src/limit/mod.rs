//! Rate limiting: Polaris RATE_LIMIT rules compiled per snapshot, and the QPS windows they count
//! in. The shared-data counting lives in `core::limiter`.

pub mod global;
pub mod rule;
pub mod window;

pub use global::{Global, GlobalWindow};
pub use rule::{Amount, CallerFacts, LimitRule, Limits};
pub use window::{grant_size, window_start, Window};
