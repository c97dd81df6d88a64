//! The discovery snapshot: the decoded model of each watched service, the worker cache, and the
//! leader's refresh bookkeeping.

pub mod cache;
pub mod decode;
pub mod model;
pub mod refresh;

pub use cache::{Cache, Known, ServiceCache};
pub use decode::{
    classify, classify_instances, decode_instances, decode_routing, Answer, DecodeError,
    Discovered, DiscoveryError, Kind,
};
pub use model::{Instance, Location, ServiceKey, ServiceSnapshot};
pub use refresh::{Outcome, Refresher, Resource};
