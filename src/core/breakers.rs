//! A service's compiled circuit-breaker rules as a worker keeps them (the state that needs no
//! worker: `core::breaking` applies them to requests and responses).

use std::cell::RefCell;

use crate::breaker::window::Local;
use crate::breaker::Rules;
use crate::model::ServiceKey;
use crate::shared;

/// A service's compiled breaker rules with what the request path needs beside them, built once
/// per change of the rules (the shared-data keys, so no request formats them).
#[derive(Debug)]
pub struct Breakers {
    pub service: ServiceKey,
    pub rules: Rules,
    pub(super) state_key: String,
    pub(super) window_key: String,
    /// Some rule has a DELAY condition: requests need their start time.
    pub(super) timed: bool,
    /// This worker's ERROR_RATE counts since its last merge (a rule change starts a new set; the
    /// counts of the last tick under the old rules are dropped with it).
    pub(super) local: RefCell<Local>,
}

impl Breakers {
    pub fn new(service: ServiceKey, rules: Rules) -> Breakers {
        let timed = rules.all().any(|r| r.needs_latency());
        Breakers {
            state_key: shared::breaker_key(&service),
            window_key: shared::window_key(&service),
            service,
            rules,
            timed,
            local: RefCell::new(Local::default()),
        }
    }
}
