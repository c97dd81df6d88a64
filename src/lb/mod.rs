//! Load balancers: choose one instance from the set the router chain left.

pub mod rng;
pub mod weighted_random;

pub use rng::Rng;
pub use weighted_random::WeightTable;
