//! The leader's fault-detection probe schedule and the probes in flight (driven by
//! `core::probing`).

use std::collections::HashMap;
use std::rc::Rc;

use crate::breaker::probe::Detector;
use crate::model::ServiceKey;

#[derive(Clone, Debug)]
pub struct Pending {
    pub service: ServiceKey,
    pub upstream: String,
    pub detector: Rc<Detector>,
    pub sent_ms: u64,
}

/// The leader's probe schedule and the probes in flight.
#[derive(Debug, Default)]
pub struct Probing {
    /// (service, rule name) -> when its next round is due.
    pub due: HashMap<(ServiceKey, String), u64>,
    pub pending: HashMap<u32, Pending>,
}
